"""The inbox: raw messages acknowledged to their sender once stored, normalised after, never lost in between."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from intake.errors import SpoolFull, TemporaryFailure
from intake.inbox import Normaliser
from intake.spool import Spool, Submission
from intake.normalizer import webhook as webhook_normalizer
from tests.support.gateway import complaint_body, running, settings
from tests.support.topic import of_type, read_topic, wait_for


async def test_a_message_leaves_the_inbox_in_the_transaction_that_stores_it(tmp_path: Path):
    spool = Spool(tmp_path / "s.db", max_pending_events=2)
    await spool.open()
    try:
        first = await spool.take_in("email", b"raw mail 1", context={"via": "smtp"}, received_at=1.0)
        await spool.take_in("email", b"raw mail 2", context={}, received_at=2.0)
        with pytest.raises(SpoolFull):  # what waits to be normalised counts against the outbox's limits
            await spool.take_in("email", b"raw mail 3", context={}, received_at=3.0)
        [due, _] = await spool.to_normalise(now=10.0)
        assert (due.id, due.raw, due.context) == (first, b"raw mail 1", {"via": "smtp"})
        status = await spool.status()
        assert status.to_normalise == 2 and status.messages == 2
        await spool.accept(
            Submission(key="email:<1@x>", channel="email", reference="C-0000-0001", raw=due.raw, raw_digest="d",
                       answer={}, events=[], inbox_id=due.id)
        )  # fmt: skip
        status = await spool.status()
        assert status.to_normalise == 1 and status.messages == 2
        assert [m.raw for m in await spool.to_normalise(now=10.0)] == [b"raw mail 2"]
        await spool.normalise_failed(first + 1, retry_at=20.0, error="attachment store: read-only")
        assert await spool.to_normalise(now=10.0) == [] and len(await spool.to_normalise(now=20.0)) == 1
        assert spool.pending_events_count == 1
    finally:
        await spool.close()


TAKER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from intake.spool import Spool

    async def main():
        spool = Spool(Path({path!r}))
        await spool.open()
        n = 0
        while True:
            await asyncio.gather(*(spool.take_in("email", b"mail %d" % i, context={{}}, received_at=0.0) for i in range(n, n + 10)))
            n += 10
            print(n, flush=True)  # every mail below n was answered 250

    asyncio.run(main())
    """
)


async def test_what_was_taken_in_survives_kill_9_and_is_normalised_after_the_restart(tmp_path: Path):
    path = tmp_path / "s.db"
    process = subprocess.Popen(
        [sys.executable, "-c", TAKER.format(root=str(Path(__file__).resolve().parents[1]), path=str(path))], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    answered = 0
    while answered < 200:
        answered = int(process.stdout.readline())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for line in process.stdout:
        answered = max(answered, int(line))
    spool = Spool(path)
    await spool.open()
    try:
        waiting = {m.raw for m in await spool.to_normalise(now=1.0, limit=100_000)}
    finally:
        await spool.close()
    assert {b"mail %d" % n for n in range(answered)} <= waiting


def _register_webhook_later(gateway) -> None:
    """A stand-in for a channel that answers before normalising (SMTP does so with mail)."""
    failures = {"store-away": 2}

    async def normalise(raw: bytes, received_at: dt.datetime, context: dict, inbox_id: int):
        key = context["key"]
        if failures.get(key):
            failures[key] -= 1
            raise TemporaryFailure("attachment store: away")
        return await gateway.reception.receive(
            channel="webhook",
            channel_message_id=webhook_normalizer.channel_message_id("acme", key),
            raw=raw,
            normalize=lambda: webhook_normalizer.to_complaint(raw, partner="acme", idempotency_key=key, received_at=received_at),
            received_at=received_at,
            ack="none",
            inbox_id=inbox_id,
            dead_letter_invalid=True,
        )

    gateway.reception.normalize_later("webhook", normalise)


async def test_the_normaliser_publishes_what_was_taken_in_dead_letters_what_is_not_a_complaint_and_dedupes(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, _):
        _register_webhook_later(gateway)
        now = dt.datetime.now(dt.timezone.utc)
        for key, body in [("a", complaint_body("first")), ("b", complaint_body("second")), ("a", complaint_body("first")), ("bad", b"{not json")]:
            await gateway.reception.receive_later(channel="webhook", raw=body, received_at=now, context={"key": key})

        async def drained() -> bool:
            return (await gateway.spool.status()).to_normalise == 0

        await wait_for(drained, timeout=20)
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=1)
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
    assert sorted(r.data["text"] for r in of_type(records, "received")) == ["first", "second"]
    assert len(dead) == 1


async def test_a_message_that_fails_for_now_waits_in_the_inbox_and_goes_through_later(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base):
        _register_webhook_later(gateway)
        gateway.normaliser._first_retry = 0.2  # fast, for the test
        now = dt.datetime.now(dt.timezone.utc)
        await gateway.reception.receive_later(channel="webhook", raw=complaint_body(), received_at=now, context={"key": "store-away"})

        async def degraded() -> bool:
            return (gateway.supervisor.state("normaliser").detail or "").startswith("messages wait in the inbox")

        await wait_for(degraded, timeout=10)
        records = await read_topic(kafka.bootstrap, topic, expect=1, timeout=30)
        await asyncio.sleep(0.2)
        assert gateway.supervisor.state("normaliser").state == "ok"
    assert len(of_type(records, "received")) == 1


