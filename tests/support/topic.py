"""Reading what a real consumer sees on a topic."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer


@dataclass(frozen=True)
class Record:
    key: str
    value: bytes
    headers: dict[str, str]
    partition: int
    offset: int

    @property
    def data(self) -> Any:
        return json.loads(self.value)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int,
    timeout: float = 30,
    settle: float = 1.0,
    counted: Callable[[Record], bool] | None = None,
) -> list[Record]:
    """Everything on the topic from the start, waiting until at least ``expect`` records (then ``settle`` more
    seconds, so that a duplicate arriving late is seen too), or ``timeout``. With ``counted``, only the records it
    accepts count towards ``expect`` (the complaints among their acknowledgements)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for _tp, messages in batches.items():
                for m in messages:
                    records.append(
                        Record(
                            key=m.key.decode() if m.key else "",
                            value=m.value,
                            headers={k: v.decode() for k, v in m.headers},
                            partition=m.partition,
                            offset=m.offset,
                        )
                    )
            if (len(records) if counted is None else sum(1 for record in records if counted(record))) >= expect:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle:
                    break
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def of_type(records: list[Record], suffix: str) -> list[Record]:
    return [r for r in records if r.headers.get("ce_type", "").startswith(f"intake.complaint.{suffix}") or r.headers.get("ce_type", "").startswith(f"intake.message.{suffix}")]


async def wait_for(predicate, timeout: float = 15, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise TimeoutError("condition not met in time")
