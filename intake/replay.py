"""Replaying dead letters after a fix: ``intake spool dead-letters replay``.

A dead letter is a message kept with its raw bytes because it could not be
read as a complaint (a normaliser's bug, a format we did not know). Once the
gateway is fixed, replaying puts it into the spool's inbox, from beside the
running gateway (SQLite's WAL lets a second writer wait its turn), marked
with the key it was kept under. The gateway's normaliser takes it from there
within a second, on the channel's own path: the same key and reference, so
downstream sees the complaint it missed (and a consumer that had the
dead-letter event can tie the two together), the acknowledgement goes out
where the channel answers later (email, Telegram), and a message that still
cannot be read stays a dead letter with the newest reason. A gateway that is
not running replays them when it starts.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

# The inbox context's field that makes a message a replay; its value is the dead letter's key.
REPLAY = "replay"


def queue(path: Path, keys: list[str] | None, *, channel: str | None = None) -> list[str]:
    """Put dead letters into the inbox to be normalised again; the keys queued, in order of receipt.

    ``keys`` None: every dead letter (of ``channel``, if given). A key that is not a dead letter, or
    is queued already, is left alone."""
    if not path.exists():
        raise FileNotFoundError(f"no spool at {path}")
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute("PRAGMA busy_timeout=30000")
        query = "SELECT key, channel, received_at, raw, context FROM message WHERE state = 'dead_letter'"
        values: list[str] = []
        if keys is not None:
            query += f" AND key IN ({','.join('?' * len(keys))})"
            values += keys
        if channel is not None:
            query += " AND channel = ?"
            values.append(channel)
        rows = conn.execute(query + " ORDER BY received_at", values).fetchall()
        queued_already = {
            json.loads(context).get(REPLAY) for (context,) in conn.execute("SELECT context FROM inbox").fetchall()
        }
        queued = []
        for key, message_channel, received_at, raw, context in rows:
            if key in queued_already:
                continue
            conn.execute(
                "INSERT INTO inbox (channel, received_at, raw, context) VALUES (?, ?, ?, ?)",
                (message_channel, received_at, raw, json.dumps({REPLAY: key, "context": json.loads(context)})),
            )
            queued.append(key)
    return queued