async def test_while_mail_is_taken_in_the_normaliser_leaves_young_mail_until_the_burst_pauses_or_it_is_ripe(tmp_path: Path):
    """Taking mail in comes first (the 250s): while it goes on, a mail younger than the deferral waits; it is normalised
    once it is that old, however long the burst, and at once when the burst pauses. One received "in the future" (the
    clock set back) is not left waiting for as long."""
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    now, burst = [1000.6], [True]
    normalised: list[bytes] = []

    async def normalise(raw: bytes, received_at: dt.datetime, context: dict, inbox_id: int) -> None:
        normalised.append(raw)
        await spool.forget_inbox([inbox_id])

    reception = SimpleNamespace(later={"email": normalise}, replay=None)
    normaliser = Normaliser(
        spool, reception, burst_defer=1.0, clock=lambda: now[0],  # type: ignore[arg-type]
        monotonic=lambda: spool.taken_in_at + (0.0 if burst[0] else 60.0),
    )  # fmt: skip

    async def have_normalised(*raws: bytes) -> None:
        async def done() -> bool:
            return normalised == list(raws)

        await wait_for(done, timeout=5, interval=0.02)

    task = asyncio.create_task(normaliser.run())
    try:
        await spool.take_in("email", b"first", context={}, received_at=1000.0)
        await spool.take_in("email", b"second", context={}, received_at=1000.6)
        await asyncio.sleep(0.4)
        assert normalised == []  # both young while the burst goes on
        now[0] = 1001.2
        await have_normalised(b"first")
        await asyncio.sleep(0.3)
        assert normalised == [b"first"]  # the second is 0.6 s old: it waits on
        await spool.take_in("email", b"from the future", context={}, received_at=9999.0)
        await have_normalised(b"first", b"from the future")
        burst[0] = False
        await have_normalised(b"first", b"from the future", b"second")
        await spool.take_in("email", b"after the burst", context={}, received_at=now[0])
        await have_normalised(b"first", b"from the future", b"second", b"after the burst")
    finally:
        await normaliser.stop()
        await asyncio.wait_for(task, 5)
        await spool.close()


async def test_the_normaliser_takes_each_message_once_however_its_normalising_and_the_inbox_reads_interleave(tmp_path: Path):
    """Up to ``concurrency`` messages are normalised at once and the inbox is read again as places free up: a read
    that began before a message's transaction committed must not hand it out a second time."""
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    taken: list[bytes] = []
    rng = random.Random(7)

    async def normalise(raw: bytes, received_at: dt.datetime, context: dict, inbox_id: int) -> None:
        taken.append(raw)
        await asyncio.sleep(rng.random() * 0.01)
        if raw.endswith(b"3"):
            raise TemporaryFailure("the attachment store is away")  # these wait for their retry
        await spool.forget_inbox([inbox_id])

    reception = SimpleNamespace(later={"email": normalise}, replay=None)
    normaliser = Normaliser(spool, reception, concurrency=8, first_retry=60.0, monotonic=lambda: 0.0)  # type: ignore[arg-type]
    task = asyncio.create_task(normaliser.run())
    try:
        for n in range(300):
            await spool.take_in("email", b"mail %d" % n, context={}, received_at=0.0)
            if n % 7 == 0:
                await asyncio.sleep(0)

        async def all_taken() -> bool:
            return len(set(taken)) == 300 and (await spool.status()).to_normalise == 30

        await wait_for(all_taken, timeout=30, interval=0.05)
        await asyncio.sleep(0.2)
        assert sorted(taken) == sorted(b"mail %d" % n for n in range(300))  # each once; the failed ones wait for later
    finally:
        await normaliser.stop()
        await asyncio.wait_for(task, 5)
        await spool.close()


async def test_the_inbox_hands_out_as_many_mails_as_fit_in_the_bytes_asked_for_and_always_one(tmp_path: Path):
    """The normaliser holds what it normalises in memory: 32 mails of 25 MiB would be 800 MiB, so it asks for what fits
    in the bytes it has left; a mail larger than that alone still comes, or it would never be normalised."""
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    try:
        for size in (400, 300, 500, 2000, 100):
            await spool.take_in("email", b"x" * size, context={}, received_at=0.0)
        sizes = lambda messages: [len(m.raw) for m in messages]  # noqa: E731
        assert sizes(await spool.to_normalise(1.0, limit=10, max_bytes=1200)) == [400, 300, 500]
        assert sizes(await spool.to_normalise(1.0, limit=10, max_bytes=1199)) == [400, 300]
        assert sizes(await spool.to_normalise(1.0, limit=2, max_bytes=10_000)) == [400, 300]
        first, second, third, *_ = await spool.to_normalise(1.0, limit=10)
        assert sizes(await spool.to_normalise(1.0, limit=10, max_bytes=1000, excluding={first.id, second.id, third.id})) == [2000]
        assert sizes(await spool.to_normalise(1.0, limit=10, max_bytes=1, excluding={first.id})) == [300]
    finally:
        await spool.close()
