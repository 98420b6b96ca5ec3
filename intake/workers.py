"""Several gateway processes behind one set of listening sockets: ``intake serve --workers N``.

One Python process uses one core, whatever the machine has. The parent here
starts N workers, each a whole gateway (``intake serve --worker-index i``)
with its own event loop and its own spool, binding the same ports with
SO_REUSEPORT so that the kernel spreads connections across them. The parent
does nothing else: it restarts a worker that dies, and on SIGTERM or SIGINT
passes the signal on and waits until every worker has drained, exiting 0
when all did. Workers die with the parent (PR_SET_PDEATHSIG), so a parent
killed with -9 leaves no worker holding a port or a spool.

What must run once per gateway (pull channels: IMAP mailboxes, Telegram
long polling) runs in worker 0 only; see ``Gateway``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("intake.workers")

# A worker that lived less than this was not healthy: its next start waits longer.
_HEALTHY_AFTER = 10.0
_FIRST_DELAY = 0.5
_MAX_DELAY = 30.0
_PR_SET_PDEATHSIG = 1


def default_count() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def worker_spool_path(path: Path, index: int) -> Path:
    """Worker 0 keeps the configured spool, so a gateway that had one process drains it; the others get their own."""
    return path if index == 0 else path.with_name(f"{path.stem}.worker-{index}{path.suffix}")


def spools_beyond(path: Path, count: int) -> list[Path]:
    """Spools of worker indices ``count`` and up, left by a gateway that ran more workers."""
    found = []
    for candidate in path.parent.glob(f"{path.stem}.worker-*{path.suffix}"):
        index = candidate.name[len(path.stem) + len(".worker-") : len(candidate.name) - len(path.suffix)]
        if index.isdigit() and int(index) >= count:
            found.append(candidate)
    return sorted(found)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the parent dies, however it dies."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers outlive a parent killed with -9
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = _FIRST_DELAY
    restart_at: float | None = None
    restarts: int = field(default=0)


class Workers:
    """The parent of N gateway workers; ``run()`` returns the exit code of ``intake serve``."""

    def __init__(self, count: int, command: list[str], *, stop_timeout: float, poll: float = 0.2) -> None:
        self._count = count
        self._command = command  # `intake [--config X] serve`; the worker's options are appended
        self._stop_timeout = stop_timeout
        self._poll = poll
        self._workers = [_Worker(index) for index in range(count)]
        self._stopping = False

    def _start(self, worker: _Worker) -> None:
        command = [*self._command, "--workers", str(self._count), "--worker-index", str(worker.index)]
        worker.process = subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: PLW1509 - the parent runs no threads
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker started", extra={"event": "worker_started", "worker": worker.index, "pid": worker.process.pid})

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self._stopping:
            log.info("stopping the workers", extra={"event": "workers_stopping", "signal": signal.Signals(signum).name})
        self._stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for worker in self._workers:
            self._start(worker)
        first_start = time.monotonic()
        while not self._stopping:
            time.sleep(self._poll)
            now = time.monotonic()
            for worker in self._workers:
                if worker.restart_at is not None:
                    if now >= worker.restart_at and not self._stopping:
                        self._start(worker)
                    continue
                assert worker.process is not None
                code = worker.process.poll()
                if code is None:
                    continue
                if now - first_start < _HEALTHY_AFTER and worker.restarts == 0 and code > 0:
                    # It could not start at all (a port taken, a spool it cannot open): the gateway cannot either.
                    log.error("a worker failed to start; stopping", extra={"event": "worker_start_failed", "worker": worker.index, "exit_code": code})
                    self._stop_all()
                    return code
                lived = now - worker.started
                worker.delay = _FIRST_DELAY if lived >= _HEALTHY_AFTER else min(worker.delay * 2, _MAX_DELAY)
                worker.restarts += 1
                worker.restart_at = now + worker.delay
                log.error(
                    "worker died; restarting it",
                    extra={"event": "worker_died", "worker": worker.index, "exit_code": code, "lived_seconds": round(lived, 1), "restart_in": worker.delay},
                )
        return self._stop_all()

    def _stop_all(self) -> int:
        """SIGTERM every worker (each drains as a single gateway does), wait, SIGKILL what is left."""
        live = [w.process for w in self._workers if w.process is not None and w.restart_at is None and w.process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        code = 0
        for process in live:
            try:
                returned = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("a worker did not stop in time; killing it", extra={"event": "worker_killed", "pid": process.pid})
                process.kill()
                returned = process.wait()
            code = code or (0 if returned == 0 else 1)
        log.info("workers stopped", extra={"event": "workers_stopped", "exit_code": code})
        return code


def serve_command(config: Path | None) -> list[str]:
    """How a worker is started: this interpreter, this package, the same configuration (and the inherited environment)."""
    command = [sys.executable, "-m", "intake.cli"]
    if config is not None:
        command += ["--config", str(config)]
    return [*command, "serve"]
