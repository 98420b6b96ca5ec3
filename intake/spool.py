"""The durable spool: raw messages as received, the outbox of events for Kafka, replies to send.

One SQLite file in WAL mode. Every write goes through one writer thread that
commits whatever has queued up in one transaction (group commit): under load
a single fsync covers hundreds of messages, and a caller is told "stored" only
after the commit that holds its message has returned. Reads use their own
connection, which WAL lets run beside the writer.

The outbox keeps one row per message (or per reply sent) however many events
it causes, framed in one blob (``_encode_events``). What a commit adds to it
is also handed to the publisher in memory (``take_events``), so the fast path
never reads its own writes back; the rows on disk are for what memory cannot
hold: a restart, a failed send, a backlog while Kafka is away.

The inbox holds raw messages stored before they are normalised (SMTP: the 250
is said once the mail is durable, as Postfix's queue does). Normalising one
writes its message row, events and reply and deletes it from the inbox in one
transaction, so a crash in between normalises it again after the restart.
Inbox messages count as pending events (one each, their raw bytes) against
the outbox's limits: they are what Kafka has not got yet.

Its size on disk is bounded by ``max_total_bytes`` and by what the disk has
free, whichever is smaller. Near the bound, the oldest raw messages whose
events are published and replies sent give way, even inside retention;
acceptance is refused (SpoolFull) only when nothing can. Beside the file lies
a reserve (``<path>-reserve``, 4 MiB): a disk that fills up under the spool
(another tenant, a log) costs it that file, not the ability to publish: when
a write finds the disk full, the reserve is deleted so that SQLite can finish
its checkpoint and events can be marked published, and it is made again once
the disk has room.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import queue
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from intake.errors import SpoolFull, TemporaryFailure
from intake.twoway import AskedSurvey, Feedback, Route, StatusView, Survey, reply_address

if TYPE_CHECKING:
    from intake.config import SpoolConfig

log = logging.getLogger("intake.spool")

MiB = 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 2048 * MiB

# What a row costs beyond its values (cell header, rowid, index entries), roughly. Only the
# writes of the current batch are estimated with it; every batch starts from measured pages.
_ROW_OVERHEAD = 64
# SQLite's shared-memory file beside the WAL: 32 KiB per 4 096 WAL frames.
_SHM_BYTES = 32 * 1024

T = TypeVar("T")

_OUTBOX = """CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_key TEXT,
    events INTEGER NOT NULL,         -- how many events the row carries, published in this order
    bytes INTEGER NOT NULL,          -- the sum of their values' sizes, as max_pending_bytes counts them
    body BLOB NOT NULL,              -- the events, framed by _encode_events
    created_at REAL NOT NULL
)"""

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
    state TEXT NOT NULL              -- accepted | dead_letter | replayed (a dead letter stored again under another key)
);
CREATE INDEX IF NOT EXISTS message_received ON message (received_at);
{outbox};
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
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,               -- exactly as received, not yet normalised
    context TEXT NOT NULL,           -- JSON: what the channel needs to normalise it
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS cursor (
    name TEXT PRIMARY KEY,           -- a pull channel's durable position (IMAP UID, Telegram offset)
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversation (
    reference TEXT PRIMARY KEY,      -- the complaint's; commands name it
    channel TEXT NOT NULL,
    address TEXT NOT NULL,           -- JSON: how to write to the complainant on the channel (personal data)
    locale TEXT NOT NULL,
    contacts TEXT NOT NULL,          -- JSON: other ways they gave (personal data)
    created_at REAL NOT NULL,
    last_inbound_at REAL NOT NULL,
    status TEXT,                     -- the latest status delivered to them, NULL: still "received"
    status_text TEXT,
    status_at REAL
);
CREATE INDEX IF NOT EXISTS conversation_inbound ON conversation (last_inbound_at);
CREATE TABLE IF NOT EXISTS command (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order they were consumed in: delivered in it per reference
    ce_id TEXT NOT NULL UNIQUE,      -- the command's ce_id (or where a command without one was read): idempotency
    reference TEXT,
    ce_type TEXT,
    data TEXT NOT NULL,              -- JSON: the validated command
    state TEXT NOT NULL,             -- pending | delivered | failed | rejected
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    received_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS command_pending ON command (state, reference, id);
CREATE TABLE IF NOT EXISTS survey (
    survey_id TEXT PRIMARY KEY,      -- the survey command's ce_id
    reference TEXT NOT NULL,
    channel TEXT NOT NULL,           -- where it was asked
    nps INTEGER NOT NULL,
    comment INTEGER NOT NULL,
    asked_at REAL NOT NULL,
    answered_at REAL,                -- the first answer
    score_at REAL,
    nps_at REAL,
    comment_at REAL,
    asked_of TEXT                    -- whom (intake.twoway.reply_address, personal data): a bare score from them answers it
);
CREATE INDEX IF NOT EXISTS survey_reference ON survey (reference, asked_at);
CREATE INDEX IF NOT EXISTS survey_asked_of ON survey (asked_of, asked_at);
CREATE TABLE IF NOT EXISTS feedback (
    survey_id TEXT NOT NULL,
    answer_id TEXT NOT NULL,         -- the channel's id of the answer: a redelivery counts once
    received_at REAL NOT NULL,
    PRIMARY KEY (survey_id, answer_id)
);
CREATE TABLE IF NOT EXISTS message_group (
    name TEXT PRIMARY KEY,           -- messages sent as one (a Telegram album: bot, chat and media_group_id)
    reference TEXT NOT NULL,         -- what the first of them to be stored became; the others follow it up
    at REAL NOT NULL
);
""".format(outbox=_OUTBOX)


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
class _Row:
    """One outbox row as committed, kept in memory for the publisher."""

    seq: int
    events: list[Event]
    size: int
    created_at: float


# A row's body: a format byte, then per event a frame (topic, key and value lengths, header
# count), the three, then per header its name's and value's lengths and the two. Cheaper to
# write than JSON (values and header values are bytes), and read back only after a restart.
_FORMAT = b"\x01"
_EVENT_FRAME = struct.Struct(">HIIH")
_HEADER_FRAME = struct.Struct(">HI")


def _encode_events(events: list[Event]) -> bytes:
    parts = [_FORMAT]
    for event in events:
        topic = event.topic.encode()
        parts += (_EVENT_FRAME.pack(len(topic), len(event.key), len(event.value), len(event.headers)), topic, event.key, event.value)
        for name, value in event.headers:
            encoded = name.encode()
            parts += (_HEADER_FRAME.pack(len(encoded), len(value)), encoded, value)
    return b"".join(parts)


def _decode_events(body: bytes) -> list[Event]:
    if body[:1] != _FORMAT:
        raise ValueError(f"outbox row in an unknown format {body[:1]!r}")
    events, at = [], 1
    while at < len(body):
        topic_size, key_size, value_size, count = _EVENT_FRAME.unpack_from(body, at)
        at += _EVENT_FRAME.size
        topic = body[at : at + topic_size].decode()
        at += topic_size
        key = body[at : at + key_size]
        at += key_size
        value = body[at : at + value_size]
        at += value_size
        headers = []
        for _ in range(count):
            name_size, header_size = _HEADER_FRAME.unpack_from(body, at)
            at += _HEADER_FRAME.size
            name = body[at : at + name_size].decode()
            at += name_size
            headers.append((name, body[at : at + header_size]))
            at += header_size
        events.append(Event(topic=topic, key=key, value=value, headers=headers))
    return events


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


@dataclass(frozen=True)
class InboxMessage:
    """A raw message taken in and not yet normalised."""

    id: int
    channel: str
    received_at: float
    raw: bytes
    context: dict[str, Any]
    attempts: int


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
    inbox_id: int | None = None  # the inbox message this normalises, deleted in the same transaction
    replaces: str | None = None  # the key of the dead letter this replays (``intake spool dead-letters replay``)
    route: Route | None = None  # a new complaint's: how to reach its complainant, kept for commands
    follows_up: FollowUp | None = None  # a follow-up's news for the conversation it belongs to
    feedback: Feedback | None = None  # a survey answer the message carried (see intake.twoway.Interception)
    group: str | None = None  # the group of messages sent as one that this message opens (intake.reception.Reception.receive)


