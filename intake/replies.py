"""Acknowledgement delivery for channels that answer later (email, Telegram): from the spool, with retries.

A reply is written to the spool with the message it answers. This loop hands
each due reply to its channel's sender; when the sender returns, the reply is
deleted and a ``complaint.acknowledged`` event written in the same
transaction. A temporary failure is retried with exponential backoff; a
permanent one (or too many attempts) records ``acknowledgement_failed``.

Several replies are delivered at once (``concurrency``): one at a time, a
burst of 2 000 mails took 20 s of relay round trips and one spool commit per
reply after the last complaint was in; side by side, their commits are shared.
Never two to the same recipient at once, though: a sender counts what it sent
to an address (email's auto-responder limit) once the send has returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from intake.errors import Rejected, Suppressed, TemporaryFailure
from intake.metrics import Metrics
from intake.reception import Reception
from intake.spool import Event, Spool, StoredReply
from intake.normalizer.reference import complaint_id, reference_for
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
        spool_retry: float = 2.0,
        concurrency: int = 8,
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
        self._spool_retry = spool_retry
        self._concurrency = concurrency
        self.name = "replies"
        self.spool_error: str | None = None
        self._clock = clock
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            busy = False
            try:
                for channel, sender in list(self._senders.items()):
                    due = await self._spool.due_replies(channel, self._clock())
                    while due:
                        if self._stopping.is_set():
                            return
                        busy = True
                        batch, due = _side_by_side(due, self._concurrency)
                        await asyncio.gather(*(self._deliver(sender, reply) for reply in batch))
            except TemporaryFailure as error:
                # The spool cannot be read or written now: nothing was lost, the replies wait in it.
                if self.spool_error is None:
                    log.error("the spool failed under the reply sender; retrying", extra={"event": "replies_spool_error", "error": str(error)})
                self.spool_error = str(error)[:300]
                await pause(self._stopping, self._spool_retry)
                continue
            self.spool_error = None
            if not busy:
                await pause(self._stopping, self._poll_interval)

    def health(self) -> str | None:
        return None if self.spool_error is None else f"spool: {self.spool_error}"

    async def _deliver(self, sender: ReplySender, reply: StoredReply) -> None:
        now = self._clock()
        try:
            await sender.send_reply(reply.payload)
        except Suppressed as error:  # on purpose, and said by the sender: recorded, not logged as a failure
            await self._give_up(reply, str(error), level=logging.DEBUG)
            return
        except Rejected as error:
            await self._give_up(reply, str(error))
            return
        except TemporaryFailure as error:
            # Only a wait asked for by this failure (flood control), not the class's default for senders' retries.
            await self._retry(reply, str(error), vars(error).get("retry_after", 0.0))
            return
        except Exception as error:  # a payload the sender cannot handle, or its bug: retried, bounded, and never in the way of other replies
            log.error(
                "acknowledgement failed unexpectedly",
                extra={"event": "reply_error", "channel": reply.channel, "reference": reply.payload.get("reference"), "error_type": type(error).__name__},
                exc_info=error,
            )
            await self._retry(reply, f"{type(error).__name__}: {error}", 0.0)
            return
        sent_at = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        await self._spool.reply_sent(reply.id, [self._event(reply, sent_at, failed=None)])
        self._metrics.acknowledgements.labels(channel=reply.channel, outcome="sent").inc()
        received = reply.payload.get("received_at")
        if isinstance(received, (int, float)):
            self._metrics.acknowledgement_latency.labels(channel=reply.channel).observe(max(0.0, now - received))

    async def _retry(self, reply: StoredReply, error: str, at_least: float) -> None:
        attempts = reply.attempts + 1
        if attempts >= self._max_attempts:
            await self._give_up(reply, f"gave up after {attempts} attempts: {error}")
            return
        delay = max(min(self._first_retry * 2 ** (attempts - 1), self._max_retry), at_least)
        self._metrics.acknowledgements.labels(channel=reply.channel, outcome="retried").inc()
        log.warning(
            "acknowledgement not sent; will retry",
            extra={"event": "reply_retry", "channel": reply.channel, "reference": reply.payload.get("reference"), "attempts": attempts, "error": error},
        )
        await self._spool.reply_failed(reply.id, retry_at=self._clock() + delay, error=error)

    async def _give_up(self, reply: StoredReply, why: str, *, level: int = logging.ERROR) -> None:
        log.log(
            level,
            "acknowledgement failed for good",
            extra={"event": "reply_failed", "channel": reply.channel, "reference": reply.payload.get("reference"), "error": why},
        )
        sent_at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        await self._spool.reply_sent(reply.id, [self._event(reply, sent_at, failed=why[:500])])
        self._metrics.acknowledgements.labels(channel=reply.channel, outcome="failed").inc()

    def _event(self, reply: StoredReply, sent_at: dt.datetime, *, failed: str | None) -> Event:
        """The acknowledged (or acknowledgement_failed) event; a payload too broken to describe is named by its reply alone."""
        try:
            return self._reception.acknowledged_event(payload=reply.payload, sent_at=sent_at, failed=failed)
        except (KeyError, TypeError, ValueError) as error:
            reason = f"{failed or 'sent'}; reply payload unreadable: {type(error).__name__}"
            return self._reception.acknowledged_event(payload=_bare_payload(reply), sent_at=sent_at, failed=reason[:500])

    async def stop(self) -> None:
        self._stopping.set()


def _side_by_side(due: list[StoredReply], most: int) -> tuple[list[StoredReply], list[StoredReply]]:
    """Up to ``most`` replies, in order, to distinct recipients; and the rest, in order."""
    batch: list[StoredReply] = []
    rest: list[StoredReply] = []
    recipients: set[str] = set()
    for reply in due:
        recipient = str(reply.payload.get("to") or reply.payload.get("chat_id") or reply.id).lower()
        if len(batch) < most and recipient not in recipients:
            batch.append(reply)
            recipients.add(recipient)
        else:
            rest.append(reply)
    return batch, rest


def _bare_payload(reply: StoredReply) -> dict[str, Any]:
    """What the spool itself knows of a reply, for a payload whose own fields cannot be read."""
    channel, _, message_id = reply.message_key.partition(":")
    return {
        "complaint_id": str(complaint_id(channel, message_id)),
        "reference": reference_for(channel, message_id),
        "key": reference_for(channel, message_id),
        "channel": reply.channel,
        "locale": "und",
    }
