"""The outbound consumer: downstream's commands from Kafka into the spool, offsets committed only once they are safe.

A component (``outbound``) running one aiokafka consumer in the consumer
group ``kafka.outbound_group``, with auto-commit off and ``read_committed``
isolation. Each batch from ``getmany`` is parsed (``intake.commands``) and
written to the spool in one transaction: valid commands for a reference this
spool knows are stored, idempotent on ``ce_id``; the rest become
``intake.command.rejected.v1`` on the dead-letter topic, written to the
outbox in that same transaction. Only after that commit are the offsets
committed. A crash in between, or a rebalance, redelivers the batch, which
the ce_ids make harmless.

Kafka away is expected: the component says so (degraded), closes the
consumer and tries again with a capped backoff; it never ends the gateway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from intake import commands, events, topics
from intake.config import KafkaConfig
from intake.errors import TemporaryFailure
from intake.metrics import Metrics
from intake.pause import pause
from intake.spool import CommandIntake, Spool
from intake.twoway import Route

log = logging.getLogger("intake.outbound")

ConsumerFactory = Callable[[KafkaConfig], AIOKafkaConsumer]


def default_consumer(kafka: KafkaConfig) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        kafka.outbound_topic,
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-outbound",
        group_id=kafka.outbound_group,
        enable_auto_commit=False,  # committed after the spool has the batch, never before
        isolation_level="read_committed",  # a transactional producer's aborted commands are never carried out
        auto_offset_reset="earliest",  # a new group starts with what downstream wrote before it
        max_poll_records=500,
        **kafka.security(),
    )


class OutboundConsumer:
    def __init__(
        self,
        spool: Spool,
        metrics: Metrics,
        kafka: KafkaConfig,
        *,
        source: str,
        consumer_factory: ConsumerFactory = default_consumer,
        poll_ms: int = 500,
        connect_timeout: float = 15.0,
        first_retry: float = 0.5,
        max_retry: float = 30.0,
        clock: Callable[[], float] = time.time,
        routes: Callable[[str], Awaitable[Route | None]] | None = None,
    ) -> None:
        self._spool = spool
        # With several workers: where a reference another worker took in is found (intake.conversations).
        self._routes = routes
        self._metrics = metrics
        self._kafka = kafka
        self._source = source
        self._factory = consumer_factory
        self._poll_ms = poll_ms
        self._connect_timeout = connect_timeout
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._clock = clock
        self._stopping = asyncio.Event()
        self.name = "outbound"
        self.error: str | None = None

    def health(self) -> str | None:
        return self.error

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        delay = self._first_retry
        while not self._stopping.is_set():
            # Subscribing to a topic that is not there makes a broker with auto-creation on create it with its own
            # defaults (one partition, no replication): it is created, or found missing, as configured first.
            missing = await self._topic_missing()
            if missing is not None:
                self.error = missing
                await pause(self._stopping, delay)
                delay = min(delay * 2, self._max_retry)
                continue
            consumer = self._factory(self._kafka)
            try:
                await asyncio.wait_for(consumer.start(), timeout=self._connect_timeout)
                self.error = None
                delay = self._first_retry
                await self._consume(consumer)
            except (KafkaError, OSError, asyncio.TimeoutError) as error:
                self.error = f"kafka unavailable: {type(error).__name__}: {str(error)[:200]}"
                log.warning("outbound topic unreachable; retrying", extra={"event": "outbound_kafka_error", "error": self.error})
            finally:
                try:
                    await asyncio.wait_for(consumer.stop(), timeout=5)
                except (KafkaError, OSError, asyncio.TimeoutError):
                    pass  # a consumer of an unreachable cluster: nothing left to release
            if not self._stopping.is_set():
                await pause(self._stopping, delay)
                delay = min(delay * 2, self._max_retry)

    async def _topic_missing(self) -> str | None:
        """Why the outbound topic cannot be consumed yet, or None when it is there."""
        try:
            reports = await topics.ensure(self._kafka, create=self._kafka.create_topics)
        except topics.TopicsUnavailable as error:
            return f"kafka unavailable: {str(error)[:200]}"
        for report in reports:
            if report.name == self._kafka.outbound_topic and report.state == "missing":
                return f"topic missing: {report.name} ({report.detail})"
        return None

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=self._poll_ms)
            if not batches:
                continue
            records = [record for partition in batches.values() for record in partition]
            intakes = [self._intake(record) for record in records]
            outcomes = await self._store(intakes)
            if outcomes is None:
                return  # stopping with the batch unstored: uncommitted, it comes again
            for item, outcome in zip(intakes, outcomes, strict=True):
                kind = commands.KINDS.get(item.ce_type or "", "unknown")
                self._metrics.outbound_commands.labels(kind=kind, outcome=outcome).inc()
                log.info(
                    "command consumed",
                    extra={"event": "command_consumed", "reference": item.reference, "command_id": item.dedupe_id, "kind": kind, "outcome": outcome},
                )
            await self._commit(consumer, {tp: records[-1].offset + 1 for tp, records in batches.items() if records})

    async def _store(self, intakes: list[CommandIntake]) -> list[str] | None:
        """Into the spool, however long the spool takes to come back; None if the gateway stops first."""
        while True:
            try:
                outcomes = await self._spool.store_commands(await self._with_routes(intakes))
            except TemporaryFailure as error:
                self.error = f"spool: {str(error)[:300]}"
                await pause(self._stopping, 1.0)
                if self._stopping.is_set():
                    return None
                continue
            self.error = None
            return outcomes

    async def _with_routes(self, intakes: list[CommandIntake]) -> list[CommandIntake]:
        """Each valid command with the route the other workers' spools hold for its reference, if any."""
        if self._routes is None:
            return intakes
        found = []
        for item in intakes:
            if item.data is not None and item.reference is not None:
                item = replace(item, route=await self._routes(item.reference))
            found.append(item)
        return found

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        # A partition taken away meanwhile is not ours to commit: its next owner gets the records again
        # and finds their ce_ids in its spool, or (another gateway) stores them for the first time.
        owned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            await consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as error:
            log.warning("offsets not committed after a rebalance; the batch will come again", extra={"event": "outbound_commit_failed", "error": type(error).__name__})

    def _intake(self, record: ConsumerRecord[Any, Any]) -> CommandIntake:
        at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        where = f"kafka:{record.topic}:{record.partition}:{record.offset}"
        try:
            command = commands.parse(record.key, record.value, list(record.headers))
        except commands.InvalidCommand as invalid:
            dedupe = invalid.ce_id or where
            return CommandIntake(
                dedupe_id=dedupe,
                reference=invalid.reference,
                ce_type=invalid.ce_type,
                data=None,
                rejection=self._rejected(dedupe, invalid.ce_id, invalid.ce_type, invalid.reference, invalid.reason, at),
            )
        return CommandIntake(
            dedupe_id=command.ce_id,
            reference=command.reference,
            ce_type=command.ce_type,
            data=command.data,
            unknown_reference=self._rejected(
                command.ce_id, command.ce_id, command.ce_type, command.reference, "unknown reference: no complaint with it was received here", at
            ),
        )

    def _rejected(self, dedupe: str, ce_id: str | None, ce_type: str | None, reference: str | None, reason: str, at: dt.datetime) -> Any:
        return events.command_rejected_event(
            dedupe_id=dedupe, ce_id=ce_id, ce_type=ce_type, reference=reference, reason=reason, at=at,
            topic=self._kafka.dead_letter_topic, source=self._source,
        )  # fmt: skip
