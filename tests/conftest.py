"""Session fixtures: one real Kafka broker for the whole run (or $KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka import KafkaBroker, session_broker
from tests.support.smtp_relay import CapturingRelay


class Kafka:
    """The broker the tests talk to; ``broker`` is None when an outside one was given."""

    def __init__(self, bootstrap: str, broker: KafkaBroker | None) -> None:
        self.bootstrap = bootstrap
        self.broker = broker

    def require_control(self) -> KafkaBroker:
        if self.broker is None:
            pytest.skip("stopping Kafka needs the broker the tests started themselves")
        return self.broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    bootstrap, broker = session_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield Kafka(bootstrap, broker)
    finally:
        if broker is not None:
            broker.stop()


@pytest.fixture
def topic() -> str:
    return f"complaints-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def artifacts() -> Path:
    """Where tests keep what a person may want to look at after a run (screenshots, logs)."""
    path = Path(__file__).resolve().parents[1] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def relay() -> Iterator[CapturingRelay]:
    """The SMTP relay email acknowledgements go through, capturing what it is given."""
    relay = CapturingRelay()
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()
