"""Pytest fixtures for a Kafka-compatible broker.

``kafka_broker`` (session scope) is a :class:`tododb.devservers.tansu.TansuBroker` started
once per run on a free ``127.0.0.1`` port, with in-memory storage. With the
environment variable ``KAFKA_BOOTSTRAP_SERVERS`` set, it is an
:class:`tododb.devservers.tansu.ExternalBroker` pointing there instead, whose ``restart()``
raises; tests that need a restart check ``kafka_broker.supports_restart`` or,
better, start a :class:`TansuBroker` of their own (restarting the shared one wipes
the topics of every other test, since Tansu's memory store does not survive).

Use it with ``from tests.broker_fixtures import kafka_broker  # noqa: F401`` in a
test module, or list ``"tests.broker_fixtures"`` in ``pytest_plugins`` of the
root conftest. Tests should use topics and group ids of their own (e.g. with a
uuid suffix) since the broker is shared by the whole session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tododb.devservers.tansu import BrokerHandle, ExternalBroker, TansuBroker

#: Environment variable naming an external broker to use instead of Tansu.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[BrokerHandle]:
    """A broker for the whole test session: local Tansu, or ``$KAFKA_BOOTSTRAP_SERVERS``."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        broker = ExternalBroker(external)
        broker.wait_until_ready(30.0)
        yield broker
        return
    with TansuBroker() as tansu:
        yield tansu
