"""Session fixtures: one real Kafka broker for the whole run (or $KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

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
def topic(request: pytest.FixtureRequest) -> Iterator[str]:
    """A topic name of the test's own; the topics made under it (main, dead-letter, outbound) go afterwards.

    Deleting them keeps the session's broker small: one that holds every test's partitions grows slow
    to answer metadata and very slow to restart, which the tests that stop Kafka do.
    """
    name = f"complaints-{uuid.uuid4().hex[:10]}"
    yield name
    if "kafka" in request.fixturenames:
        delete_topics(request.getfixturevalue("kafka").bootstrap, name)


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics whose names start with ``prefix``; a broker that is gone or slow is left alone."""

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await asyncio.wait_for(admin.start(), timeout=10)
            names = [t for t in await admin.list_topics() if t == prefix or t.startswith(prefix + ".")]
            if names:
                await admin.delete_topics(names, timeout_ms=10_000)
        except (KafkaError, OSError, asyncio.TimeoutError):
            pass
        finally:
            await admin.close()

    # Its own loop in its own thread: the test's event loop is left as pytest-asyncio keeps it.
    worker = threading.Thread(target=asyncio.run, args=(delete(),), name="delete-topics")
    worker.start()
    worker.join(timeout=30)


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
