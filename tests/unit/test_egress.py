"""Webhook targets: public addresses only (no server-side request forgery)."""

from __future__ import annotations

import ipaddress

import pytest

from tododb.infra.egress import embedded_ipv4, refusal


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


@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated): refused outright
        "http://[::8.8.8.8]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:0.0.0.0]/",
        "http://[64:ff9b::127.0.0.1]/",  # NAT64 well-known prefix, loopback inside
        "http://[64:ff9b::10.0.0.1]/",
        "http://[64:ff9b::169.254.169.254]/",
        "http://[64:ff9b::100.64.0.1]/",  # CGNAT inside
        "http://[64:ff9b::224.0.0.1]/",  # multicast inside
        "http://[64:ff9b::240.0.0.1]/",  # reserved inside
        "http://[64:ff9b:1::8.8.8.8]/",  # local-use NAT64: refused outright
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
        "http://[2002::1]/",  # 6to4 of 0.0.0.0
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo: refused outright
        "http://[2001::1]/",
    ],
)
def test_ipv6_forms_that_embed_a_non_public_ipv4_address_are_refused(url: str) -> None:
    reason = refusal(url)
    assert reason is not None
    assert "not a public address" in reason


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:8.8.8.8]/",  # IPv4-mapped public
        "http://[64:ff9b::8.8.8.8]/",  # what DNS64 answers for a public IPv4 host
        "http://[2002:808:808::1]/",  # 6to4 of a public address
    ],
)
def test_ipv6_forms_that_embed_a_public_ipv4_address_are_allowed(url: str) -> None:
    assert refusal(url) is None


def test_embedded_ipv4_addresses_are_found() -> None:
    v6 = ipaddress.IPv6Address
    assert embedded_ipv4(v6("::ffff:10.1.2.3")) == ipaddress.IPv4Address("10.1.2.3")
    assert embedded_ipv4(v6("64:ff9b::10.1.2.3")) == ipaddress.IPv4Address("10.1.2.3")
    assert embedded_ipv4(v6("2002:a01:203::1")) == ipaddress.IPv4Address("10.1.2.3")
    assert embedded_ipv4(v6("2001:4860:4860::8888")) is None
