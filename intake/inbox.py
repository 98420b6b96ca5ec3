"""The inbox's normaliser: turns raw messages taken in before normalising (SMTP) into complaints, from the spool.

A component: it takes the inbox's due messages oldest first, keeping up to
32 in hand (their spool writes share commits) and taking more as places free
up, and hands each to the function its
channel registered (``Reception.normalize_later``), which stores the record,
its events and its reply and removes the message from the inbox in one
transaction. What fails for now (an attachment store away, a full disk)
stays in the inbox and is tried again later, with backoff; a crash at any
point leaves it there for the next start. What cannot be normalised is the
channel's to dead-letter, as on its direct path.

While mail is being taken in, taking it in comes first: a message younger
than ``BURST_DEFER_SECONDS`` waits until the burst pauses or it is that old,
as Postfix's smtpd takes mail in at the network's pace and its queue manager
works through the queue. Normalising a mail costs several times what storing
it does, and done meanwhile it shares the event loop, the GIL and the cores
with the sessions waiting for their 250.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from intake.errors import TemporaryFailure
from intake.pause import pause
from intake.reception import Reception
from intake.replay import REPLAY
from intake.spool import InboxMessage, Spool

log = logging.getLogger("intake.inbox")

# How long a message may wait in the inbox while mail keeps being taken in. Measured on the benchmark (2 000 mails over
# 16 SMTP connections, two workers, two cores; the first try, before the other changes of that day): 540 mails/s
# answered 250 when normalising went on meanwhile, 1 460/s with this, and every mail on the topic sooner (3.2 s after
# the first, not 3.8). At half a second normalising began before the burst was over, and slowed it again: 680/s.
BURST_DEFER_SECONDS = 1.0
# Taking in is going on while the last message came this recently.
BURST_GAP_SECONDS = 0.05


class Normaliser:
    name = "normaliser"

    def __init__(
        self,
        spool: Spool,
        reception: Reception,
        *,
        concurrency: int = 32,
        max_bytes_in_hand: int = 32 * 1024 * 1024,
        burst_defer: float = BURST_DEFER_SECONDS,
        first_retry: float = 1.0,
        max_retry: float = 300.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._reception = reception
        self._concurrency = concurrency
        self._max_bytes = max_bytes_in_hand
        self._burst_defer = burst_defer
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._clock = clock
        self._monotonic = monotonic  # the clock of Spool.taken_in_at
        self._stopping = asyncio.Event()
        self.failing: str | None = None  # why the last message failed for now, until one succeeds

    async def run(self) -> None:
        # The messages being normalised. One that has finished has committed (its record, or its retry time) before it
        # leaves: a look at the inbox that begins after it left sees that, one that began before it left skips it.
        working: dict[int, tuple[int, asyncio.Future[None]]] = {}  # id: (bytes of raw mail, its normalising)

        try:
            while not self._stopping.is_set():
                burst = self._in_a_burst()
                room = self._concurrency - len(working)
                in_hand = sum(size for size, _ in working.values())
                looked = False
                # Refilled once half the places (and half the bytes) are free: a look at the inbox per message would
                # cost more than the gap.
                if room >= max(1, self._concurrency // 2) and in_hand <= self._max_bytes // 2:
                    self._spool.inbox_written.clear()
                    now = self._clock()
                    try:
                        due = await self._spool.to_normalise(
                            now,
                            limit=room,
                            taken_in_by=now - self._burst_defer if burst else None,
                            excluding=set(working),
                            max_bytes=self._max_bytes - in_hand,
                        )
                    except TemporaryFailure as error:
                        self.failing = f"spool: {error}"[:300]
                        await pause(self._stopping, 2.0)
                        continue
                    for message in due:
                        task = asyncio.ensure_future(self._normalise(message))
                        working[message.id] = (len(message.raw), task)
                        in_hand += len(message.raw)
                        task.add_done_callback(lambda _, key=message.id: working.pop(key, None))
                    if len(due) == room or in_hand > self._max_bytes // 2:
                        continue  # more may be due: as soon as half the places are free again
                    looked = True  # and nothing more is due
                # Wait for a place to free up; with places free and nothing due, for new mail too (in a burst, for
                # the oldest to ripen or the burst to pause); messages waiting for a retry are looked at every second.
                waits: set[asyncio.Future[Any]] = {task for _, task in working.values()}
                own: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stopping.wait())]
                if looked and not burst:
                    own.append(asyncio.ensure_future(self._spool.inbox_written.wait()))
                await asyncio.wait(
                    waits | set(own), timeout=BURST_GAP_SECONDS if burst else 1.0, return_when=asyncio.FIRST_COMPLETED
                )
                for future in own:
                    future.cancel()
        finally:
            try:
                if working:  # stopping: what has begun ends in its own transaction
                    await asyncio.wait({task for _, task in working.values()})
            finally:  # cancelled, by the supervisor past its grace: so is what is in hand (it stays in the inbox)
                for _, task in list(working.values()):
                    task.cancel()

    def _in_a_burst(self) -> bool:
        return self._monotonic() - self._spool.taken_in_at < BURST_GAP_SECONDS

    async def _normalise(self, message: InboxMessage) -> None:
        normalizer = self._reception.replay if REPLAY in message.context else self._reception.later.get(message.channel)
        received_at = dt.datetime.fromtimestamp(message.received_at, dt.timezone.utc)
        try:
            if normalizer is None:  # a channel taken out of the configuration since: its mail waits for it
                raise TemporaryFailure(f"no {message.channel} channel to normalise it")
            await normalizer(message.raw, received_at, message.context, message.id)
        except TemporaryFailure as error:
            await self._later(message, str(error))
            return
        except Exception as error:  # a bug of ours beyond the channel's own dead-lettering: kept, retried, reported
            log.error(
                "normalising a message from the inbox failed unexpectedly",
                extra={"event": "inbox_failed", "channel": message.channel, "inbox_id": message.id, "error_type": type(error).__name__},
                exc_info=error,
            )
            await self._later(message, f"{type(error).__name__}: {error}")
            return
        self.failing = None

    async def _later(self, message: InboxMessage, error: str) -> None:
        delay = min(self._first_retry * 2**message.attempts, self._max_retry)
        if self.failing is None:
            log.warning(
                "a message waits in the inbox; retrying",
                extra={"event": "inbox_retry", "channel": message.channel, "inbox_id": message.id, "error": error, "retry_in": delay},
            )
        self.failing = error[:300]
        try:
            await self._spool.normalise_failed(message.id, retry_at=self._clock() + delay, error=error)
        except TemporaryFailure:  # the spool cannot record it either: the message is still there, due at once
            await pause(self._stopping, self._first_retry)

    def health(self) -> str | None:
        return None if self.failing is None else f"messages wait in the inbox: {self.failing}"

    async def stop(self) -> None:
        self._stopping.set()