@dataclass(frozen=True)
class FollowUp:
    """What a follow-up changes in the conversation of the complaint it follows, if that one is known here."""

    reference: str
    channel: str
    at: float
    address: dict[str, Any] | None = None  # email / Telegram: thread later messages under this newest one


@dataclass(frozen=True)
class StoredCommand:
    """A command waiting to be delivered."""

    id: int
    ce_id: str
    reference: str
    ce_type: str
    data: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class CommandIntake:
    """One record from the outbound topic, for ``store_commands``: a valid command, or why it is refused.

    ``dedupe_id`` is its ce_id (or, without one, where it was read): a record seen again is stored once.
    A valid command for a reference with no conversation here is refused in the same transaction,
    with ``unknown_reference`` built by the caller, unless the caller found its ``route`` in another spool."""

    dedupe_id: str
    reference: str | None
    ce_type: str | None
    data: dict[str, Any] | None  # None: refused
    rejection: Event | None = None  # the dead-letter event for a refused one
    unknown_reference: Event | None = None  # the dead-letter event should the reference be unknown
    route: Route | None = None  # the route another worker's spool holds for the reference, when this one has none


@dataclass(frozen=True)
class Receipt:
    """What the spool did with a submission; ``answer`` is the first delivery's, even for a duplicate."""

    duplicate: bool
    same_content: bool
    answer: dict[str, Any]


# --- conversation queries, shared with intake.conversations (which runs them on other workers' spools too) ----


@dataclass(frozen=True)
class RouteRow:
    route: Route
    created_at: float


@dataclass(frozen=True)
class SurveyRow:
    """A survey as one spool holds it; ``*_at``: when that part was answered there (None: not there)."""

    survey_id: str
    reference: str
    channel: str
    nps: bool
    comment: bool
    asked_at: float
    score_at: float | None
    nps_at: float | None
    comment_at: float | None


def route_row(conn: sqlite3.Connection, reference: str) -> RouteRow | None:
    row = conn.execute(
        "SELECT channel, address, locale, last_inbound_at, contacts, created_at FROM conversation WHERE reference = ?", (reference,)
    ).fetchone()
    if row is None:
        return None
    route = Route(channel=row[0], address=json.loads(row[1]), locale=row[2], last_inbound_at=row[3], contacts=json.loads(row[4]))
    return RouteRow(route=route, created_at=row[5])


def group_reference(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT reference FROM message_group WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def status_view(conn: sqlite3.Connection, reference: str) -> StatusView | None:
    row = conn.execute("SELECT status, status_text, status_at FROM conversation WHERE reference = ?", (reference,)).fetchone()
    if row is None or row[0] is None:
        return None
    return StatusView(reference=reference, status=row[0], text=row[1], updated_at=row[2])


_SURVEY_ROW = "survey_id, reference, channel, nps, comment, asked_at, score_at, nps_at, comment_at"


def _survey_row(r: tuple[Any, ...]) -> SurveyRow:
    return SurveyRow(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5], r[6], r[7], r[8])


def survey_rows(conn: sqlite3.Connection, reference: str) -> list[SurveyRow]:
    rows = conn.execute(f"SELECT {_SURVEY_ROW} FROM survey WHERE reference = ?", (reference,)).fetchall()
    return [_survey_row(r) for r in rows]


def surveys_asked_of(conn: sqlite3.Connection, asked_of: str) -> list[SurveyRow]:
    """The surveys this spool asked of ``asked_of`` (intake.twoway.reply_address), answered or not."""
    return [_survey_row(r) for r in conn.execute(f"SELECT {_SURVEY_ROW} FROM survey WHERE asked_of = ?", (asked_of,)).fetchall()]


def answers_given(conn: sqlite3.Connection, survey_ids: list[str], answer_id: str) -> set[str]:
    """Which of ``survey_ids`` this spool recorded the answer ``answer_id`` for."""
    return {survey_id for survey_id in survey_ids if answer_seen(conn, survey_id, answer_id)}


def answer_seen(conn: sqlite3.Connection, survey_id: str, answer_id: str) -> bool:
    return conn.execute("SELECT 1 FROM feedback WHERE survey_id = ? AND answer_id = ?", (survey_id, answer_id)).fetchone() is not None


def open_survey_of(rows: list[SurveyRow]) -> Survey | None:
    """The newest survey asked, with what is still to be answered, from its rows in one spool or several."""
    if not rows:
        return None
    newest = max(rows, key=lambda row: row.asked_at).survey_id
    mine = [row for row in rows if row.survey_id == newest]
    # What was asked is the asking spool's row; rows without a channel only record answers given on another worker.
    asked = next((row for row in mine if row.channel), mine[0])
    scored = any(row.score_at is not None for row in mine)
    nps = asked.nps and all(row.nps_at is None for row in mine)
    comment = asked.comment and all(row.comment_at is None for row in mine)
    if scored and not nps and not comment:
        return None
    return Survey(survey_id=newest, nps=nps, comment=comment)


def awaiting_score(asked: list[SurveyRow], rows: list[SurveyRow], answered: set[str]) -> AskedSurvey | None:
    """Of the surveys ``asked`` of one person, the newest whose score is still to be given, from one spool or several.

    ``rows``: every row of those complaints' surveys, answers given on other workers included; a complaint
    surveyed again counts with its newest survey only. ``answered``: the surveys the answer being looked at
    was recorded for, anywhere: that one is a redelivery and still finds its survey, marked ``answered``.
    """
    of_complaint: dict[str, list[SurveyRow]] = {}
    for row in [*asked, *rows]:
        of_complaint.setdefault(row.reference, []).append(row)
    for candidate in sorted(asked, key=lambda row: row.asked_at, reverse=True):
        # Asked rows only: an answer-only row's asked_at is when it was answered, which says nothing of what was asked last.
        newest = max((row for row in of_complaint[candidate.reference] if row.channel), key=lambda row: row.asked_at)
        if newest.survey_id != candidate.survey_id:
            continue
        mine = [row for row in of_complaint[candidate.reference] if row.survey_id == candidate.survey_id]
        again = candidate.survey_id in answered
        if not again and any(row.score_at is not None for row in mine):
            continue
        nps = candidate.nps and all(row.nps_at is None for row in mine)
        comment = candidate.comment and all(row.comment_at is None for row in mine)
        return AskedSurvey(
            candidate.reference, Survey(survey_id=candidate.survey_id, nps=nps, comment=comment), answered=again, asked_at=candidate.asked_at
        )
    return None


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
    total_bytes: int = 0  # the spool on disk by its own count: used pages, the WAL, the reserve
    capacity_total_bytes: int = 0
    dead_letter_bytes: int = 0
    oldest_message_age: float | None = None  # the retention actually kept, when the bound made it shorter
    refusing: str | None = None  # why complaints are refused for want of room, if they are
    fault: str | None = None
    to_normalise: int = 0  # raw messages in the inbox (counted in ``messages`` too)
    pending_commands: int = 0  # outbound commands stored and not yet delivered (or given up on)
    conversations: int = 0  # complaints whose complainants commands can reach

    @property
    def full(self) -> bool:
        return (
            self.pending_events >= self.capacity_events
            or self.pending_bytes >= self.capacity_bytes
            or self.refusing is not None
        )


@dataclass(frozen=True)
class _Usage:
    """The spool's file as measured in the writer at the start of a batch."""

    used: int  # bytes in pages that hold data
    free_pages: int  # bytes in free pages inside the file, reused before it grows
    growth: int  # bytes the file still grows by when the WAL is checkpointed into it
    wal: int  # the WAL file's size
    disk_free: int  # what the filesystem has left for an unprivileged writer


