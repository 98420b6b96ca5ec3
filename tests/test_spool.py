"""The spool: idempotent, group-committed, bounded, and durable across kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from intake.errors import SpoolFull, TemporaryFailure
from intake.spool import Event, Reply, Spool, Submission


def submission(n: int, *, events: int = 1, raw: bytes | None = None) -> Submission:
    body = raw if raw is not None else f"message {n}".encode()
    return Submission(
        key=f"test:{n}",
        channel="webhook",
        reference=f"C-0000-{n:04d}",
        raw=body,
        raw_digest=str(hash(body)),
        answer={"reference": f"C-0000-{n:04d}"},
        events=[Event(topic="t", key=b"k", value=b"v" * 10, headers=[("ce_id", str(n).encode())]) for _ in range(events)],
    )


async def test_a_redelivery_is_recognised_and_gets_the_first_answer(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    first = await spool.accept(submission(1))
    again = await spool.accept(submission(1))
    changed = await spool.accept(submission(1, raw=b"something else"))
    status = await spool.status()
    await spool.close()
    assert not first.duplicate
    assert again.duplicate and again.same_content and again.answer == first.answer
    assert changed.duplicate and not changed.same_content
    assert status.messages == 1 and status.pending_events == 1


async def test_concurrent_writes_share_commits(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    before = spool.commits
    await asyncio.gather(*(spool.accept(submission(n)) for n in range(500)))
    commits = spool.commits - before
    status = await spool.status()
    await spool.close()
    assert status.messages == 500
    assert commits < 100, f"{commits} commits for 500 messages: writes are not grouped"


async def test_a_full_spool_pushes_back_and_recovers_when_drained(tmp_path: Path):
    spool = Spool(tmp_path / "s.db", max_pending_events=3)
    await spool.open()
    for n in range(3):
        await spool.accept(submission(n))
    with pytest.raises(SpoolFull):
        await spool.accept(submission(99))
    pending = await spool.pending_events(0, 10)
    await spool.mark_published([e.seq for e in pending[:2]])
    await spool.accept(submission(99))
    status = await spool.status()
    await spool.close()
    assert status.pending_events == 2 and status.messages == 4


async def test_concurrent_accepts_never_overshoot_the_limit(tmp_path: Path):
    spool = Spool(tmp_path / "s.db", max_pending_events=50)
    await spool.open()
    results = await asyncio.gather(*(spool.accept(submission(n)) for n in range(150)), return_exceptions=True)
    status = await spool.status()
    await spool.close()
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, SpoolFull)]
    assert len(accepted) == 50 and len(refused) == 100
    assert status.messages == 50 and status.pending_events == 50


async def test_the_byte_limit_holds_under_concurrency_too(tmp_path: Path):
    spool = Spool(tmp_path / "s.db", max_pending_bytes=10 * 40)  # room for the events of 40 submissions
    await spool.open()
    results = await asyncio.gather(*(spool.accept(submission(n)) for n in range(120)), return_exceptions=True)
    await spool.close()
    assert sum(not isinstance(r, BaseException) for r in results) == 40
    assert sum(isinstance(r, SpoolFull) for r in results) == 80


async def test_pending_counts_survive_a_restart(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    await spool.accept(submission(1, events=2))
    await spool.close()
    reopened = Spool(tmp_path / "s.db", max_pending_events=2)
    await reopened.open()
    try:
        assert reopened.pending_events_count == 2
        with pytest.raises(SpoolFull):
            await reopened.accept(submission(2))
    finally:
        await reopened.close()


async def test_cursor_advances_with_the_message_and_on_redelivery(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    first = submission(1)
    first.cursor = ("imap:INBOX", "7:41")
    await spool.accept(first)
    again = submission(1)
    again.cursor = ("imap:INBOX", "7:42")
    await spool.accept(again)
    assert await spool.cursor("imap:INBOX") == "7:42"
    await spool.close()


async def test_replies_are_kept_until_sent(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    with_reply = submission(1)
    with_reply.replies = [Reply(channel="email", payload={"to": "x"})]
    await spool.accept(with_reply)
    [due] = await spool.due_replies("email", now=1e12)
    await spool.reply_failed(due.id, retry_at=1e12 + 60, error="relay down")
    assert await spool.due_replies("email", now=1e12) == []
    [later] = await spool.due_replies("email", now=1e12 + 61)
    assert later.attempts == 1
    await spool.reply_sent(later.id, [Event(topic="t", key=b"k", value=b"ack", headers=[])])
    status = await spool.status()
    await spool.close()
    assert status.pending_replies == 0 and status.pending_events == 2


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from intake.spool import Spool, Submission, Event

    async def main():
        spool = Spool(__import__("pathlib").Path({path!r}))
        await spool.open()
        n = 0
        while True:
            batch = [
                spool.accept(Submission(key=f"k:{{i}}", channel="webhook", reference="C-0000-0000", raw=b"x" * 200,
                                        raw_digest="d", answer={{}}, events=[Event("t", b"k", b"v", [])]))
                for i in range(n, n + 20)
            ]
            await asyncio.gather(*batch)
            n += 20
            print(n, flush=True)  # every message below n has been acknowledged to its "sender"

    asyncio.run(main())
    """
)


