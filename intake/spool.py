"""The durable spool: raw messages as received, the outbox of events for Kafka, replies to send.

One SQLite file in WAL mode. Every write goes through one writer thread that
commits whatever has queued up in one transaction (group commit): under load
a single fsync covers hundreds of messages, and a caller is told "stored" only
after the commit that holds its message has returned. Reads use their own
connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from intake.errors import SpoolFull, TemporaryFailure

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    key TEXT PRIMARY KEY,            -- channel:channel-message-id, the unit of idempotency
    channel TEXT NOT NULL,
    reference TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,               -- exactly as received
    raw_digest TEXT NOT NULL,
    context TEXT NOT NULL,           -- JSON: what the channel knew besides the raw bytes
    answer TEXT NOT NULL,            -- JSON: what the sender was told, told again on redelivery
    state TEXT NOT NULL              -- accepted | dead_letter
);
CREATE INDEX IF NOT EXISTS message_received ON message (received_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_key TEXT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,           -- JSON list of [name, value]
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reply (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    payload TEXT NOT NULL,           -- JSON: what the channel needs to send it
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS reply_due ON reply (channel, not_before);
CREATE TABLE IF NOT EXISTS cursor (
    name TEXT PRIMARY KEY,           -- a pull channel's durable position (IMAP UID, Telegram offset)
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Event:
    """An event for Kafka, written with the message it came from and published later."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class StoredEvent(Event):
    seq: int = 0
    created_at: float = 0.0


@dataclass(frozen=True)
class Reply:
    """An acknowledgement to deliver on a channel, retried until it goes out."""

    channel: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredReply(Reply):
    id: int = 0
    message_key: str = ""
    attempts: int = 0


@dataclass
class Submission:
    """Everything one received message writes, committed together or not at all."""

    key: str
    channel: str
    reference: str
    raw: bytes
    raw_digest: str
    answer: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    cursor: tuple[str, str] | None = None
    dead_letter: bool = False
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Receipt:
    """What the spool did with a submission; ``answer`` is the first delivery's, even for a duplicate."""

    duplicate: bool
    same_content: bool
    answer: dict[str, Any]


@dataclass(frozen=True)
class SpoolStatus:
    messages: int
    pending_events: int
    pending_bytes: int
    oldest_pending_age: float | None
    pending_replies: int
    dead_letters: int
    capacity_events: int
    capacity_bytes: int

    @property
    def full(self) -> bool:
        return self.pending_events >= self.capacity_events or self.pending_bytes >= self.capacity_bytes


_Op = Callable[[sqlite3.Connection], Any]


def _describe(error: sqlite3.Error) -> str:
    """What went wrong, in the words an operator searches for."""
    name = getattr(error, "sqlite_errorname", "") or type(error).__name__
    if name == "SQLITE_FULL":
        return "disk full"
    if name.startswith("SQLITE_IOERR"):
        return f"disk I/O error ({name})"
    if name.startswith("SQLITE_CORRUPT"):
        return f"the spool file is corrupt ({name})"
    return f"{name}: {error}"


