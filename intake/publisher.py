"""The publisher: relays the spool's outbox to Kafka, in order, and forgets an event only once Kafka has it.

aiokafka's idempotent producer (acks=all) keeps per-partition order and
deduplicates its own retries. It also never gives up on a send while the
brokers are down, so every wait here is sliced and bounded: the loop keeps
reporting state, and stops when asked, whatever Kafka does. An event leaves
the spool only after its send future has resolved; an unknown outcome is
resent with the same ``ce_id``.

Events come from the spool's memory of its latest commits (``take_events``),
so the publisher reads the disk only when it is behind: after a start, a
failed send, or a backlog larger than that memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from intake.errors import TemporaryFailure
from intake.metrics import Metrics
from intake.spool import Spool, StoredEvent
from intake.topics import TopicReport, TopicsUnavailable
from intake.pause import pause

log = logging.getLogger("intake.publisher")


@dataclass(frozen=True)
class PublisherSettings:
    bootstrap_servers: str
    client_id: str = "intake"
    window: int = 1000
    linger_ms: int = 5
    max_request_size: int = 1024 * 1024
    request_timeout_ms: int = 30_000
    connect_timeout: float = 10.0
    send_timeout: float = 10.0
    stall_after: float = 5.0
    shutdown_flush_timeout: float = 10.0
    max_backoff: float = 15.0
    security: dict[str, object] | None = None


ProducerFactory = Callable[[PublisherSettings], AIOKafkaProducer]
# Creates or checks the topics written to; returns what it found (intake.topics.ensure, bound to the configuration).
TopicsCheck = Callable[[], Awaitable[list[TopicReport]]]


def default_producer(settings: PublisherSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        enable_idempotence=True,  # implies acks="all" and in-order retries per partition
        linger_ms=settings.linger_ms,
        max_batch_size=64 * 1024,
        max_request_size=settings.max_request_size,
        request_timeout_ms=settings.request_timeout_ms,
        **(settings.security or {}),
    )


def _header(event: StoredEvent, name: str) -> bytes:
    for key, value in event.headers:
        if key == name:
            return value
    return b""


class Publisher:
    """Runs until ``stop``; ``kafka_available`` and ``last_error`` say how Kafka is doing."""

    def __init__(
        self,
        spool: Spool,
        settings: PublisherSettings,
        metrics: Metrics,
        producer_factory: ProducerFactory = default_producer,
        topics_check: TopicsCheck | None = None,
    ) -> None:
        self._spool = spool
        self._topics_check = topics_check
        self.topics: list[TopicReport] = []
        self._settings = settings
        self._metrics = metrics
        self._factory = producer_factory
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._backoff = 0.5
        self._unmarked: list[int] = []
        # The last outbox row handed to Kafka and acknowledged (or being marked); 0 starts again from
        # the oldest unpublished row, as after a failed send.
        self._after = 0
        self.name = "publisher"
        self.kafka_available = False
        self.last_error: str | None = None
        self.spool_error: str | None = None
        self.last_success: float | None = None

    # --- state ------------------------------------------------------------------

    def _up(self) -> None:
        if not self.kafka_available:
            log.info("kafka available", extra={"event": "kafka_up"})
        self.kafka_available = True
        self.last_error = None
        self.last_success = time.monotonic()
        self._backoff = 0.5
        self._metrics.kafka_up.set(1)

    def _down(self, error: str) -> None:
        if self.kafka_available or self.last_error is None:
            log.warning("kafka unavailable; spooling", extra={"event": "kafka_down", "error": error})
        self.kafka_available = False
        self.last_error = error
        self._metrics.kafka_up.set(0)

    async def _back_off(self) -> None:
        await pause(self._stopping, self._backoff)
        self._backoff = min(self._backoff * 2, self._settings.max_backoff)

    # --- the producer -------------------------------------------------------------

    async def _connect(self) -> AIOKafkaProducer | None:
        producer = self._factory(self._settings)
        try:
            await asyncio.wait_for(producer.start(), timeout=self._settings.connect_timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as error:
            if self._spool.pending_events_count:  # with events waiting, not reaching Kafka is a failed attempt to publish
                self._metrics.publish_failures.inc()
            self._down(f"connect: {type(error).__name__}: {error}")
            await self._close(producer)
            return None
        return producer

    async def _close(self, producer: AIOKafkaProducer, flush_timeout: float = 0.0) -> None:
        # stop() flushes; with the brokers gone that would wait forever.
        try:
            await asyncio.wait_for(producer.stop(), timeout=max(flush_timeout, 1.0))
        except (KafkaError, OSError, asyncio.TimeoutError, asyncio.CancelledError) as error:
            log.warning("kafka producer closed uncleanly", extra={"event": "producer_close", "error": repr(error)})

    async def _probe(self) -> None:
        """While idle, ask for metadata now and then, so readiness tells the truth."""
        assert self._producer is not None
        try:
            updated = await asyncio.wait_for(self._producer.client.force_metadata_update(), timeout=5)
        except (KafkaError, OSError, asyncio.TimeoutError) as error:
            self._down(f"metadata: {type(error).__name__}")
            return
        if updated:
            self._up()
            if any(report.state == "missing" for report in self.topics):
                await self._check_topics()
        else:
            self._down("metadata: no broker answered")

    # --- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Relay the outbox until stopped. A spool that cannot be read or written is waited out here;
        anything unforeseen ends this call and the supervisor starts it again."""
        self._after = 0  # a new run (a start, a restart after a crash) resends whatever is unpublished
        try:
            while not self._stopping.is_set():
                if self._unmarked:
                    # Kafka has these; until the spool records it, sending more would only repeat them.
                    if not await self._mark(self._unmarked):
                        await self._back_off()
                        continue
                if self._producer is None:
                    self._producer = await self._connect()
                    if self._producer is None:
                        await self._back_off()
                        continue
                    self._up()
                    await self._check_topics()
                self._spool.events_written.clear()
                try:
                    batch = await self._spool.take_events(after_seq=self._after, limit=self._settings.window)
                except TemporaryFailure as error:
                    self._spool_failed(f"reading the outbox: {error}")
                    await self._back_off()
                    continue
                self.spool_error = None
                self._update_gauges(batch)
                if not batch:
                    await self._idle()
                    continue
                await self._publish(batch)
        finally:
            # Whatever ended the loop, nothing is being published now: say so.
            self.kafka_available = False
            self._metrics.kafka_up.set(0)
            if self._producer is not None:
                await self._close(self._producer, self._settings.shutdown_flush_timeout)
                self._producer = None

    def health(self) -> str | None:
        if self.spool_error is not None:
            return f"spool: {self.spool_error}"
        if not self.kafka_available:
            return f"kafka unavailable: {self.last_error or 'connecting'}"
        missing = [report.name for report in self.topics if report.state == "missing"]
        if missing:
            return f"topics missing: {', '.join(missing)} (create them with `intake topics`)"
        return None

    async def _check_topics(self) -> None:
        """Create or check the topics; a missing one is reported (events for it wait in the spool), never fatal."""
        if self._topics_check is None:
            return
        try:
            self.topics = await self._topics_check()
        except TopicsUnavailable as error:
            log.warning("topics could not be checked", extra={"event": "topics_unchecked", "error": str(error)})
            return
        for report in self.topics:
            if report.state in ("missing", "different", "created"):
                level = logging.INFO if report.state == "created" else logging.WARNING
                log.log(level, f"topic {report.state}", extra={"event": f"topic_{report.state}", "topic": report.name, "detail": report.detail})

    def _spool_failed(self, error: str) -> None:
        if self.spool_error is None:
            log.error("the spool failed under the publisher; retrying", extra={"event": "publisher_spool_error", "error": error})
        self.spool_error = error[:300]

    async def _mark(self, seqs: list[int]) -> bool:
        """Forget what Kafka has acknowledged; on a spool failure keep the list and say so (retried by ``run``)."""
        try:
            await self._spool.mark_published(seqs)
        except TemporaryFailure as error:
            self._unmarked = seqs
            self._spool_failed(f"recording published events: {error}")
            return False
        self._unmarked = []
        self.spool_error = None
        return True

    async def _idle(self) -> None:
        waiter = asyncio.ensure_future(self._spool.events_written.wait())
        stopper = asyncio.ensure_future(self._stopping.wait())
        done, pending = await asyncio.wait({waiter, stopper}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not done and self._producer is not None:
            await self._probe()

    async def _publish(self, batch: list[StoredEvent]) -> None:
        assert self._producer is not None
        futures: dict[asyncio.Future[object], StoredEvent] = {}
        send_error: str | None = None
        loop = asyncio.get_running_loop()
        send = self._producer.send
        try:
            # One timeout for the batch, moved on by each send (a send waits only for metadata or
            # room in the producer's buffer): cheaper than a task per send under wait_for.
            async with asyncio.timeout(self._settings.send_timeout) as deadline:
                for event in batch:
                    deadline.reschedule(loop.time() + self._settings.send_timeout)
                    futures[await send(event.topic, value=event.value, key=event.key, headers=event.headers)] = event
        except (KafkaError, TimeoutError) as error:
            # Nothing after this event is sent now, so per-key order holds when it is retried.
            send_error = f"send: {type(error).__name__}: {error}"

        published, failed = await self._await_all(futures)
        # A row's events go or stay together: a row with one event not acknowledged is sent again whole
        # (same ce_ids), and so is the row a failed send stopped in.
        unfinished = {e.seq for f, e in futures.items() if not f.done() or f.cancelled() or f.exception() is not None}
        if send_error and len(futures) < len(batch):
            unfinished.add(batch[len(futures)].seq)
        done = sorted({e.seq for e in published} - unfinished)
        if published:
            for ce_type, count in Counter(_header(event, "ce_type") for event in published).items():
                self._metrics.published.labels(type=ce_type.decode()).inc(count)
            self._up()
        if done:
            await self._mark(done)
        error = send_error or (failed[0] if failed else None)
        if error is not None:
            self._metrics.publish_failures.inc(max(1, len(failed)))
            self._down(error)
            if self._fatal(error):
                await self._close(self._producer)
                self._producer = None
            await self._back_off()
        if error is not None or unfinished or len(futures) < len(batch):
            self._after = 0  # everything still pending is sent again, in order, from the disk
        else:
            self._after = batch[-1].seq

    async def _await_all(self, futures: dict[asyncio.Future[object], StoredEvent]) -> tuple[list[StoredEvent], list[str]]:
        published: list[StoredEvent] = []
        errors: list[str] = []
        pending = set(futures)
        started = time.monotonic()
        stalled = False
        while pending:
            done, pending = await asyncio.wait(pending, timeout=1.0)
            for future in done:
                error = future.exception()
                if error is None:
                    published.append(futures[future])
                else:
                    errors.append(f"delivery: {type(error).__name__}: {error}")
            waited = time.monotonic() - started
            if pending and waited > self._settings.stall_after and not stalled:
                # A send Kafka does not answer is a failed attempt, though aiokafka keeps retrying it: counted once.
                stalled = True
                self._metrics.publish_failures.inc(len(pending))
                self._down("kafka is not acknowledging writes")
            if pending and self._stopping.is_set() and waited > self._settings.shutdown_flush_timeout:
                # Left in the spool: resent, with the same ce_id, after the restart.
                break
        published.sort(key=lambda e: e.seq)
        return published, errors

    @staticmethod
    def _fatal(error: str) -> bool:
        """Errors after which this producer instance cannot go on (its idempotence state is broken)."""
        return any(name in error for name in ("OutOfOrderSequence", "ProducerFenced", "UnknownProducerId", "IllegalState"))

    def _update_gauges(self, batch: list[StoredEvent]) -> None:
        self._metrics.spool_pending_events.set(self._spool.pending_events_count)
        self._metrics.spool_pending_bytes.set(self._spool.pending_bytes_count)
        self._metrics.publish_lag.set(max(0.0, time.time() - batch[0].created_at) if batch else 0.0)

    async def stop(self) -> None:
        self._stopping.set()
