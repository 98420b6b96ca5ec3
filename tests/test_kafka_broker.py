"""The real Kafka broker used by the test suite: produce, consume, restart, consume again."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.support.kafka import KafkaBroker

RECORDS = [
    (b"complaint-1", b'{"text":"late delivery"}', [("source", b"web"), ("attempt", b"1")]),
    (b"complaint-2", b'{"text":"wrong item"}', [("source", b"email"), ("attempt", b"1")]),
    (b"complaint-3", b'{"text":"rude agent"}', [("source", b"phone"), ("attempt", b"2")]),
]


async def _produce(bootstrap: str, topic: str) -> dict[bytes, tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        positions = {}
        for key, value, headers in RECORDS:
            md = await producer.send_and_wait(topic, value, key=key, headers=headers)
            positions[key] = (md.partition, md.offset)
        return positions
    finally:
        await producer.stop()


async def _consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
        # Nothing beyond what was produced.
        extra = await consumer.getmany(timeout_ms=500)
        records.extend(m for msgs in extra.values() for m in msgs)
        return sorted(records, key=lambda r: r.key)
    finally:
        await consumer.stop()


async def _cluster_id(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return (await admin.describe_cluster())["cluster_id"]
    finally:
        await admin.close()


def _check(records, positions) -> None:
    assert [(r.key, r.value, list(r.headers)) for r in records] == [
        (k, v, h) for k, v, h in RECORDS
    ]
    assert {r.key: (r.partition, r.offset) for r in records} == positions


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_broker_roundtrip_survives_restart(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    topic = f"intake-test-{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.to_thread(broker.start)
        assert broker.is_running()

        positions = await _produce(broker.bootstrap, topic)
        assert len(set(positions.values())) == 3
        cluster_id = await _cluster_id(broker.bootstrap)

        _check(await _consume_all(broker.bootstrap, topic, 3), positions)

        await asyncio.to_thread(broker.stop)
        assert not broker.is_running()

        await asyncio.to_thread(broker.start)
        assert broker.is_running()
        assert await _cluster_id(broker.bootstrap) == cluster_id

        _check(await _consume_all(broker.bootstrap, topic, 3), positions)
    finally:
        broker.stop()
    assert not broker.is_running()
