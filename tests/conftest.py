"""Session fixtures: one real Kafka broker for the whole run (or $KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import subprocess
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB filesystem of the test's own: a tmpfs, which needs root to mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"disk-full tests need to mount a 20 MB tmpfs, which was refused: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)
            pytest.fail("the tmpfs was busy at the end of the test: something still holds a spool file open")