@dataclass
class _Job:
    op: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    size: int = 0  # bytes it is expected to add; cuts batches, so that one commit stays bounded
    # Whether the write must survive a power cut once committed (synchronous as configured). A write whose loss there
    # only repeats work already done (forgetting events Kafka has: they are sent again, same ce_id) need not wait for
    # the disk (synchronous=NORMAL in WAL: still atomic, still durable when only the process dies).
    lasting: bool = True


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


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


def _disk_is_full(error: sqlite3.Error) -> bool:
    # SQLITE_FULL from a write or the checkpoint's growth; SHMSIZE when the shared-memory file cannot grow.
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE")


class Spool:
    """The gateway's durable store; see the module docstring for how writes are committed and bounded."""


    def __init__(
        self,
        path: Path,
        *,
        max_pending_events: int = 100_000,
        max_pending_bytes: int = 512 * MiB,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        synchronous: str = "FULL",
        batch_limit: int = 1000,
        batch_bytes: int = 1 * MiB,
        reserve_bytes: int = 4 * MiB,
        memory_rows: int = 4000,
        memory_bytes: int = 16 * MiB,
    ) -> None:
        self.path = path
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self.max_total_bytes = max_total_bytes
        self._synchronous = synchronous
        self._sync_now = synchronous  # what the writer connection is set to now (intake.spool._Job.lasting)
        self._batch_limit = batch_limit
        # A batch stops taking jobs at about this many bytes: the WAL, and the file's growth
        # between checkpoints, stay within what the reserve and the accounting allow for.
        self._batch_bytes = batch_bytes
        self._reserve_bytes = reserve_bytes
        self._reserve_path = path.with_name(path.name + "-reserve")
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_events = 0
        self._pending_bytes = 0
        # Outbox rows committed and not yet taken by the publisher, in seq order. Every committed
        # row from seq _memory_from on is here or has been taken; older ones are read from disk.
        # Bounded: past memory_rows or memory_bytes (Kafka away) it is emptied and the disk serves.
        self._fresh: deque[_Row] = deque()
        self._fresh_bytes = 0
        self._memory_from = 1
        self._memory_rows = memory_rows
        self._memory_bytes = memory_bytes
        self.events_written = asyncio.Event()
        self.inbox_written = asyncio.Event()
        # When a raw message was last handed in to be stored (time.monotonic): the normaliser yields to a burst.
        self.taken_in_at = 0.0
        self.commands_written = asyncio.Event()
        self.commits = 0
        self.pruned_early = 0  # raw messages pruned inside retention to make room
        # Set in the writer thread or a reader thread, read on the loop: assignments are atomic under the GIL.
        self._write_fault: str | None = None
        self._read_fault: str | None = None
        self._disk_full: str | None = None  # set while the reserve is spent: only writes that drain are taken
        self._refusing: str | None = None  # why the last complaint was refused for room; cleared by what frees
        self._unsettled = False  # a failed batch's rollback or recount is still to be done
        # Writer thread only.
        self._page_size = 4096
        self._wal_cap = 0
        self._room: int | None = None  # bytes the current batch may still add; measured when first needed
        self._room_bound = "max_total_bytes"  # what bounds it: max_total_bytes or the disk
        self._checkpoint_due = False
        self._batch_rows: list[_Row] = []  # outbox rows the batch in progress inserted
        self._batch_took_in = False  # the batch in progress added to the inbox
        self._data_version: int | None = None  # the file's as the writer last counted it; other processes move it

    @classmethod
    def from_config(cls, config: SpoolConfig) -> Spool:
        """The spool the ``[spool]`` section describes."""
        return cls(
            config.path,
            max_pending_events=config.max_pending_events,
            max_pending_bytes=config.max_pending_bytes,
            max_total_bytes=config.max_total_bytes,
            synchronous=config.synchronous,
        )

    @property
    def fault(self) -> str | None:
        """The spool's last failure, e.g. "disk full", or None while it works.

        A failed commit sets it and the next successful commit clears it; a failed read
        likewise until a read succeeds. A disk that filled up under the spool shows here
        ("disk full: ...") until the spool has its reserve again, even while the writes that
        drain it (marking events published, pruning) succeed."""
        return self._write_fault or self._disk_full or self._read_fault

    # --- life -----------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fresh.clear()  # a spool opened again: what it held is on disk
        self._fresh_bytes = 0
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
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # the first statement to touch the disk: fails there when full
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            # Debian builds SQLite with secure_delete on: every freed page is zeroed through the WAL,
            # so deleting a 90 kB message writes 90 kB, and deleting needs free disk. FAST zeroes
            # what it can in place; freed overflow pages keep their bytes until they are reused,
            # which in a spool that keeps filling is soon.
            conn.execute("PRAGMA secure_delete=FAST")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            self._migrate(conn)
            self._migrate_surveys(conn)
            conn.executescript(_SCHEMA)
            self._memory_from = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM outbox").fetchone()[0]
            self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            autocheckpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            # The WAL is checkpointed at `autocheckpoint` pages, after the commit that crossed it.
            self._wal_cap = autocheckpoint * self._page_size + self._batch_bytes
            # Kept at that size, not truncated to nothing: its pages are where the next
            # transactions go without asking the disk for more.
            conn.execute(f"PRAGMA journal_size_limit={self._wal_cap}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """A spool written before events were framed per row: its pending events move, in order,
        into one row each of the current outbox, in one transaction."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        if "value" not in columns:
            return
        conn.execute("BEGIN IMMEDIATE")  # DDL is transactional in SQLite: a crash midway leaves the old table
        try:
            conn.execute("ALTER TABLE outbox RENAME TO outbox_v0")
            conn.execute(_OUTBOX)
            rows = conn.execute("SELECT seq, message_key, topic, key, value, headers, created_at FROM outbox_v0 ORDER BY seq").fetchall()
            for seq, message_key, topic, key, value, headers, created_at in rows:
                event = Event(topic=topic, key=key, value=value, headers=[(n, v.encode()) for n, v in json.loads(headers)])
                conn.execute(
                    "INSERT INTO outbox (seq, message_key, events, bytes, body, created_at) VALUES (?, ?, 1, ?, ?, ?)",
                    (seq, message_key, len(value), _encode_events([event]), created_at),
                )
            conn.execute("DROP TABLE outbox_v0")
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        log.info("spool outbox moved to one row per message", extra={"event": "spool_migrated", "events": len(rows)})

    @staticmethod
    def _migrate_surveys(conn: sqlite3.Connection) -> None:
        """A spool written before surveys kept whom they asked: the column, filled in for the surveys it holds from
        the address or contact each was sent to (as intake.delivery chose it), in one transaction."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(survey)")}
        if not columns or "asked_of" in columns:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE survey ADD COLUMN asked_of TEXT")
            rows = conn.execute(
                "SELECT survey.survey_id, survey.channel, conversation.channel, conversation.address, conversation.contacts"
                " FROM survey JOIN conversation USING (reference) WHERE survey.channel != ''"
            ).fetchall()
            filled = 0
            for survey_id, via, own, address, contacts in rows:
                if via == own or {via, own} <= {"sms", "mms"}:
                    to = json.loads(address).get("chat_id" if via == "telegram" else "to")
                else:  # sent to a contact the complainant gave
                    to = json.loads(contacts).get("email" if via == "email" else "phone")
                asked_of = reply_address(via, to)
                if asked_of is not None:
                    conn.execute("UPDATE survey SET asked_of = ? WHERE survey_id = ?", (asked_of, survey_id))
                    filled += 1
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        log.info("spool surveys now know whom they asked", extra={"event": "spool_migrated", "surveys": filled})

    # --- the reserve ----------------------------------------------------------

    def _keep_reserve(self) -> bool:
        """Have the reserve file at its size; False when the disk has no room for it."""
        if self._reserve_bytes == 0:
            return True
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < self._reserve_bytes:
                    os.posix_fallocate(fd, 0, self._reserve_bytes)  # blocks allocated, not a sparse file
            finally:
                os.close(fd)
        except OSError as error:
            self._reserve_path.unlink(missing_ok=True)  # a part of it would only take space
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            # Not a full disk but a filesystem that will not have it: go on without, rather than
            # refuse every complaint for want of a file.
            log.warning(
                "cannot make the spool's disk reserve; going on without one",
                extra={"event": "spool_reserve_failed", "path": str(self._reserve_path), "error": str(error)},
            )
            self._reserve_bytes = 0
        return True

    def _release_reserve(self) -> bool:
        """Give the reserve's space back to the disk; False if there was none to give."""
        try:
            self._reserve_path.unlink()
        except FileNotFoundError:
            return False
        return True

    # --- the writer -----------------------------------------------------------

    def _write_loop(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        has_reserve = self._keep_reserve()
        try:
            try:
                conn = self._open_writer()
            except sqlite3.Error as error:
                # On a full disk SQLite cannot even make its shared-memory file: the reserve is for this.
                if not (_disk_is_full(error) and self._release_reserve()):
                    raise
                has_reserve = False
                conn = self._open_writer()
        except sqlite3.Error as error:
            self._write_fault = _describe(error)
            self._loop.call_soon_threadsafe(ready.set_exception, TemporaryFailure(f"cannot open the spool: {self._write_fault}"))
            return
        if not has_reserve:
            self._disk_full = "disk full: the spool has no reserve left; it publishes but refuses complaints until the disk has room"
        self._sync_now = self._synchronous
        self._loop.call_soon_threadsafe(ready.set_result, None)
        running = True
        while running:
            job = self._queue.get()
            if job is None:
                break
            batch = [job]
            size = job.size
            while len(batch) < self._batch_limit and size < self._batch_bytes:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    running = False
                    break
                batch.append(job)
                size += job.size
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

    def _before_batch(self, conn: sqlite3.Connection) -> None:
        """Outside any transaction: make the reserve again once there is room, checkpoint if due."""
        if self._unsettled:
            self._settle_connection(conn)
        if self._disk_full is not None:
            usage = self._usage(conn)
            margin = usage.growth + max(0, self._wal_cap - usage.wal) + self._batch_bytes
            if usage.disk_free >= self._reserve_bytes + margin and self._keep_reserve():
                self._disk_full = None
                log.info("the disk has room again; the spool has its reserve back", extra={"event": "spool_disk_room"})
        if self._checkpoint_due:
            self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:
            if _disk_is_full(error):
                self._on_disk_full(conn)
            else:
                self._write_fault = _describe(error)
            return
        self._checkpoint_due = bool(busy) or done < frames  # a reader held it back: try again next batch

    def _on_disk_full(self, conn: sqlite3.Connection) -> None:
        """A write found the disk full: spend the reserve so that the WAL can be checkpointed
        (the file grows by the pages only the WAL holds) and what drains the spool can commit."""
        self._disk_full = "disk full: the spool has spent its reserve; it publishes but refuses complaints until the disk has room"
        if not self._release_reserve():
            return
        log.warning(
            "the disk is full; the spool released its reserve so that publishing goes on",
            extra={"event": "spool_disk_full", "path": str(self.path)},
        )
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as error:  # the reserve was not enough; the drain's own retry will tell
            self._write_fault = _describe(error)
            self._checkpoint_due = True

    def _sync_for(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        """Outside a transaction: fsync at commit unless nothing in the batch needs it. A later commit's fsync of
        the WAL makes the frames of an earlier unsynced one durable too, so the order of what lasts is kept."""
        relaxed = self._synchronous.upper() in ("FULL", "EXTRA") and not any(job.lasting for job in batch)
        wanted = "NORMAL" if relaxed else self._synchronous
        if wanted != self._sync_now:
            conn.execute(f"PRAGMA synchronous={wanted}")
            self._sync_now = wanted

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
        self._before_batch(conn)
        try:
            self._sync_for(conn, batch)
            try:
                outcomes = self._run_batch(conn, batch, isolated=False)
            except Exception as error:  # some op failed: redo the batch with each op in its own savepoint
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._recount(conn)
                if isinstance(error, sqlite3.Error) and _disk_is_full(error):
                    self._on_disk_full(conn)  # from here on, complaints in the batch are refused
                outcomes = self._run_batch(conn, batch, isolated=True)
            self.commits += 1
            self._write_fault = None
        except sqlite3.Error as error:
            self._write_fault = _describe(error)
            if _disk_is_full(error) and self._disk_full is None:
                self._disk_full = "disk full: the spool refuses complaints until the disk has room"
            self._unsettled = True
            self._settle_connection(conn)
            failure = TemporaryFailure(f"spool write failed: {self._write_fault}")
            if not _disk_is_full(error):
                return [(job.future, None, failure) for job in batch]
            # A complaint refused for a full disk is a full spool to its sender; a drain just failed.
            refusal = SpoolFull(f"spool write failed: {self._write_fault}")
            return [(job.future, None, refusal if job.size else failure) for job in batch]
        if self._batch_took_in:
            self._batch_took_in = False
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.inbox_written.set)
        if self._batch_rows:
            assert self._loop is not None
            # Queued before the batch's outcomes: a caller told "stored" finds its events already handed over.
            self._loop.call_soon_threadsafe(self._hand_over, self._batch_rows)
            self._batch_rows = []
        return outcomes

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job], *, isolated: bool) -> list[_Outcome]:
        """Run every op in one transaction and commit. Not isolated, the first failing op raises
        (the fast path: savepoints cost two statements per op); isolated, each op runs in a
        savepoint, so one bad message fails alone and the rest of its batch commits."""
        outcomes: list[_Outcome] = []
        conn.execute("BEGIN IMMEDIATE")
        self._room = None
        self._batch_rows = []
        self._batch_took_in = False
        for job in batch:
            if not isolated:
                try:
                    outcomes.append((job.future, job.op(conn), None))
                except SpoolFull as refusal:  # raised before the op wrote anything of its own: only its caller is refused
                    outcomes.append((job.future, None, refusal))
                continue
            room, rows = self._room, len(self._batch_rows)
            conn.execute("SAVEPOINT op")
            try:
                result = job.op(conn)
            except Exception as error:  # the failure is this op's caller's to handle
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                self._room = room  # what the op pruned was rolled back with it
                del self._batch_rows[rows:]
                if isinstance(error, sqlite3.Error):  # callers handle one type; the batch itself is fine
                    error = TemporaryFailure(f"spool write failed: {_describe(error)}")
                outcomes.append((job.future, None, error))
            else:
                conn.execute("RELEASE op")
                outcomes.append((job.future, result, None))
        conn.execute("COMMIT")
        return outcomes

    def _recount(self, conn: sqlite3.Connection) -> None:
        count, size = conn.execute("SELECT coalesce(sum(events), 0), coalesce(sum(bytes), 0) FROM outbox").fetchone()
        waiting, raw = conn.execute("SELECT count(*), coalesce(sum(length(raw)), 0) FROM inbox").fetchone()
        self._pending_events, self._pending_bytes = count + waiting, size + raw
        self._batch_rows = []  # a failed batch's rows were rolled back with it

    @staticmethod
    def _settle(outcomes: list[_Outcome]) -> None:
        for future, result, error in outcomes:
            if future.done():  # the caller went away (cancelled); the write stands
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def _write(self, op: Callable[[sqlite3.Connection], T], *, size: int = 0, lasting: bool = True) -> T:
        """Queue an op for the writer. ``size`` is what it may add; ops with a size are the ones
        refused while the disk is full, the others (those that drain the spool) go on. ``lasting``
        False: its commit need not survive a power cut (see ``_Job.lasting``)."""
        if self._writer is None or self._loop is None:
            raise TemporaryFailure("the spool is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(op, future, size, lasting))
        # Not shielded: a caller that gives up cancels only its future. The op stays queued and
        # commits all the same (its outcome is then dropped), so nothing written is undone.
        return await future

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

    # --- room on disk ---------------------------------------------------------

    def _usage(self, conn: sqlite3.Connection) -> _Usage:
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        free_count = conn.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            wal = os.stat(self.path.with_name(self.path.name + "-wal")).st_size
        except FileNotFoundError:
            wal = 0
        disk = os.statvfs(self.path.parent)
        return _Usage(
            used=(page_count - free_count) * self._page_size,
            free_pages=free_count * self._page_size,
            growth=max(0, page_count * self._page_size - os.stat(self.path).st_size),
            wal=wal,
            disk_free=disk.f_bavail * disk.f_frsize,
        )

    def _total(self, usage: _Usage) -> int:
        """The spool on disk by its own count. The WAL counts at the size it grows to, whatever it is now."""
        return usage.used + max(usage.wal, self._wal_cap) + _SHM_BYTES + self._reserve_bytes

    def _room_in(self, usage: _Usage) -> tuple[int, str]:
        """Bytes the spool may still add, and what bounds them: max_total_bytes or the disk."""
        by_bound = self.max_total_bytes - self._total(usage)
        # New pages go into free pages first, then grow the file, which the disk must hold beside the
        # WAL growing to its size; one batch's worth is kept back for what the estimates miss.
        by_disk = (
            usage.free_pages
            + usage.disk_free
            - usage.growth
            - max(0, self._wal_cap - usage.wal)
            - self._batch_bytes
        )
        # A growing file is checkpointed before its growth outgrows the reserve, which must be able
        # to cover it should the disk fill up under the spool.
        self._checkpoint_due = self._checkpoint_due or (self._reserve_bytes > 0 and usage.growth > self._reserve_bytes // 2)
        return (by_bound, "max_total_bytes") if by_bound <= by_disk else (by_disk, "the disk")

    def _make_room(self, conn: sqlite3.Connection, need: int) -> None:
        """In the writer, before a complaint is written: find ``need`` bytes, pruning early if it must.

        Raises SpoolFull when nothing can give way. What was pruned stays pruned, which is why the
        fast path may go on after the refusal."""
        if self._disk_full is not None:
            raise SpoolFull(self._disk_full)
        if self._room is None:
            self._room, self._room_bound = self._room_in(self._usage(conn))
        if need <= self._room:
            self._room -= need
            self._refusing = None
            return
        if self._refusing is None:  # while refusing, nothing became prunable: do not search again
            self._room += self._prune_oldest(conn, need - self._room + self._batch_bytes)
            if need <= self._room:
                self._room -= need
                return
            self._refusing = self._why_full(conn, self._room_bound)
        raise SpoolFull(self._refusing)

    def _prune_oldest(self, conn: sqlite3.Connection, target: int) -> int:
        """Delete the oldest raw messages that are done with (events published, replies sent, not a
        dead letter) until about ``target`` bytes are free; return the bytes freed."""
        freed = 0
        while freed < target:
            rows = conn.execute(
                "SELECT key, length(raw) + length(context) + length(answer) + 2 * length(key) + length(reference)"
                " + length(raw_digest) + length(channel) FROM message"
                " WHERE state IN ('accepted', 'replayed')"
                " AND key NOT IN (SELECT message_key FROM outbox WHERE message_key IS NOT NULL)"
                " AND key NOT IN (SELECT message_key FROM reply)"
                " ORDER BY received_at LIMIT 256"
            ).fetchall()
            if not rows:
                break
            keys = []
            for key, size in rows:
                keys.append(key)
                freed += size + _ROW_OVERHEAD
                if freed >= target:
                    break
            conn.execute(f"DELETE FROM message WHERE key IN ({','.join('?' * len(keys))})", keys)
            self.pruned_early += len(keys)
        return freed

    def _why_full(self, conn: sqlite3.Connection, bound: str) -> str:
        dead, dead_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(raw)), 0) FROM message WHERE state = 'dead_letter'"
        ).fetchone()
        if dead_bytes * 2 >= self._usage(conn).used:
            return (
                f"the spool is full ({bound}): {dead} dead letters take {dead_bytes // MiB} MiB;"
                " they are never pruned, replay or remove them"
            )
        return (
            f"the spool is full ({bound}): what it holds waits for Kafka ({self._pending_events} events unpublished)"
            " or for replies to be sent, and nothing can be pruned"
        )

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

        Raises SpoolFull when the outbox is at its limits or the spool has no room left that
        pruning can make (decided in the writer, so that concurrent submissions cannot overshoot),
        TemporaryFailure when the write fails."""
        if submission.inbox_id is None:  # from the inbox, it was counted when it was taken in
            self._check_capacity()  # the cheap early answer while full; the binding check is in the op

        def op(conn: sqlite3.Connection) -> Receipt:
            if submission.inbox_id is None:
                self._reserve_pending(submission.events)
            context = json.dumps(submission.context)
            answer = json.dumps(submission.answer)
            payloads = [json.dumps(reply.payload) for reply in submission.replies]
            body = _encode_events(submission.events) if submission.events else b""
            self._make_room(conn, _estimate(submission, context, answer, payloads, body))
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
                    context,
                    answer,
                    "dead_letter" if submission.dead_letter else "accepted",
                ),
            ).rowcount
            if submission.inbox_id is not None:
                self._leave_inbox(conn, submission.inbox_id)
            if submission.replaces is not None:
                replaced = self._replace_dead_letter(conn, submission, answer, inserted=bool(inserted))
                if isinstance(replaced, Receipt):
                    return replaced
                inserted = inserted or replaced  # the dead letter became this complaint, in place
            if not inserted:
                row = conn.execute("SELECT raw_digest, answer FROM message WHERE key = ?", (submission.key,)).fetchone()
                if submission.cursor is not None:
                    self._set_cursor(conn, *submission.cursor)
                return Receipt(duplicate=True, same_content=row[0] == submission.raw_digest, answer=json.loads(row[1]))
            for reply, payload in zip(submission.replies, payloads, strict=True):
                conn.execute(
                    "INSERT INTO reply (message_key, channel, payload, not_before) VALUES (?, ?, ?, ?)",
                    (submission.key, reply.channel, payload, 0.0),
                )
            if submission.cursor is not None:
                self._set_cursor(conn, *submission.cursor)
            if submission.route is not None:
                self._record_route(conn, submission.reference, submission.route, submission.received_at)
            if submission.follows_up is not None:
                self._record_follow_up(conn, submission.follows_up)
            if submission.feedback is not None:
                self._record_answer(conn, submission.feedback, submission.received_at)
            if submission.group is not None:
                conn.execute(
                    "INSERT INTO message_group (name, reference, at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    (submission.group, submission.answer["reference"], submission.received_at),
                )
            self._insert_events(conn, submission.key, submission.events, body)  # last: it counts what cannot roll back
            return Receipt(duplicate=False, same_content=True, answer=submission.answer)

        # Never 0: a size marks the op as one that adds, refused while the disk is full.
        return await self._write(op, size=len(submission.raw) + sum(len(e.value) for e in submission.events) or 1)

    @staticmethod
    def _replace_dead_letter(conn: sqlite3.Connection, submission: Submission, answer: str, *, inserted: bool) -> Receipt | bool:
        """A replayed dead letter: become the complaint it now reads as, or keep the newest reason why not.

        A Receipt: nothing more to write. True: the dead letter's row is now this complaint's, and its
        replies and events are to be written as for a new message. False: carry on as usual (stored
        under a new key, or a plain duplicate)."""
        if submission.dead_letter:
            # Still not readable: no second dead-letter event, only the reason brought up to date.
            conn.execute("UPDATE message SET answer = ? WHERE key = ? AND state = 'dead_letter'", (answer, submission.replaces))
            if inserted and submission.key != submission.replaces:  # read under another key, and still failing: one is enough
                conn.execute("DELETE FROM message WHERE key = ?", (submission.key,))
            return Receipt(duplicate=True, same_content=True, answer=json.loads(answer))
        if inserted:  # stored under the key it reads as now (an email whose Message-ID is readable after the fix)
            conn.execute("UPDATE message SET state = 'replayed' WHERE key = ? AND state = 'dead_letter'", (submission.replaces,))
            return False
        return bool(
            conn.execute(
                "UPDATE message SET state = 'accepted', reference = ?, raw_digest = ?, answer = ? WHERE key = ? AND state = 'dead_letter'",
                (submission.reference, submission.raw_digest, answer, submission.key),
            ).rowcount
        )

    def _leave_inbox(self, conn: sqlite3.Connection, inbox_id: int) -> None:
        left = conn.execute("DELETE FROM inbox WHERE id = ? RETURNING length(raw)", (inbox_id,)).fetchone()
        if left is not None:  # gone already: normalised twice (a retry after an unknown outcome)
            self._pending_events -= 1
            self._pending_bytes -= left[0]

    # --- the inbox: raw messages normalised after they were taken in ------------

    async def take_in(self, channel: str, raw: bytes, *, context: dict[str, Any], received_at: float) -> int:
        """Store a raw message to normalise later; its id. Raises SpoolFull or TemporaryFailure as ``accept``."""
        self._check_capacity()
        self.taken_in_at = time.monotonic()

        def op(conn: sqlite3.Connection) -> int:
            encoded = json.dumps(context)
            if self._pending_events and (
                self._pending_events + 1 > self.max_pending_events or self._pending_bytes + len(raw) > self.max_pending_bytes
            ):
                raise SpoolFull("the spool is full; Kafka is not keeping up")
            self._make_room(conn, len(raw) + len(encoded) + len(channel) + _ROW_OVERHEAD)
            inbox_id = conn.execute(
                "INSERT INTO inbox (channel, received_at, raw, context) VALUES (?, ?, ?, ?)", (channel, received_at, raw, encoded)
            ).lastrowid
            self._pending_events += 1
            self._pending_bytes += len(raw)
            self._batch_took_in = True
            assert inbox_id is not None
            return inbox_id

        return await self._write(op, size=len(raw) or 1)

    async def to_normalise(
        self,
        now: float,
        limit: int = 32,
        *,
        taken_in_by: float | None = None,
        excluding: Collection[int] = (),
        max_bytes: int | None = None,
    ) -> list[InboxMessage]:
        """Inbox messages due for normalising, oldest first, but those ``excluding`` names (being normalised already);
        with ``taken_in_by``, only those received by then (and any received after ``now``: the clock was set back, and
        they would wait for as long); with ``max_bytes``, as many as fit in that many bytes of raw mail, and at least
        one."""
        where, parameters = ["not_before <= ?"], [now]
        if taken_in_by is not None:
            where.append("(received_at <= ? OR received_at > ?)")
            parameters += [taken_in_by, now]
        if excluding:
            where.append(f"id NOT IN ({', '.join('?' * len(excluding))})")
            parameters += list(excluding)
        columns = "id, channel, received_at, raw, context, attempts"
        due = f"FROM inbox WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"

        def query(conn: sqlite3.Connection) -> list[InboxMessage]:
            if max_bytes is None:
                rows = conn.execute(f"SELECT {columns} {due}", (*parameters, limit)).fetchall()
            else:  # the sizes first (the raw mail is not read for them), then the mails that fit, by id
                chosen, total = [], 0
                for inbox_id, size in conn.execute(f"SELECT id, length(raw) {due}", (*parameters, limit)):
                    total += size
                    if chosen and total > max_bytes:
                        break
                    chosen.append(inbox_id)
                marks = ", ".join("?" * len(chosen))
                rows = conn.execute(f"SELECT {columns} FROM inbox WHERE id IN ({marks}) ORDER BY id", chosen).fetchall()
            return [InboxMessage(i, ch, at, raw, json.loads(context), attempts) for i, ch, at, raw, context, attempts in rows]

        return await self._read(query)

    async def normalise_failed(self, inbox_id: int, *, retry_at: float, error: str) -> None:
        """Normalising it failed for now (a store of ours unavailable): it stays, and is tried again at ``retry_at``."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE inbox SET attempts = attempts + 1, not_before = ?, last_error = ? WHERE id = ?", (retry_at, error[:500], inbox_id)
            )

        await self._write(op)

    async def forget_inbox(self, ids: list[int]) -> None:
        """Drop inbox messages handed elsewhere (to another worker's spool) without normalising them here."""

        def op(conn: sqlite3.Connection) -> None:
            for inbox_id in ids:
                self._leave_inbox(conn, inbox_id)

        await self._write(op)

    def _insert_events(self, conn: sqlite3.Connection, message_key: str | None, events: list[Event], body: bytes | None = None) -> None:
        """One outbox row for all of ``events``, remembered for the hand-over once the batch commits."""
        if not events:
            return
        now = time.time()
        size = sum(len(e.value) for e in events)
        seq = conn.execute(
            "INSERT INTO outbox (message_key, events, bytes, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (message_key, len(events), size, body or _encode_events(events), now),
        ).lastrowid
        assert seq is not None
        self._batch_rows.append(_Row(seq, events, size, now))
        # Counted in the writer thread, read on the loop: an int update is atomic under the GIL.
        self._pending_events += len(events)
        self._pending_bytes += size

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

    async def pending_events(self, after_seq: int, limit: int, *, before_seq: int | None = None) -> list[StoredEvent]:
        """Unpublished events on disk in the order they were written, from at most ``limit`` rows
        (the events of one message share its row's ``seq``, and are published or not together)."""

        def query(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                "SELECT seq, body, created_at FROM outbox WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after_seq, before_seq if before_seq is not None else 2**63 - 1, limit),
            ).fetchall()
            return [
                StoredEvent(topic=e.topic, key=e.key, value=e.value, headers=e.headers, seq=seq, created_at=created_at)
                for seq, body, created_at in rows
                for e in _decode_events(body)
            ]

        return await self._read(query)

    async def take_events(self, after_seq: int, limit: int) -> list[StoredEvent]:
        """The publisher's next events after ``after_seq``, from at most ``limit`` rows: from disk
        while it is behind what memory holds (after a restart, a failed send, an overflow), else
        from what recent commits handed over, without a read. Taken rows stay on disk until
        ``mark_published``, so a publisher that fails starts again from an earlier ``after_seq``."""
        if after_seq < self._memory_from - 1:
            older = await self.pending_events(after_seq, limit, before_seq=self._memory_from)
            if older:
                return older
        taken: list[StoredEvent] = []
        rows = 0
        while self._fresh and rows < limit:
            row = self._fresh.popleft()
            self._fresh_bytes -= row.size
            self._memory_from = row.seq + 1
            if row.seq <= after_seq:
                continue
            rows += 1
            taken.extend(
                StoredEvent(topic=e.topic, key=e.key, value=e.value, headers=e.headers, seq=row.seq, created_at=row.created_at)
                for e in row.events
            )
        return taken

    def _hand_over(self, rows: list[_Row]) -> None:
        """On the loop, after a commit: keep its outbox rows for the publisher, within the bound."""
        for row in rows:
            if len(self._fresh) >= self._memory_rows or self._fresh_bytes + row.size > self._memory_bytes:
                # The publisher is far behind (Kafka away): it reads from disk, up to the newest row.
                self._fresh.clear()
                self._fresh_bytes = 0
                self._memory_from = rows[-1].seq + 1
                break
            self._fresh.append(row)
            self._fresh_bytes += row.size
        self.events_written.set()

    async def mark_published(self, seqs: list[int]) -> None:
        """Forget events Kafka has. Goes on when the disk is full (the reserve is for this); raises
        TemporaryFailure when even that fails, and the events stay pending for a retry."""

        unique = sorted(set(seqs))  # the events of one row share its seq

        def op(conn: sqlite3.Connection) -> None:
            placeholders = ",".join("?" * len(unique))
            deleted = conn.execute(f"DELETE FROM outbox WHERE seq IN ({placeholders}) RETURNING events, bytes", unique).fetchall()
            self._pending_events -= sum(row[0] for row in deleted)
            self._pending_bytes -= sum(row[1] for row in deleted)
            self._refusing = None  # their raw messages may now give way

        if unique:
            # Lost to a power cut, these deletes only mean the events are sent again with their ce_ids: no fsync.
            await self._write(op, lasting=False)

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
            self._refusing = None

        await self._write(op)

    async def reply_failed(self, reply_id: int, *, retry_at: float | None, error: str) -> None:
        """Try again at ``retry_at``; None gives up (the failure is recorded as an event by the caller)."""

        def op(conn: sqlite3.Connection) -> None:
            if retry_at is None:
                conn.execute("DELETE FROM reply WHERE id = ?", (reply_id,))
                self._refusing = None
            else:
                conn.execute(
                    "UPDATE reply SET attempts = attempts + 1, not_before = ?, last_error = ? WHERE id = ?",
                    (retry_at, error[:500], reply_id),
                )

        await self._write(op)

    # --- conversations: what commands need to reach a complainant (intake.twoway.Conversations) ----

    @staticmethod
    def _record_route(conn: sqlite3.Connection, reference: str, route: Route, at: float) -> None:
        conn.execute(
            "INSERT INTO conversation (reference, channel, address, locale, contacts, created_at, last_inbound_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reference) DO NOTHING",
            (reference, route.channel, json.dumps(route.address), route.locale, json.dumps(route.contacts), at, route.last_inbound_at),
        )

    @staticmethod
    def _record_follow_up(conn: sqlite3.Connection, follow_up: FollowUp) -> None:
        # Only on the route's own channel (SMS and MMS being one number): an email does not open WhatsApp's
        # 24-hour window, and a Telegram chat is no address for a mail thread.
        family = ("sms", "mms") if follow_up.channel in ("sms", "mms") else (follow_up.channel,)
        address = json.dumps(follow_up.address) if follow_up.address else None
        conn.execute(
            f"UPDATE conversation SET last_inbound_at = max(last_inbound_at, ?), address = coalesce(?, address)"
            f" WHERE reference = ? AND channel IN ({','.join('?' * len(family))})",
            (follow_up.at, address, follow_up.reference, *family),
        )

    @staticmethod
    def _record_answer(conn: sqlite3.Connection, feedback: Feedback, at: float) -> bool:
        """The answer's row and the survey's progress; False if this answer was recorded before."""
        inserted = conn.execute(
            "INSERT INTO feedback (survey_id, answer_id, received_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (feedback.survey_id, feedback.answer_id, at),
        ).rowcount
        if not inserted:
            return False
        # A survey another worker's spool asked (intake.conversations): kept here as a row of its own, with no channel,
        # so that what this answer answers is known here too.
        conn.execute(
            "INSERT INTO survey (survey_id, reference, channel, nps, comment, asked_at) VALUES (?, ?, '', 0, 0, ?)"
            " ON CONFLICT (survey_id) DO NOTHING",
            (feedback.survey_id, feedback.reference, at),
        )
        conn.execute(
            "UPDATE survey SET answered_at = coalesce(answered_at, ?),"
            " score_at = CASE WHEN ? THEN coalesce(score_at, ?) ELSE score_at END,"
            " nps_at = CASE WHEN ? THEN coalesce(nps_at, ?) ELSE nps_at END,"
            " comment_at = CASE WHEN ? THEN coalesce(comment_at, ?) ELSE comment_at END"
            " WHERE survey_id = ?",
            (at, feedback.score is not None, at, feedback.nps is not None, at, bool(feedback.comment), at, feedback.survey_id),
        )
        return True

    async def route(self, reference: str) -> Route | None:
        """The route recorded for a complaint, or None for a reference this spool never received."""
        row = await self._read(lambda conn: route_row(conn, reference))
        return None if row is None else row.route

    async def group(self, name: str) -> str | None:
        """What the first stored message of the group ``name`` became (its reference, or the one it followed up)."""
        return await self._read(lambda conn: group_reference(conn, name))

    async def _complaint_status(self, reference: str) -> StatusView | None:
        return await self._read(lambda conn: status_view(conn, reference))

    async def open_survey(self, reference: str) -> Survey | None:
        """The newest survey asked and not fully answered: ``nps`` / ``comment`` say what is still to be answered."""
        return open_survey_of(await self._read(lambda conn: survey_rows(conn, reference)))

    async def survey_asked_of(self, asked_of: str, answer_id: str) -> AskedSurvey | None:
        """The newest survey asked of ``asked_of`` still waiting for its score (or scored by ``answer_id``: a redelivery)."""

        def query(conn: sqlite3.Connection) -> AskedSurvey | None:
            asked = surveys_asked_of(conn, asked_of)
            rows = [row for reference in {row.reference for row in asked} for row in survey_rows(conn, reference)]
            return awaiting_score(asked, rows, answers_given(conn, [row.survey_id for row in asked], answer_id))

        return await self._read(query)

    async def record_feedback(self, feedback: Feedback, event: Event) -> bool:
        """Store an answer and its ``intake.feedback.received.v1`` event in one transaction; False if ``answer_id`` came before."""

        def op(conn: sqlite3.Connection) -> bool:
            if not self._record_answer(conn, feedback, time.time()):
                return False
            self._insert_events(conn, None, [event])
            return True

        return await self._write(op, size=len(event.value) or 1)

    # --- outbound commands ----------------------------------------------------

    async def store_commands(self, intakes: list[CommandIntake]) -> list[str]:
        """Store a batch of records from the outbound topic in one transaction; per record its outcome:
        ``stored``, ``duplicate`` (its dedupe id was seen before) or ``rejected`` (its dead-letter event written)."""

        def op(conn: sqlite3.Connection) -> list[str]:
            outcomes = []
            now = time.time()
            for item in intakes:
                if conn.execute("SELECT 1 FROM command WHERE ce_id = ?", (item.dedupe_id,)).fetchone():
                    outcomes.append("duplicate")
                    continue
                rejection = item.rejection
                if item.data is not None and conn.execute("SELECT 1 FROM conversation WHERE reference = ?", (item.reference,)).fetchone() is None:
                    if item.route is None:
                        rejection = item.unknown_reference
                    else:  # taken in by another worker: kept here, where its statuses and surveys will be
                        self._record_route(conn, item.reference, item.route, now)
                state = "pending" if rejection is None else "rejected"
                # A refused command keeps no data: only its id, so that a redelivery is not refused twice.
                conn.execute(
                    "INSERT INTO command (ce_id, reference, ce_type, data, state, received_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.dedupe_id, item.reference, item.ce_type, json.dumps(item.data if rejection is None else {}), state, now,
                     None if rejection is None else now),
                )  # fmt: skip
                if rejection is not None:
                    self._insert_events(conn, None, [rejection])
                outcomes.append("stored" if rejection is None else "rejected")
            if any(outcome == "stored" for outcome in outcomes):
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.commands_written.set)
            return outcomes

        return await self._write(op, size=sum(len(json.dumps(i.data or {})) for i in intakes) or 1)

    async def due_commands(self, now: float, limit: int = 100) -> list[StoredCommand]:
        """The first pending command of each reference, if it is due: the next of a reference waits for it."""

        def query(conn: sqlite3.Connection) -> list[StoredCommand]:
            rows = conn.execute(
                "SELECT id, ce_id, reference, ce_type, data, attempts FROM command AS c"
                " WHERE state = 'pending' AND not_before <= ?"
                " AND id = (SELECT min(id) FROM command WHERE state = 'pending' AND reference = c.reference)"
                " ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            return [StoredCommand(i, ce, ref, t, json.loads(data), attempts) for i, ce, ref, t, data, attempts in rows]

        return await self._read(query)

    async def command_done(
        self,
        command_id: int,
        events: list[Event],
        *,
        failed: bool = False,
        status: tuple[str, str | None] | None = None,
        survey: Survey | None = None,
        survey_channel: str = "",
        survey_asked_of: str | None = None,
        then: CommandIntake | None = None,
    ) -> None:
        """A command delivered (or given up on, ``failed``): its outcome event, the status now shown to the
        complainant, the survey now open (``survey_asked_of``: whom, intake.twoway.reply_address), and a command
        it causes (``then``: a survey after "resolved"), in one transaction."""

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(
                "UPDATE command SET state = ?, done_at = ?, data = '{}' WHERE id = ? AND state = 'pending' RETURNING reference",
                ("failed" if failed else "delivered", now, command_id),
            ).fetchone()
            if row is None:  # done already: a retry after an unknown outcome of this very write
                return
            reference = row[0]
            if status is not None:
                conn.execute(
                    "UPDATE conversation SET status = ?, status_text = ?, status_at = ? WHERE reference = ?", (*status, now, reference)
                )
            if survey is not None:
                conn.execute(
                    "INSERT INTO survey (survey_id, reference, channel, nps, comment, asked_at, asked_of)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (survey_id) DO NOTHING",
                    (survey.survey_id, reference, survey_channel, survey.nps, survey.comment, now, survey_asked_of),
                )
            if then is not None and then.data is not None:
                conn.execute(
                    "INSERT INTO command (ce_id, reference, ce_type, data, state, received_at) VALUES (?, ?, ?, ?, 'pending', ?)"
                    " ON CONFLICT (ce_id) DO NOTHING",
                    (then.dedupe_id, then.reference, then.ce_type, json.dumps(then.data), now),
                )
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.commands_written.set)
            self._insert_events(conn, None, events)

        await self._write(op)

    async def command_retry(self, command_id: int, *, retry_at: float, error: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE command SET attempts = attempts + 1, not_before = ?, last_error = ? WHERE id = ?", (retry_at, error[:500], command_id)
            )
        )

    async def prune_conversations(self, *, routes_before: float, commands_before: float) -> int:
        """Forget conversations whose complainant last wrote before ``routes_before`` (with their surveys and
        answers, and no command still pending), and the ids of commands done before ``commands_before``."""

        def op(conn: sqlite3.Connection) -> int:
            gone = conn.execute(
                "DELETE FROM conversation WHERE last_inbound_at < ? AND coalesce(status_at, 0) < ?"
                " AND reference NOT IN (SELECT reference FROM command WHERE state = 'pending' AND reference IS NOT NULL)",
                (routes_before, routes_before),
            ).rowcount
            conn.execute("DELETE FROM feedback WHERE survey_id IN (SELECT survey_id FROM survey WHERE asked_at < ?)", (routes_before,))
            conn.execute("DELETE FROM survey WHERE asked_at < ?", (routes_before,))
            conn.execute("DELETE FROM message_group WHERE at < ?", (routes_before,))
            commands = conn.execute("DELETE FROM command WHERE state != 'pending' AND done_at < ?", (commands_before,)).rowcount
            return gone + commands

        return await self._write(op)

    # --- housekeeping ---------------------------------------------------------

    async def prune(self, older_than: float) -> int:
        """Forget raw messages past retention whose events and replies are all done; dead letters stay."""

        def op(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM message WHERE received_at < ? AND state IN ('accepted', 'replayed')"
                " AND key NOT IN (SELECT message_key FROM outbox WHERE message_key IS NOT NULL)"
                " AND key NOT IN (SELECT message_key FROM reply)",
                (older_than,),
            )
            if cursor.rowcount:
                self._refusing = None
            return cursor.rowcount

        return await self._write(op)

    async def housekeep(self) -> int:
        """Keep the spool fit to take complaints; to be called every 10 seconds or so.

        It makes the reserve again once a full disk has room (which clears a "disk full"
        fault even when no complaint arrives to try), checkpoints a growing WAL, and prunes the
        oldest finished raw messages ahead of need when the room left is under two batches'
        worth, so that accepting seldom has to. Returns how many raw messages it pruned inside
        retention. Cheap when there is nothing to do: a few PRAGMAs and an empty commit."""

        def op(conn: sqlite3.Connection) -> int:
            self._refusing = None
            # Another process wrote to the spool (``intake spool dead-letters replay`` fills the inbox): count again.
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._data_version = version
                self._recount(conn)
            room, _ = self._room_in(self._usage(conn))
            low = 2 * self._batch_bytes
            before = self.pruned_early
            if room < low and self._disk_full is None:
                self._prune_oldest(conn, low - room)
            return self.pruned_early - before

        return await self._write(op)

    @property
    def pending_events_count(self) -> int:
        return self._pending_events

    @property
    def pending_bytes_count(self) -> int:
        return self._pending_bytes

    def is_full(self) -> bool:
        """Whether complaints are refused now: the outbox at its limits, no room that pruning could
        make, or a full disk. The last two are learnt from writes, and forgotten by what frees room."""
        if self._refusing is not None or self._disk_full is not None:
            return True
        try:
            self._check_capacity()
        except SpoolFull:
            return True
        return False

    @overload
    async def status(self) -> SpoolStatus: ...

    @overload
    async def status(self, reference: str) -> StatusView | None: ...

    async def status(self, reference: str | None = None) -> SpoolStatus | StatusView | None:
        """The spool's own state; or, given a complaint's reference, its latest status delivered to the complainant
        (``Conversations.status``: None while no status command has been, the complaint then being "received")."""
        if reference is not None:
            return await self._complaint_status(reference)

        def query(conn: sqlite3.Connection) -> SpoolStatus:
            waiting = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
            messages = conn.execute("SELECT count(*) FROM message").fetchone()[0] + waiting
            dead = conn.execute("SELECT count(*) FROM message WHERE state = 'dead_letter'").fetchone()[0]
            events, size = conn.execute("SELECT coalesce(sum(events), 0), coalesce(sum(bytes), 0) FROM outbox").fetchone()
            oldest = conn.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
            replies = conn.execute("SELECT count(*) FROM reply").fetchone()[0]
            dead_bytes = conn.execute("SELECT coalesce(sum(length(raw)), 0) FROM message WHERE state = 'dead_letter'").fetchone()[0]
            first = conn.execute("SELECT min(received_at) FROM message").fetchone()[0]
            commands = conn.execute("SELECT count(*) FROM command WHERE state = 'pending'").fetchone()[0]
            conversations = conn.execute("SELECT count(*) FROM conversation").fetchone()[0]
            return SpoolStatus(
                messages=messages,
                pending_events=events,
                pending_bytes=size,
                oldest_pending_age=None if oldest is None else max(0.0, time.time() - oldest[0]),
                pending_replies=replies,
                dead_letters=dead,
                capacity_events=self.max_pending_events,
                capacity_bytes=self.max_pending_bytes,
                total_bytes=self._total(self._usage(conn)),
                capacity_total_bytes=self.max_total_bytes,
                dead_letter_bytes=dead_bytes,
                oldest_message_age=None if first is None else max(0.0, time.time() - first),
                refusing=self._refusing or self._disk_full,
                fault=self.fault,
                to_normalise=waiting,
                pending_commands=commands,
                conversations=conversations,
            )

        return await self._read(query)


def _estimate(submission: Submission, context: str, answer: str, payloads: list[str], body: bytes) -> int:
    """Bytes a submission adds to the file, roughly; see _ROW_OVERHEAD."""
    size = (
        len(submission.raw) + len(context) + len(answer) + 2 * len(submission.key) + len(submission.reference)
        + len(submission.raw_digest) + len(submission.channel) + _ROW_OVERHEAD
    )
    if body:
        size += len(body) + len(submission.key) + _ROW_OVERHEAD
    for reply, payload in zip(submission.replies, payloads, strict=True):
        size += len(payload) + len(reply.channel) + len(submission.key) + _ROW_OVERHEAD
    return size
