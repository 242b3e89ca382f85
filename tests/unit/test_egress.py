"""Webhook targets: public addresses only (no server-side request forgery)."""

from __future__ import annotations

import pytest

from tododb.infra.egress import refusal


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",  # resolves to loopback
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.4/",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:10.0.0.1]/",  # IPv4-mapped
    ],
)
def test_non_public_targets_are_refused(url: str) -> None:
    reason = refusal(url)
    assert reason is not None
    assert "not a public address" in reason


@pytest.mark.parametrize("url", ["https://8.8.8.8/hook", "http://[2001:4860:4860::8888]:8443/"])
def test_public_addresses_are_allowed(url: str) -> None:
    assert refusal(url) is None
