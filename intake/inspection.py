"""What an operator may look up in a spool, beside a running gateway: dead letters, and what is known of a reference.

Read only (SQLite's ``mode=ro``, which WAL lets run beside the gateway's
writer), so a look-up can never disturb intake. Personal data stays out of
the answers unless asked for: the channel's context (addresses, numbers) and
the raw bytes are shown only with ``personal=True``.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from intake.normalizer.reference import parse_reference

# Context fields that name no person: safe to show without being asked.
_IMPERSONAL_CONTEXT = frozenset({"via", "partner", "mode", "mailbox", "folder", "uid", "endpoint", "bot"})


class NotFound(Exception):
    """No such message in the spool."""


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no spool at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _time(value: float) -> str:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _context(context: str, personal: bool) -> dict[str, Any]:
    values = json.loads(context)
    if personal:
        return values
    return {key: value for key, value in values.items() if key in _IMPERSONAL_CONTEXT}


def dead_letters(path: Path, *, limit: int = 100) -> list[dict[str, Any]]:
    """The messages kept but not readable as complaints, newest first."""
    with _connect(path) as conn:
        rows = conn.execute(
            "SELECT key, channel, reference, received_at, length(raw), raw_digest, answer FROM message"
            " WHERE state = 'dead_letter' ORDER BY received_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
    return [
        {
            "key": key,
            "channel": channel,
            "reference": reference,
            "received_at": _time(received_at),
            "raw": {"size": size, "sha256": digest},
            **({"error": answer_error} if (answer_error := json.loads(answer).get("error")) else {}),
        }
        for key, channel, reference, received_at, size, digest, answer in rows
    ]


def message(path: Path, key: str, *, personal: bool = False) -> tuple[dict[str, Any], bytes | None]:
    """One stored message by its spool key: what is known of it, and its raw bytes when ``personal``."""
    with _connect(path) as conn:
        row = conn.execute(
            "SELECT key, channel, reference, received_at, raw, raw_digest, context, state FROM message WHERE key = ?", (key,)
        ).fetchone()
    if row is None:
        raise NotFound(key)
    key, channel, reference, received_at, raw, digest, context, state = row
    described = {
        "key": key,
        "channel": channel,
        "reference": reference,
        "state": state,
        "received_at": _time(received_at),
        "raw": {"size": len(raw), "sha256": digest},
        "context": _context(context, personal),
    }
    return described, (bytes(raw) if personal else None)


def find(path: Path, text: str, *, personal: bool = False) -> dict[str, Any]:
    """Everything the spool knows of a reference: its messages, unpublished events and unsent replies."""
    reference = parse_reference(text)
    if reference is None:
        raise ValueError(f"{text!r} is not a reference like C-7K3M-9QXA")
    with _connect(path) as conn:
        rows = conn.execute(
            "SELECT key, channel, received_at, state, length(raw), context FROM message WHERE reference = ? ORDER BY received_at",
            (reference,),
        ).fetchall()
        keys = [row[0] for row in rows]
        placeholders = ",".join("?" * len(keys)) or "NULL"
        pending = conn.execute(f"SELECT count(*) FROM outbox WHERE message_key IN ({placeholders})", keys).fetchone()[0]
        replies = conn.execute(
            f"SELECT channel, attempts, last_error FROM reply WHERE message_key IN ({placeholders})", keys
        ).fetchall()
    return {
        "reference": reference,
        "messages": [
            {"key": key, "channel": channel, "received_at": _time(at), "state": state, "raw_size": size, "context": _context(context, personal)}
            for key, channel, at, state, size, context in rows
        ],
        "unpublished_outbox_rows": pending,
        "unsent_replies": [{"channel": channel, "attempts": attempts, "last_error": error} for channel, attempts, error in replies],
    }
