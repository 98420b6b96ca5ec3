"""The benchmark's durable floor: the least a webhook relay must do to keep intake's promises, and nothing more.

Where bench/baseline_app.py relays without storing, this does what no durable
gateway on this stack can leave out, each step the cheapest way CPython has:
the v2 signature over timestamp, Idempotency-Key and body; the body read as
JSON; the request stored in SQLite (WAL, synchronous=FULL, group-committed by
one writer thread, a redelivered key recognised) before the 202; then sent to
Kafka from what was committed, and forgotten once Kafka has it. No record, no
validation of its fields, no acknowledgement, no language, no metrics: its CPU
per request is a floor under any gateway that stores before it answers, to
set beside the baseline's and intake's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaProducer
from baseline_app import serve  # run as a script from bench/, as the benchmark runs it

SECRET = b"s3cret-for-tests-only-0123456789"
WINDOW_SECONDS = 300


class Store:
    """One SQLite file, written by one thread that commits whatever is queued as one transaction."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, committed: asyncio.Queue[list[tuple[int, bytes, bytes]]]) -> None:
        self._loop, self._committed = loop, committed
        self._jobs: queue.Queue[tuple[str, object, asyncio.Future[bool] | None]] = queue.Queue()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, key TEXT UNIQUE, body BLOB, sent INTEGER DEFAULT 0)")
        threading.Thread(target=self._write, daemon=True).start()

    def store(self, key: str, body: bytes) -> asyncio.Future[bool]:
        future = self._loop.create_future()
        self._jobs.put(("store", (key, body), future))
        return future

    def sent(self, ids: list[int]) -> None:
        self._jobs.put(("sent", ids, None))

    def _write(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stored: list[tuple[asyncio.Future[bool], bool]] = []
            rows: list[tuple[int, bytes, bytes]] = []
            self._conn.execute("BEGIN")
            for kind, argument, future in batch:
                if kind == "store":
                    key, body = argument  # type: ignore[misc]
                    cursor = self._conn.execute("INSERT OR IGNORE INTO outbox (key, body) VALUES (?, ?)", (key, body))
                    new = cursor.rowcount == 1
                    if new:
                        rows.append((cursor.lastrowid, key.encode(), body))  # type: ignore[arg-type]
                    assert future is not None
                    stored.append((future, new))
                else:
                    self._conn.executemany("UPDATE outbox SET sent = 1, body = NULL WHERE id = ?", [(i,) for i in argument])  # type: ignore[union-attr]
            self._conn.execute("COMMIT")
            self._loop.call_soon_threadsafe(self._settle, stored, rows)

    def _settle(self, stored: list[tuple[asyncio.Future[bool], bool]], rows: list[tuple[int, bytes, bytes]]) -> None:
        if rows:
            self._committed.put_nowait(rows)
        for future, new in stored:
            if not future.done():
                future.set_result(new)


def authentic(request: web.Request, body: bytes) -> bool:
    stamp, key = request.headers.get("Intake-Timestamp", ""), request.headers.get("Idempotency-Key", "")
    given = request.headers.get("Intake-Signature", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > WINDOW_SECONDS or not given.startswith("v2="):
        return False
    digest = hmac.new(SECRET, stamp.encode() + b"." + key.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given[3:].encode(), digest.encode())


def main() -> None:
    bootstrap, topic, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state: dict[str, object] = {}

    async def publish(producer: AIOKafkaProducer, store: Store, committed: asyncio.Queue[list[tuple[int, bytes, bytes]]]) -> None:
        while True:
            rows = await committed.get()
            futures = [await producer.send(topic, body, key=key) for _, key, body in rows]
            await asyncio.gather(*futures)
            store.sent([row_id for row_id, _, _ in rows])

    async def start(app: web.Application) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5, max_batch_size=64 * 1024)
        await producer.start()
        committed: asyncio.Queue[list[tuple[int, bytes, bytes]]] = asyncio.Queue()
        directory = tempfile.mkdtemp(prefix="floor-")
        store = Store(Path(directory) / "floor.sqlite3", asyncio.get_running_loop(), committed)
        state.update(producer=producer, store=store, publisher=asyncio.create_task(publish(producer, store, committed)))

    async def stop(app: web.Application) -> None:
        state["publisher"].cancel()  # type: ignore[attr-defined]
        await state["producer"].stop()  # type: ignore[attr-defined]

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not authentic(request, body):
            return web.json_response({"title": "signature"}, status=401)
        try:
            document = json.loads(body)
        except ValueError:
            return web.json_response({"title": "not JSON"}, status=400)
        if not isinstance(document, dict) or not isinstance(document.get("text"), str):
            return web.json_response({"title": "no text"}, status=422)
        new = await state["store"].store(request.headers["Idempotency-Key"], body)  # type: ignore[attr-defined]
        return web.json_response({"status": "accepted" if new else "duplicate"}, status=202 if new else 200)

    serve(port, receive, start, stop)


if __name__ == "__main__":
    main()
