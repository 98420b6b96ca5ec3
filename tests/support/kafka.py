"""A real single-node Kafka broker (KRaft) for the test suite.

All launch details (server.properties, storage format, JVM flags, readiness
probe, pid/log files) live in ``deploy/kafka/kafka.sh``; this module only
drives that script, so there is one source of truth for how the broker runs.

Layout of ``workdir``: server.properties, cluster.id, data/, kafka.log, kafka.pid.
The data and cluster id survive ``stop()``/``kill()``, so a later ``start()``
resumes the same log.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["KafkaBroker", "ensure_jars", "session_broker", "KAFKA_SH", "LIB_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
LIB_DIR = REPO_ROOT / "deploy" / "kafka" / "lib"

_FETCH_TIMEOUT = 900  # cold ~/.m2 downloads ~46 MB from Maven Central


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Readiness probe in kafka.sh uses this interpreter (stdlib only).
    env.setdefault("KAFKA_PYTHON", sys.executable)
    return subprocess.run(
        ["bash", str(KAFKA_SH), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=timeout,
    )


def ensure_jars() -> Path:
    """Fetch the broker jars from Maven Central (no-op when up to date); return the lib dir."""
    try:
        proc = _run_script(["fetch"], timeout=_FETCH_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"kafka.sh fetch timed out after {_FETCH_TIMEOUT}s") from e
    if proc.returncode != 0:
        raise RuntimeError(f"kafka.sh fetch failed (exit {proc.returncode}):\n{proc.stdout}")
    return LIB_DIR


def _pid_alive(pid: int) -> bool:
    """True for a live (non-zombie) kafka.Kafka process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


class KafkaBroker:
    """One broker+controller JVM, managed through deploy/kafka/kafka.sh."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        controller_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        if port is None:
            port = _free_port()
            if controller_port is None:
                controller_port = _free_port()
                while controller_port == port:
                    controller_port = _free_port()
        elif controller_port is None:
            controller_port = port + 1  # same default as kafka.sh
        self.port: int = port
        self.controller_port: int = controller_port
        self.bootstrap: str = f"127.0.0.1:{port}"

    # -- files -------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.workdir / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "kafka.pid"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    # -- lifecycle ---------------------------------------------------------
    def is_running(self) -> bool:
        pid = self._pid()
        return pid is not None and _pid_alive(pid)

    def start(self, timeout: float = 90) -> None:
        """Start (formatting storage on first start) and wait until a Metadata request succeeds."""
        if self.is_running():
            return
        ensure_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            "start",
            "--port", str(self.port),
            "--controller-port", str(self.controller_port),
            "--dir", str(self.workdir),
            "--timeout", str(max(1, int(timeout))),
        ]
        _live_brokers.add(self)
        try:
            proc = _run_script(args, timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"Kafka on {self.bootstrap} did not start within {timeout}s; "
                f"log tail ({self.log_file}):\n{self.log_tail()}"
            ) from None
        if proc.returncode != 0:
            self.kill()
            raise RuntimeError(
                f"Kafka on {self.bootstrap} failed to start (kafka.sh exit {proc.returncode}):\n"
                f"{proc.stdout}"
            )

    def stop(self, timeout: float = 20) -> None:
        """Graceful SIGTERM (controlled shutdown), SIGKILL after ``timeout`` seconds. Keeps data."""
        try:
            _run_script(
                ["stop", "--dir", str(self.workdir), "--timeout", str(max(1, int(timeout)))],
                timeout=timeout + 15,
            )
        except subprocess.TimeoutExpired:
            pass
        if self.is_running():  # belt and braces
            self.kill()
        _live_brokers.discard(self)

    def kill(self) -> None:
        """SIGKILL the broker (no clean shutdown). Keeps data."""
        pid = self._pid()
        if pid is not None and _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        _live_brokers.discard(self)

    def __repr__(self) -> str:
        return f"KafkaBroker(bootstrap={self.bootstrap!r}, workdir={str(self.workdir)!r})"


# Brokers started by this process; killed at interpreter exit if a test forgot them.
_live_brokers: set[KafkaBroker] = set()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_live_brokers):
        try:
            broker.kill()
        except Exception:
            pass


def session_broker(tmp_root: Path) -> tuple[str, KafkaBroker | None]:
    """Bootstrap servers for a test session.

    If KAFKA_BOOTSTRAP_SERVERS is set, use that external cluster and return
    ``(value, None)``. Otherwise start a broker under ``tmp_root/kafka`` and
    return ``(bootstrap, broker)``; the caller must ``broker.stop()`` it.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return external, None
    ensure_jars()
    broker = KafkaBroker(Path(tmp_root) / "kafka")
    broker.start()
    return broker.bootstrap, broker
