"""Acknowledgement delivery for channels that answer later (email, Telegram): from the spool, with retries.

A reply is written to the spool with the message it answers. This loop hands
each due reply to its channel's sender; when the sender returns, the reply is
deleted and a ``complaint.acknowledged`` event written in the same
transaction. A temporary failure is retried with exponential backoff; a
permanent one (or too many attempts) records ``acknowledgement_failed``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from intake.errors import Rejected, TemporaryFailure
from intake.metrics import Metrics
from intake.reception import Reception
from intake.spool import Spool, StoredReply
from intake.pause import pause

log = logging.getLogger("intake.replies")


class ReplySender(Protocol):
    async def send_reply(self, payload: dict[str, Any]) -> None:
        """Send it; raise TemporaryFailure to retry later, Rejected to give up."""


class Replies:
    def __init__(
        self,
        spool: Spool,
        reception: Reception,
        metrics: Metrics,
        senders: Mapping[str, ReplySender],
        *,
        max_attempts: int = 12,
        first_retry: float = 2.0,
        max_retry: float = 900.0,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._reception = reception
        self._metrics = metrics
        # Kept by reference, not copied: channels register their senders after the gateway has built this.
        self._senders = senders
        self._max_attempts = max_attempts
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._poll_interval = poll_interval
        self._clock = clock
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            busy = False
            for channel, sender in self._senders.items():
                for reply in await self._spool.due_replies(channel, self._clock()):
                    if self._stopping.is_set():
                        return
                    busy = True
                    await self._deliver(sender, reply)
            if not busy:
                await pause(self._stopping, self._poll_interval)

    async def _deliver(self, sender: ReplySender, reply: StoredReply) -> None:
        now = self._clock()
        try:
            await sender.send_reply(reply.payload)
        except TemporaryFailure as error:
            attempts = reply.attempts + 1
            if attempts < self._max_attempts:
                delay = min(self._first_retry * 2 ** (attempts - 1), self._max_retry)
                self._metrics.acknowledgements.labels(channel=reply.channel, outcome="retried").inc()
                log.warning(
                    "acknowledgement not sent; will retry",
                    extra={"event": "reply_retry", "channel": reply.channel, "reference": reply.payload.get("reference"), "attempts": attempts, "error": str(error)},
                )
                await self._spool.reply_failed(reply.id, retry_at=now + delay, error=str(error))
                return
            await self._give_up(reply, f"gave up after {attempts} attempts: {error}")
            return
        except Rejected as error:
            await self._give_up(reply, str(error))
            return
        sent_at = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        await self._spool.reply_sent(reply.id, [self._reception.acknowledged_event(payload=reply.payload, sent_at=sent_at)])
        self._metrics.acknowledgements.labels(channel=reply.channel, outcome="sent").inc()
        received = reply.payload.get("received_at")
        if isinstance(received, (int, float)):
            self._metrics.acknowledgement_latency.labels(channel=reply.channel).observe(max(0.0, now - received))

    async def _give_up(self, reply: StoredReply, why: str) -> None:
        log.error(
            "acknowledgement failed for good",
            extra={"event": "reply_failed", "channel": reply.channel, "reference": reply.payload.get("reference"), "error": why},
        )
        sent_at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        event = self._reception.acknowledged_event(payload=reply.payload, sent_at=sent_at, failed=why[:500])
        await self._spool.reply_sent(reply.id, [event])
        self._metrics.acknowledgements.labels(channel=reply.channel, outcome="failed").inc()

    async def stop(self) -> None:
        self._stopping.set()