class Spool:
    """The gateway's durable store; see the module docstring for how writes are committed."""

    def __init__(
        self,
        path: Path,
        *,
        max_pending_events: int = 100_000,
        max_pending_bytes: int = 512 * 1024 * 1024,
        synchronous: str = "FULL",
        batch_limit: int = 1000,
    ) -> None:
        self.path = path
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self._synchronous = synchronous
        self._batch_limit = batch_limit
        self._queue: queue.SimpleQueue[tuple[_Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_events = 0
        self._pending_bytes = 0
        self._batch_wrote_events = False
        self.events_written = asyncio.Event()
        self.commits = 0
        # Set in the writer thread or a reader thread, read on the loop: assignments are atomic under the GIL.
        self._write_fault: str | None = None
        self._read_fault: str | None = None
        self._unsettled = False  # a failed batch's rollback or recount is still to be done

    @property
    def fault(self) -> str | None:
        """The spool's last failure, e.g. "disk full", or None while it works.

        A failed commit sets it and the next successful commit clears it; a failed read
        likewise until a read succeeds. A write fault is reported before a read fault."""
        return self._write_fault or self._read_fault

    # --- life -----------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(target=self._write_loop, args=(ready,), name="spool-writer", daemon=True)
        self._writer.start()
        await ready
        try:
            self._reader = self._connect()
            self._recount(self._reader)
        except sqlite3.Error as error:
            self._read_fault = _describe(error)
            await self.close()
            raise TemporaryFailure(f"cannot open the spool: {self._read_fault}") from error
        if self._pending_events:
            self.events_written.set()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    # --- the writer -----------------------------------------------------------

    def _write_loop(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            conn = self._connect()
            conn.executescript(_SCHEMA)
        except sqlite3.Error as error:
            self._write_fault = _describe(error)
            self._loop.call_soon_threadsafe(ready.set_exception, TemporaryFailure(f"cannot open the spool: {self._write_fault}"))
            return
        self._loop.call_soon_threadsafe(ready.set_result, None)
        running = True
        while running:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._batch_limit:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    running = False
                    break
                batch.append(item)
            self._loop.call_soon_threadsafe(self._settle, self._commit(conn, batch))
        conn.close()

    def _settle_connection(self, conn: sqlite3.Connection) -> None:
        """After a failed batch: end its transaction and recount. If that fails too (the disk is
        gone), the writer lives on and the next batch tries again before it begins."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._recount(conn)
        except sqlite3.Error as error:
            self._write_fault = _describe(error)
        else:
            self._unsettled = False

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[_Op, asyncio.Future[Any]]]) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        if self._unsettled:
            self._settle_connection(conn)
        try:
            try:
                outcomes = self._run_batch(conn, batch, isolated=False)
            except Exception:  # some op failed: redo the batch with each op in its own savepoint
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._recount(conn)
                outcomes = self._run_batch(conn, batch, isolated=True)
            self.commits += 1
            self._write_fault = None
        except sqlite3.Error as error:
            self._write_fault = _describe(error)
            self._unsettled = True
            self._settle_connection(conn)
            failure = TemporaryFailure(f"spool write failed: {self._write_fault}")
            return [(future, None, failure) for _, future in batch]
        if self._batch_wrote_events:
            self._batch_wrote_events = False
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.events_written.set)
        return outcomes

    @staticmethod
    def _run_batch(
        conn: sqlite3.Connection, batch: list[tuple[_Op, asyncio.Future[Any]]], *, isolated: bool
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Run every op in one transaction and commit. Not isolated, the first failing op raises
        (the fast path: savepoints cost two statements per op); isolated, each op runs in a
        savepoint, so one bad message fails alone and the rest of its batch commits."""
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        for op, future in batch:
            if not isolated:
                try:
                    outcomes.append((future, op(conn), None))
                except SpoolFull as refusal:  # raised before the op wrote anything: only its caller is refused
                    outcomes.append((future, None, refusal))
                continue
            conn.execute("SAVEPOINT op")
            try:
                result = op(conn)
            except Exception as error:  # the failure is this op's caller's to handle
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if isinstance(error, sqlite3.Error):  # callers handle one type; the batch itself is fine
                    error = TemporaryFailure(f"spool write failed: {_describe(error)}")
                outcomes.append((future, None, error))
            else:
                conn.execute("RELEASE op")
                outcomes.append((future, result, None))
        conn.execute("COMMIT")
        return outcomes

    def _recount(self, conn: sqlite3.Connection) -> None:
        count, size = conn.execute("SELECT count(*), coalesce(sum(length(value)), 0) FROM outbox").fetchone()
        self._pending_events, self._pending_bytes = count, size

    @staticmethod
    def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        for future, result, error in outcomes:
            if future.done():  # the caller went away (cancelled); the write stands
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None or self._loop is None:
            raise TemporaryFailure("the spool is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((op, future))
        # Shielded: a caller that gives up must not undo a write that may already be committed.
        return await asyncio.shield(future)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query on the reader connection in a thread; a failure is a TemporaryFailure and the fault."""

        def run() -> T:
            with self._read_lock:
                if self._reader is None:
                    raise TemporaryFailure("the spool is not open")
                try:
                    result = query(self._reader)
                except sqlite3.Error as error:
                    self._read_fault = _describe(error)
                    raise TemporaryFailure(f"spool read failed: {self._read_fault}") from error
            self._read_fault = None
            return result

        return await asyncio.to_thread(run)

    # --- messages -------------------------------------------------------------

    def _check_capacity(self) -> None:
        if self._pending_events >= self.max_pending_events or self._pending_bytes >= self.max_pending_bytes:
            raise SpoolFull("the spool is full; Kafka is not keeping up")

    def _reserve_pending(self, events: list[Event]) -> None:
        """In the writer, before the op writes: refuse what would take the outbox past its limits.

        The counters already include what earlier ops of the same batch inserted, so checking and
        counting are one step and concurrent submissions cannot overshoot. Raises SpoolFull before
        anything is written, which lets the batch go on without this op. An empty outbox takes any
        one submission, however large, or it could never be taken at all."""
        if not events or self._pending_events == 0:
            return
        size = sum(len(e.value) for e in events)
        if self._pending_events + len(events) > self.max_pending_events or self._pending_bytes + size > self.max_pending_bytes:
            raise SpoolFull("the spool is full; Kafka is not keeping up")

    async def accept(self, submission: Submission) -> Receipt:
        """Store a received message and everything it causes, once; a redelivery returns the first answer.

        Raises SpoolFull when the outbox is at its limits (decided in the writer, so that
        concurrent submissions cannot overshoot them), TemporaryFailure when the write fails."""
        self._check_capacity()  # the cheap early answer while full; the binding check is in the op

        def op(conn: sqlite3.Connection) -> Receipt:
            self._reserve_pending(submission.events)
            inserted = conn.execute(
                "INSERT INTO message (key, channel, reference, received_at, raw, raw_digest, context, answer, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (
                    submission.key,
                    submission.channel,
                    submission.reference,
                    submission.received_at,
                    submission.raw,
                    submission.raw_digest,
                    json.dumps(submission.context),
                    json.dumps(submission.answer),
                    "dead_letter" if submission.dead_letter else "accepted",
                ),
            ).rowcount
            if not inserted:
                row = conn.execute("SELECT raw_digest, answer FROM message WHERE key = ?", (submission.key,)).fetchone()
                if submission.cursor is not None:
                    self._set_cursor(conn, *submission.cursor)
                return Receipt(duplicate=True, same_content=row[0] == submission.raw_digest, answer=json.loads(row[1]))
            for reply in submission.replies:
                conn.execute(
                    "INSERT INTO reply (message_key, channel, payload, not_before) VALUES (?, ?, ?, ?)",
                    (submission.key, reply.channel, json.dumps(reply.payload), 0.0),
                )
            if submission.cursor is not None:
                self._set_cursor(conn, *submission.cursor)
            self._insert_events(conn, submission.key, submission.events)  # last: it counts what cannot roll back
            return Receipt(duplicate=False, same_content=True, answer=submission.answer)

        return await self._write(op)

    def _insert_events(self, conn: sqlite3.Connection, message_key: str | None, events: list[Event]) -> None:
        now = time.time()
        for event in events:
            conn.execute(
                "INSERT INTO outbox (message_key, topic, key, value, headers, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message_key,
                    event.topic,
                    event.key,
                    event.value,
                    json.dumps([[name, value.decode()] for name, value in event.headers]),
                    now,
                ),
            )
        if events:
            # Counted in the writer thread, read on the loop: an int update is atomic under the GIL.
            self._pending_events += len(events)
            self._pending_bytes += sum(len(e.value) for e in events)
            self._batch_wrote_events = True

    async def has_message(self, key: str) -> bool:
        return await self._read(lambda c: c.execute("SELECT 1 FROM message WHERE key = ?", (key,)).fetchone() is not None)

    async def raw_message(self, key: str) -> tuple[bytes, dict[str, Any], str] | None:
        """The raw bytes, channel context and state of a stored message (for replay and inspection)."""

        def query(conn: sqlite3.Connection) -> tuple[bytes, dict[str, Any], str] | None:
            row = conn.execute("SELECT raw, context, state FROM message WHERE key = ?", (key,)).fetchone()
            return None if row is None else (row[0], json.loads(row[1]), row[2])

        return await self._read(query)

    # --- cursors of pull channels ---------------------------------------------

    @staticmethod
    def _set_cursor(conn: sqlite3.Connection, name: str, value: str) -> None:
        conn.execute(
            "INSERT INTO cursor (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    async def set_cursor(self, name: str, value: str) -> None:
        await self._write(lambda conn: self._set_cursor(conn, name, value))

    async def cursor(self, name: str) -> str | None:
        row = await self._read(lambda c: c.execute("SELECT value FROM cursor WHERE name = ?", (name,)).fetchone())
        return None if row is None else row[0]

    # --- the outbox -----------------------------------------------------------

    async def pending_events(self, after_seq: int, limit: int) -> list[StoredEvent]:
        """Unpublished events in the order they were written."""

        def query(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                "SELECT seq, topic, key, value, headers, created_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            return [
                StoredEvent(
                    topic=topic,
                    key=key,
                    value=value,
                    headers=[(name, text.encode()) for name, text in json.loads(headers)],
                    seq=seq,
                    created_at=created_at,
                )
                for seq, topic, key, value, headers, created_at in rows
            ]

        return await self._read(query)

    async def mark_published(self, seqs: list[int]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            placeholders = ",".join("?" * len(seqs))
            size = conn.execute(
                f"SELECT count(*), coalesce(sum(length(value)), 0) FROM outbox WHERE seq IN ({placeholders})", seqs
            ).fetchone()
            conn.execute(f"DELETE FROM outbox WHERE seq IN ({placeholders})", seqs)
            self._pending_events -= size[0]
            self._pending_bytes -= size[1]

        if seqs:
            await self._write(op)

    # --- replies --------------------------------------------------------------

    async def due_replies(self, channel: str, now: float, limit: int = 100) -> list[StoredReply]:
        def query(conn: sqlite3.Connection) -> list[StoredReply]:
            rows = conn.execute(
                "SELECT id, message_key, channel, payload, attempts FROM reply"
                " WHERE channel = ? AND not_before <= ? ORDER BY id LIMIT ?",
                (channel, now, limit),
            ).fetchall()
            return [
                StoredReply(channel=ch, payload=json.loads(payload), id=rid, message_key=key, attempts=attempts)
                for rid, key, ch, payload, attempts in rows
            ]

        return await self._read(query)

    async def reply_sent(self, reply_id: int, events: list[Event]) -> None:
        """The reply went out: forget it and record that it did, in one transaction."""

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT message_key FROM reply WHERE id = ?", (reply_id,)).fetchone()
            conn.execute("DELETE FROM reply WHERE id = ?", (reply_id,))
            self._insert_events(conn, row[0] if row else None, events)

        await self._write(op)

    async def reply_failed(self, reply_id: int, *, retry_at: float | None, error: str) -> None:
        """Try again at ``retry_at``; None gives up (the failure is recorded as an event by the caller)."""

        def op(conn: sqlite3.Connection) -> None:
            if retry_at is None:
                conn.execute("DELETE FROM reply WHERE id = ?", (reply_id,))
            else:
                conn.execute(
                    "UPDATE reply SET attempts = attempts + 1, not_before = ?, last_error = ? WHERE id = ?",
                    (retry_at, error[:500], reply_id),
                )

        await self._write(op)

    # --- housekeeping ---------------------------------------------------------

    async def prune(self, older_than: float) -> int:
        """Forget raw messages past retention whose events and replies are all done; dead letters stay."""

        def op(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM message WHERE received_at < ? AND state = 'accepted'"
                " AND key NOT IN (SELECT message_key FROM outbox WHERE message_key IS NOT NULL)"
                " AND key NOT IN (SELECT message_key FROM reply)",
                (older_than,),
            )
            return cursor.rowcount

        return await self._write(op)

    @property
    def pending_events_count(self) -> int:
        return self._pending_events

    @property
    def pending_bytes_count(self) -> int:
        return self._pending_bytes

    def is_full(self) -> bool:
        try:
            self._check_capacity()
        except SpoolFull:
            return True
        return False

    async def status(self) -> SpoolStatus:
        def query(conn: sqlite3.Connection) -> SpoolStatus:
            messages = conn.execute("SELECT count(*) FROM message").fetchone()[0]
            dead = conn.execute("SELECT count(*) FROM message WHERE state = 'dead_letter'").fetchone()[0]
            events, size = conn.execute("SELECT count(*), coalesce(sum(length(value)), 0) FROM outbox").fetchone()
            oldest = conn.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
            replies = conn.execute("SELECT count(*) FROM reply").fetchone()[0]
            return SpoolStatus(
                messages=messages,
                pending_events=events,
                pending_bytes=size,
                oldest_pending_age=None if oldest is None else max(0.0, time.time() - oldest[0]),
                pending_replies=replies,
                dead_letters=dead,
                capacity_events=self.max_pending_events,
                capacity_bytes=self.max_pending_bytes,
            )

        return await self._read(query)