async def test_nothing_acknowledged_is_lost_on_kill_9(tmp_path: Path):
    path = tmp_path / "s.db"
    script = WRITER.format(root=str(Path(__file__).resolve().parents[1]), path=str(path))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    acknowledged = 0
    while acknowledged < 400:
        line = process.stdout.readline()
        assert line, "writer died"
        acknowledged = int(line)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for line in process.stdout:  # anything printed before the kill landed was acknowledged too
        acknowledged = max(acknowledged, int(line))

    spool = Spool(path)
    await spool.open()
    status = await spool.status()
    missing = [i for i in range(acknowledged) if not await spool.has_message(f"k:{i}")]
    await spool.close()
    assert missing == []
    assert status.messages >= acknowledged


async def test_one_bad_message_fails_alone_and_its_batch_commits(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    bad = submission(13)
    bad.context = {"not json": object()}
    results = await asyncio.gather(*(spool.accept(submission(n) if n != 13 else bad) for n in range(30)), return_exceptions=True)
    status = await spool.status()
    await spool.close()
    assert isinstance(results[13], TypeError)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 13)
    assert status.messages == 29 and status.pending_events == 29


async def test_a_failed_read_is_a_temporary_failure_and_shows_as_the_fault(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    try:
        await spool.accept(submission(1))
        assert spool.fault is None
        with sqlite3.connect(tmp_path / "s.db") as other:  # the table goes away under the spool
            other.execute("DROP TABLE cursor")
        with pytest.raises(TemporaryFailure) as failure:
            await spool.cursor("imap:INBOX")
        assert not isinstance(failure.value, sqlite3.Error)
        assert spool.fault is not None and "cursor" in spool.fault
        assert await spool.has_message("test:1")  # the next read that works clears it
        assert spool.fault is None
    finally:
        await spool.close()


async def test_a_write_that_fails_in_sqlite_is_a_temporary_failure(tmp_path: Path):
    spool = Spool(tmp_path / "s.db")
    await spool.open()
    try:
        with sqlite3.connect(tmp_path / "s.db") as other:
            other.execute("DROP TABLE cursor")
        results = await asyncio.gather(spool.set_cursor("imap:INBOX", "7:1"), spool.accept(submission(1)), return_exceptions=True)
        assert isinstance(results[0], TemporaryFailure) and not isinstance(results[0], sqlite3.Error)
        assert not isinstance(results[1], BaseException)  # its batch committed without it
    finally:
        await spool.close()


def test_max_total_bytes_must_leave_room_for_the_raw_messages_of_unpublished_events():
    from pydantic import ValidationError

    from intake.config import SpoolConfig

    with pytest.raises(ValidationError, match="at least twice max_pending_bytes"):
        SpoolConfig(max_total_bytes=600 * 1024 * 1024)  # the default max_pending_bytes is 512 MiB
    config = SpoolConfig(max_total_bytes=64 * 1024 * 1024, max_pending_bytes=32 * 1024 * 1024)
    assert Spool.from_config(config).max_total_bytes == 64 * 1024 * 1024


async def test_events_are_handed_to_the_publisher_in_order_and_from_disk_once_memory_overflows(tmp_path: Path):
    spool = Spool(tmp_path / "s.db", memory_rows=5)
    await spool.open()
    try:
        await asyncio.gather(*(spool.accept(submission(n, events=2)) for n in range(3)))
        fresh = await spool.take_events(after_seq=0, limit=100)
        assert [dict(e.headers)["ce_id"] for e in fresh] == [b"0", b"0", b"1", b"1", b"2", b"2"]
        assert len({e.seq for e in fresh}) == 3  # one row per message, its events together
        # Nothing taken is forgotten: a publisher that failed starts again from the disk.
        assert [e.headers for e in await spool.take_events(after_seq=0, limit=100)] == [e.headers for e in fresh]
        await spool.mark_published([e.seq for e in fresh])
        for n in range(3, 20):  # more than memory holds, as while Kafka is away
            await spool.accept(submission(n))
        after = fresh[-1].seq
        backlog: list[bytes] = []
        while batch := await spool.take_events(after_seq=after, limit=4):
            backlog += [dict(e.headers)["ce_id"] for e in batch]
            after = batch[-1].seq
        assert backlog == [str(n).encode() for n in range(3, 20)]
        assert spool.pending_events_count == 17
    finally:
        await spool.close()


async def test_a_spool_written_one_row_per_event_is_migrated_in_order(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(
            """
            CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_key TEXT, topic TEXT NOT NULL,
                key BLOB NOT NULL, value BLOB NOT NULL, headers TEXT NOT NULL, created_at REAL NOT NULL);
            INSERT INTO outbox VALUES (7, 'webhook:a', 't', x'4b', x'7b7d', '[["ce_id", "a-1"]]', 1.0);
            INSERT INTO outbox VALUES (9, 'webhook:a', 't', x'4b', x'5b5d', '[["ce_id", "a-2"]]', 2.0);
            """
        )
    spool = Spool(path)
    await spool.open()
    try:
        assert spool.pending_events_count == 2 and spool.pending_bytes_count == 4
        events = await spool.take_events(after_seq=0, limit=10)
        assert [(e.seq, e.key, e.value, e.headers) for e in events] == [
            (7, b"K", b"{}", [("ce_id", b"a-1")]),
            (9, b"K", b"[]", [("ce_id", b"a-2")]),
        ]
        await spool.accept(submission(1))
        assert (await spool.take_events(after_seq=9, limit=10))[0].seq > 9
    finally:
        await spool.close()


async def test_a_spool_whose_surveys_did_not_keep_whom_they_asked_learns_it_from_their_routes(tmp_path: Path):
    from intake.spool import CommandIntake
    from intake.twoway import Route, Survey

    path = tmp_path / "surveys.db"
    spool = Spool(path)
    await spool.open()
    try:
        sms = Route(channel="sms", address={"to": "+48601234567", "from": "+15005550006"}, locale="pl", last_inbound_at=1.0)
        web = Route(channel="web", address={}, locale="de", last_inbound_at=1.0, contacts={"email": "Eva@Example.com"})
        for n, (route, via) in enumerate([(sms, "sms"), (web, "email")], start=1):
            taken = submission(n)
            taken.route = route
            await spool.accept(taken)
            reference = taken.reference
            await spool.store_commands([CommandIntake(dedupe_id=f"survey-{n}", reference=reference, ce_type="survey", data={})])
            [due] = [c for c in await spool.due_commands(now=2**40) if c.reference == reference]
            # As before the column: nobody named.
            await spool.command_done(due.id, [], survey=Survey(survey_id=f"survey-{n}"), survey_channel=via)
    finally:
        await spool.close()
    with sqlite3.connect(path) as old:  # the survey table as it was before it kept whom it asked
        old.executescript("DROP INDEX survey_asked_of; ALTER TABLE survey DROP COLUMN asked_of;")

    spool = Spool(path)
    await spool.open()
    try:
        by_sms = await spool.survey_asked_of("sms:+48601234567", "answer-1")
        by_mail = await spool.survey_asked_of("email:eva@example.com", "answer-2")
        assert by_sms is not None and (by_sms.reference, by_sms.survey.survey_id) == ("C-0000-0001", "survey-1")
        assert by_mail is not None and (by_mail.reference, by_mail.survey.survey_id) == ("C-0000-0002", "survey-2")
        assert await spool.survey_asked_of("whatsapp:+48601234567", "answer-3") is None
    finally:
        await spool.close()
