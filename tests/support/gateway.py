"""Running a real gateway for tests: in this process on a free port, or as a child process to kill."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from intake.channels.webhook import signature
from intake.config import Settings
from intake.gateway import Gateway

PARTNER = "acme"
SECRET = "s3cret-for-tests-only-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(tmp: Path, bootstrap: str, topic: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "log_format": "text",
        "shutdown_grace_seconds": 5,
        "http": {"host": "127.0.0.1", "port": free_port()},
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "dead_letter_topic": f"{topic}.dead-letter", "outbound_topic": f"{topic}.outbound", "stall_seconds": 1.0},
        "spool": {"path": str(tmp / "spool.sqlite3")},
        "webhook": {"partners": {PARTNER: {"secrets": [SECRET]}}},
    }
    for section, options in overrides.items():
        if isinstance(options, dict):
            values.setdefault(section, {}).update(options)
        else:
            values[section] = options
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(
    config: Settings, *, prepare: Callable[[Gateway], None] | None = None, worker: int = 0, workers: int = 1
) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway serving HTTP on its configured port; yields it and its base URL. ``prepare`` sees it before it starts
    (to register a sender, as channels do while the gateway is built). ``worker`` of ``workers``: one worker of
    ``intake serve --workers``, in this process, on the port configured."""
    gateway = Gateway(config, worker=worker, workers=workers)
    if prepare is not None:
        prepare(gateway)
    await gateway.start()
    runner = gateway.http_runner()
    await runner.setup()
    site = web.TCPSite(runner, config.http.host, config.http.port)
    await site.start()
    try:
        yield gateway, f"http://{config.http.host}:{config.http.port}"
    finally:
        gateway.draining = True
        await runner.cleanup()
        await gateway.stop()


def signed_headers(body: bytes, key: str, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a partner's request, signed v2 (over the timestamp, the Idempotency-Key and the body)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "Intake-Timestamp": stamp,
        "Intake-Signature": signature(secret, stamp, body, idempotency_key=key),
        "Idempotency-Key": key,
    }


def complaint_body(text: str = "My parcel arrived broken.", **fields: Any) -> bytes:
    document: dict[str, Any] = {
        "complainant": {"name": "Ewa Nowak", "email": "ewa@example.com", "phone": "+48601234567", "locale": "pl"},
        "subject": "Broken parcel",
        "text": text,
        "product": "Courier delivery",
        "desired_outcome": "A refund",
    }
    document.update(fields)
    return json.dumps(document, ensure_ascii=False).encode()


async def post_complaint(
    session: aiohttp.ClientSession, base: str, body: bytes, key: str, *, partner: str = PARTNER, **header_options: Any
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{base}/webhook/{partner}", data=body, headers=signed_headers(body, key, **header_options)) as response:
        return response.status, await response.json(content_type=None)


class GatewayProcess:
    """``intake serve`` as a child process, configured through the environment, for kill -9 tests."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config_path.with_suffix(".log")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "intake.cli", "--config", str(self.config_path), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    async def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.log.read_text()[-2000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.base}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"gateway did not become healthy: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)
