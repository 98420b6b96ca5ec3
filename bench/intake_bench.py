"""Benchmark: the durable gateway against non-durable baselines, all on the real Kafka broker, in one run.

Each server is its own process, driven by the same compiled load generator
(bench/loadgen, Go: built on first use; without Go, an aiohttp driver in this
process stands in, and takes much of the CPU the servers need). Rows:

- the webhook baseline (bench/baseline_app.py: aiohttp, ``send_and_wait``, nothing durable);
- the durable floor (bench/floor_app.py: the signature, the body as JSON, one group-committed SQLite write
  before the 202, then Kafka): what storing before answering costs on this stack, with nothing else;
- intake's webhook with the default number of workers, and with 1 and 2 workers;
- intake's webhook at half of its peak rate (open loop: p99 when not saturated);
- intake's webhook under 10x the clients (memory must stay flat);
- a bare aiosmtpd server that accepts and discards (bench/bare_smtpd.py), and intake's SMTP listener.

Figures per row: accepted per second, p50/p99 latency to the answer, the
server's CPU seconds (every process of it) per 1 000 accepted, the time from
the first request until all are on the topic and from the last answer until
then, peak RSS (summed over its processes), and the CPU it still spends
afterwards (the tail: acknowledgements sent by mail, for SMTP). ``--runs 3`` repeats every row
and prints medians; the goals of the project are checked against them.
Run with `make bench`; see --help for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gateway import complaint_body, free_port, signed_headers  # noqa: E402
from tests.support.kafka import session_broker  # noqa: E402
from tests.support.mail import complaint_mail  # noqa: E402
from tests.support.smtp_relay import CapturingRelay  # noqa: E402

SECRET = "s3cret-for-tests-only-0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the server's processes -----------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (a gateway's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU of the process and its live descendants so far."""
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of every core so far, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def peak_memory_mib(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("server exited during start")
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("server did not start")


async def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            await asyncio.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


# --- driving ------------------------------------------------------------------------------


@dataclass
class Drive:
    latencies: list[float]
    started: float  # wall clock
    last_answer: float
    finished: float
    statuses: dict[str, int] = field(default_factory=dict)


class LoadGenerator:
    """bench/loadgen, built once into a cache directory; None when Go is missing."""

    def __init__(self, directory: Path) -> None:
        self.binary: Path | None = None
        go = shutil.which("go")
        if go is None or os.environ.get("BENCH_PYTHON_DRIVER"):
            print("Go not found: driving from Python, which takes CPU from the servers", file=sys.stderr)
            return
        self.binary = directory / "loadgen"
        subprocess.run([go, "build", "-o", str(self.binary), "main.go"], cwd=ROOT / "bench" / "loadgen", check=True)
        self._directory = directory

    def _bodies(self, name: str, bodies: list[bytes]) -> Path:
        path = self._directory / f"{name}.bodies"
        with path.open("wb") as file:
            for body in bodies:
                file.write(struct.pack(">I", len(body)))
                file.write(body)
        return path

    async def run(self, arguments: list[str], bodies: Path) -> Drive:
        assert self.binary is not None
        process = await asyncio.create_subprocess_exec(
            str(self.binary), *arguments, "-bodies", str(bodies), stdout=subprocess.PIPE
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"the load generator failed ({process.returncode})")
        report = json.loads(output)
        if report["errors"]:
            print(f"load generator errors: {report['errors'][:3]}", file=sys.stderr)
        return Drive(report["latencies"], report["started"], report["last_answer"], report["finished"], report["statuses"])


WEBHOOK_BODIES = 2000  # distinct bodies, cycled; the Idempotency-Key makes every request a new complaint

# What complaints look like: a few sentences to a few paragraphs, in the languages the gateway answers in. Every cost
# that grows with the text (language, the status-request check, validation, the record's JSON) is paid as in
# production; a one-line text would hide them.
_COMPLAINT_TEXTS = (
    "The parcel I ordered on Monday arrived with the box crushed and the lamp inside in pieces. The driver left it at "
    "the door without ringing. I would like a replacement or my money back.",
    "Dzień dobry, zamówiłam pralkę 3 tygodnie temu i do dziś nie dotarła. Infolinia za każdym razem obiecuje "
    "oddzwonić, ale nikt tego nie robi. Proszę o informację, kiedy pralka zostanie dostarczona, albo o zwrot "
    "pieniędzy. Mam małe dzieci i bez pralki jest bardzo ciężko.",
    "Sehr geehrte Damen und Herren, seit dem Umzug wird mir der Grundpreis doppelt berechnet, obwohl der alte "
    "Vertrag zum 30. gekündigt wurde. Ich habe das bereits zweimal telefonisch gemeldet. Bitte erstatten Sie die "
    "zu viel gezahlten Beträge und bestätigen Sie mir die Kündigung schriftlich. " * 2,
    "Hola, el técnico tenía que venir el martes entre las 9 y las 14 y no apareció ni avisó. Perdí un día de "
    "trabajo esperando. Quiero una nueva cita y una compensación por las molestias.",
    "Bonjour, ma carte a été débitée deux fois pour la même commande. Votre service client me dit d'attendre "
    "dix jours, mais cela fait maintenant trois semaines. Je demande le remboursement du second paiement.",
    ("I have been a customer for eleven years and this is the first time I write a complaint. On the 4th my "
     "internet connection stopped working; the support line kept me on hold for over an hour on three separate "
     "days, and each time the call was dropped before I could speak to anyone. A technician was booked, did not "
     "come, and the appointment was then cancelled without telling me. I work from home, so I have lost several "
     "days of work and had to pay for mobile data to keep going. ") * 3,
)


def complaint_text(n: int) -> str:
    return f"{_COMPLAINT_TEXTS[n % len(_COMPLAINT_TEXTS)]} (order {100000 + n})"


async def drive_webhook(generator: LoadGenerator, base: str, requests: int, clients: int, rate: float = 0.0) -> Drive:
    bodies = [complaint_body(complaint_text(n)) for n in range(min(requests, WEBHOOK_BODIES))]
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    if generator.binary is not None:
        path = generator._bodies("webhook", bodies)
        arguments = ["-mode", "webhook", "-target", f"{base}/webhook/acme", "-count", str(requests), "-clients", str(clients),
                     "-secret", SECRET, "-key-prefix", prefix, "-rate", str(rate)]  # fmt: skip
        return await generator.run(arguments, path)
    return await _python_webhook(base, bodies, prefix, requests, clients)


async def _python_webhook(base: str, bodies: list[bytes], prefix: str, requests: int, clients: int) -> Drive:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    last = 0.0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            nonlocal last
            while not queue.empty():
                n = queue.get_nowait()
                body = bodies[n % len(bodies)]
                began = time.perf_counter()
                async with session.post(f"{base}/webhook/acme", data=body, headers=signed_headers(body, f"{prefix}-{n}", secret=SECRET)) as response:
                    await response.read()
                    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
                    if response.status == 202:
                        latencies.append(time.perf_counter() - began)
                        last = time.time()

        started = time.time()
        await asyncio.gather(*(client() for _ in range(clients)))
    return Drive(latencies, started, last, time.time(), statuses)


def smtp_mails(messages: int) -> list[bytes]:
    return [
        complaint_mail(
            complaint_text(n), sender=f"Customer {n} <customer{n}@bench.test>", to="complaints@example.test"
        ).as_bytes()
        for n in range(messages)
    ]


async def drive_smtp(generator: LoadGenerator, port: int, messages: int, clients: int) -> Drive:
    mails = smtp_mails(messages)
    if generator.binary is not None:
        path = generator._bodies("smtp", mails)
        arguments = ["-mode", "smtp", "-target", f"127.0.0.1:{port}", "-count", str(messages), "-clients", str(clients)]
        return await generator.run(arguments, path)
    import aiosmtplib

    latencies: list[float] = []
    last = 0.0

    async def client(share: list[int]) -> None:
        nonlocal last
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
        await smtp.connect()
        try:
            for n in share:
                began = time.perf_counter()
                await smtp.sendmail(f"customer{n}@bench.test", ["complaints@example.test"], mails[n])
                latencies.append(time.perf_counter() - began)
                last = time.time()
        finally:
            await smtp.quit()

    started = time.time()
    await asyncio.gather(*(client(list(range(i, messages, clients))) for i in range(min(clients, messages))))
    return Drive(latencies, started, last, time.time(), {"250": len(latencies)})


async def on_topic_at(bootstrap: str, topic: str, expect: int, timeout: float = 300) -> float:
    """The wall-clock time at which ``expect`` complaint records were on the topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen = 0
    try:
        deadline = time.monotonic() + timeout
        while seen < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            for messages in batches.values():
                for m in messages:
                    ce_type = dict(m.headers).get("ce_type", b"").decode()
                    if ce_type == "" or ce_type.startswith("intake.complaint.received"):
                        seen += 1
    finally:
        await consumer.stop()
    if seen < expect:
        raise RuntimeError(f"only {seen} of {expect} on the topic")
    return time.time()


async def cpu_until_idle(pid: int, *, idle: float = 0.05, limit: float = 60.0) -> tuple[float, float]:
    """CPU seconds the server still spends once its work is on the topic (acknowledgements by mail, pruning),
    and for how long, until it uses under ``idle`` of a core for a second (or ``limit`` seconds)."""
    started, begin = time.monotonic(), cpu_seconds(pid)
    last, quiet_since = begin, time.monotonic()
    while time.monotonic() - started < limit:
        await asyncio.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last > idle * 0.25:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
        last = now
    return last - begin, max(0.0, quiet_since - started)


def figures(drive: Drive, cpu: float, on_topic: float | None, memory: float, tail: tuple[float, float] = (0.0, 0.0)) -> dict[str, float]:
    """The printed figures of one run; every latency is one accepted message."""
    latencies = sorted(drive.latencies)
    accepted = len(latencies)
    elapsed = drive.last_answer - drive.started
    return {
        "accepted_per_s": accepted / elapsed if elapsed > 0 else float("nan"),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(accepted * 0.99) - 1)] * 1000,
        "cpu_s_per_1000": cpu / accepted * 1000,
        "all_on_topic_s": float("nan") if on_topic is None else on_topic - drive.started,
        "after_last_s": float("nan") if on_topic is None else on_topic - drive.last_answer,
        "peak_rss_mib": memory,
        "tail_cpu_s": tail[0],
        "tail_s": tail[1],
        "refused": float(sum(n for status, n in drive.statuses.items() if status not in ("202", "250"))),
    }


def refused_warm_up(name: str, warm: Drive, accepted: str) -> None:
    """A warm-up the server refuses (a signature scheme the driver does not speak, a bad configuration)
    would make every figure after it a measure of refusals: stop the benchmark, saying what it answered."""
    refused = {status: n for status, n in warm.statuses.items() if status != accepted}
    if refused:
        raise RuntimeError(f"{name} refused the warm-up ({refused}); see its log in {tempfile.gettempdir()}/bench-{name}.log")


# --- the servers ------------------------------------------------------------------------


class Server:
    """One server process for one row, its log in the temporary directory."""

    def __init__(self, name: str, command: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.log = open(Path(tempfile.gettempdir()) / f"bench-{name}.log", "wb")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})}
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def gateway_config(directory: Path, port: int, bootstrap: str, topic: str, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "intake.toml"
    path.write_text(
        f"""
log_level = "WARNING"
[http]
port = {port}
[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
[spool]
path = "{directory / 'spool.sqlite3'}"
[webhook.partners.acme]
secrets = ["{SECRET}"]
{extra}"""
    )
    return path


@dataclass
class Bench:
    root: Path
    bootstrap: str
    generator: LoadGenerator
    args: argparse.Namespace

    def intake_command(self, config: Path, workers: int | None) -> list[str]:
        command = [sys.executable, "-m", "intake.cli", "--config", str(config), "serve"]
        if workers is not None:
            command += ["--workers", str(workers)]
        return command

    async def measure(
        self,
        server: Server,
        start_drive: Callable[[], Awaitable[Drive]],
        topic: str | None,
        expect_before: int,
    ) -> dict[str, float]:
        pid = server.process.pid
        if topic is not None and expect_before:
            # The measured run starts once the warm-up is wholly on the topic: not while the server still publishes
            # it, and not while the broker still settles the new topic's partitions.
            await on_topic_at(self.bootstrap, topic, expect_before)
        cpu_before = cpu_seconds(pid)
        machine_before = machine_cpu()
        result = await start_drive()
        accepted = len(result.latencies)
        on_topic = None
        if topic is not None:
            on_topic = await on_topic_at(self.bootstrap, topic, expect_before + accepted)
        cpu = cpu_seconds(pid) - cpu_before
        busy, total = (after - before for after, before in zip(machine_cpu(), machine_before, strict=True))
        memory = peak_memory_mib(pid)
        row = figures(result, cpu, on_topic, memory, await cpu_until_idle(pid))
        # How busy the machine's cores were meanwhile (the server, the broker, the load generator and anything else):
        # near 100 %, the figures measure the machine as much as the server.
        row["machine_busy_pct"] = 100.0 * busy / total if total else float("nan")
        row["load_1m"] = os.getloadavg()[0]
        return row

    async def webhook_row(
        self, name: str, command: list[str], port: int, topic: str, *, clients: int, cwd: Path = ROOT, rate: float = 0.0, requests: int | None = None
    ) -> dict[str, float]:
        server = Server(name, command, cwd=cwd, env={"PYTHONPATH": str(cwd)})
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_healthy(base, server.process)
            warm = await drive_webhook(self.generator, base, 400, min(clients, 64))  # connections, topic metadata, caches
            refused_warm_up(name, warm, "202")
            count = requests or self.args.requests
            return await self.measure(
                server, lambda: drive_webhook(self.generator, base, count, clients, rate), topic, len(warm.latencies)
            )
        finally:
            server.stop()

    async def baseline(self) -> dict[str, float]:
        topic, port = f"bench-baseline-{uuid.uuid4().hex[:8]}", free_port()
        command = [sys.executable, str(ROOT / "bench/baseline_app.py"), self.bootstrap, topic, str(port)]
        return await self.webhook_row("baseline", command, port, topic, clients=self.args.concurrency)

    async def floor(self) -> dict[str, float]:
        topic, port = f"bench-floor-{uuid.uuid4().hex[:8]}", free_port()
        command = [sys.executable, str(ROOT / "bench/floor_app.py"), self.bootstrap, topic, str(port)]
        return await self.webhook_row("floor", command, port, topic, clients=self.args.concurrency)

    async def intake_webhook(self, name: str, workers: int | None, *, clients: int, rate: float = 0.0, tree: Path = ROOT, requests: int | None = None) -> dict[str, float]:
        topic, port = f"bench-intake-{uuid.uuid4().hex[:8]}", free_port()
        config = gateway_config(self.root / f"gw-{uuid.uuid4().hex[:8]}", port, self.bootstrap, topic)
        return await self.webhook_row(
            name, self.intake_command(config, workers), port, topic, clients=clients, cwd=tree, rate=rate, requests=requests
        )

    async def bare_smtp(self) -> dict[str, float]:
        port = free_port()
        server = Server("bare-smtpd", [sys.executable, str(ROOT / "bench/bare_smtpd.py"), str(port)])
        try:
            await wait_port(port, server.process)
            await drive_smtp(self.generator, port, 100, self.args.smtp_clients)
            return await self.measure(
                server, lambda: drive_smtp(self.generator, port, self.args.smtp_messages, self.args.smtp_clients), None, 0
            )
        finally:
            server.stop()

    async def intake_smtp(self, name: str, workers: int | None, tree: Path = ROOT) -> dict[str, float]:
        topic, port, smtp_port = f"bench-smtp-{uuid.uuid4().hex[:8]}", free_port(), free_port()
        relay = CapturingRelay()
        relay.start()
        extra = f"""
[email.smtp]
enabled = true
port = {smtp_port}
accept = ["@example.test"]
[email.relay]
host = "127.0.0.1"
port = {relay.port}
security = "none"
from_address = "complaints@example.test"
[email.limits]
# Every mail answered, as an operator expecting this volume would configure it: the defaults (100 per domain,
# 1 000 in all per 10 minutes) would suppress most of the benchmark's acknowledgements.
acknowledgements_per_domain = 1000000
acknowledgements_total = 1000000
"""
        config = gateway_config(self.root / f"smtp-{uuid.uuid4().hex[:8]}", port, self.bootstrap, topic, extra)
        server = Server(name, self.intake_command(config, workers), cwd=tree, env={"PYTHONPATH": str(tree)})
        try:
            await wait_healthy(f"http://127.0.0.1:{port}", server.process)
            await wait_port(smtp_port, server.process)
            warm = await drive_smtp(self.generator, smtp_port, 100, self.args.smtp_clients)
            refused_warm_up(name, warm, "250")
            return await self.measure(
                server,
                lambda: drive_smtp(self.generator, smtp_port, self.args.smtp_messages, self.args.smtp_clients),
                topic,
                len(warm.latencies),
            )
        finally:
            server.stop()
            relay.stop()


COLUMNS = [
    "accepted_per_s", "p50_ms", "p99_ms", "cpu_s_per_1000", "all_on_topic_s", "after_last_s", "peak_rss_mib", "tail_cpu_s", "tail_s",
    "refused", "machine_busy_pct", "load_1m",
]  # fmt: skip


def medians(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
    for name in runs[0]:
        result[name] = {c: statistics.median(run[name][c] for run in runs if name in run) for c in COLUMNS}
    return result


def print_table(results: dict[str, dict[str, float]]) -> None:
    widths = [max(15, len(c) + 2) for c in COLUMNS]
    print(f"{'server':<34}" + "".join(f"{c:>{w}}" for c, w in zip(COLUMNS, widths, strict=True)))
    for name, row in results.items():
        print(f"{name:<34}" + "".join(f"{row[c]:>{w}.2f}" for c, w in zip(COLUMNS, widths, strict=True)))
    print("(tail: CPU seconds spent, and for how long, once all was on the topic: e.g. acknowledgements by mail)")


def goals(results: dict[str, dict[str, float]], default_name: str) -> list[tuple[str, bool, str]]:
    """The project's performance goals against this run's medians: (goal, met, the figures)."""
    checks: list[tuple[str, bool, str]] = []
    base, intake = results.get("webhook baseline"), results.get(default_name)
    if base and intake:
        ratio = intake["accepted_per_s"] / base["accepted_per_s"]
        checks.append(("webhook accepted/s >= 1.0x the baseline", ratio >= 1.0, f"{ratio:.2f}x"))
        cpu = intake["cpu_s_per_1000"] / base["cpu_s_per_1000"]
        checks.append(("webhook CPU per complaint <= 2.5x the baseline's", cpu <= 2.5, f"{cpu:.2f}x"))
    half = results.get("intake webhook, half of peak")
    if half:
        checks.append(("webhook p99 <= 50 ms at half of peak", half["p99_ms"] <= 50, f"{half['p99_ms']:.0f} ms"))
    overload = results.get("intake webhook, 10x clients")
    if overload and intake:
        growth = overload["peak_rss_mib"] / intake["peak_rss_mib"]
        checks.append(("memory flat under 10x overload (peak RSS within 1.25x)", growth <= 1.25, f"{growth:.2f}x, p99 {overload['p99_ms']:.0f} ms"))
    bare, smtp = results.get("bare aiosmtpd (discard)"), results.get("intake SMTP (250)")
    if bare and smtp:
        ratio = smtp["accepted_per_s"] / bare["accepted_per_s"]
        checks.append(("SMTP accepted/s >= 0.7x bare aiosmtpd", ratio >= 0.7, f"{ratio:.2f}x"))
    if smtp:
        checks.append(("SMTP: all mails on the topic within 2 s of the last 250", smtp["after_last_s"] <= 2.0, f"{smtp['after_last_s']:.1f} s"))
    return checks


async def one_run(bench: Bench, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    default = f"intake webhook ({os.cpu_count()} workers, default)"
    results["webhook baseline"] = await bench.baseline()
    results["durable floor (signed, stored, relayed)"] = await bench.floor()
    results[default] = await bench.intake_webhook("intake-default", None, clients=args.concurrency)
    if not args.quick:
        results["intake webhook, 1 worker"] = await bench.intake_webhook("intake-1", 1, clients=args.concurrency)
        results["intake webhook, 2 workers"] = await bench.intake_webhook("intake-2", 2, clients=args.concurrency)
    for tree in args.compare:
        results[f"intake webhook @ {tree.name}"] = await bench.intake_webhook(f"intake-{tree.name}", None, clients=args.concurrency, tree=tree)
    if not args.quick:
        rate = results[default]["accepted_per_s"] / 2
        results["intake webhook, half of peak"] = await bench.intake_webhook(
            "intake-half", None, clients=args.concurrency, rate=rate, requests=min(args.requests, int(rate * 10))
        )
        results["intake webhook, 10x clients"] = await bench.intake_webhook("intake-overload", None, clients=10 * args.concurrency)
    if args.smtp_messages:
        results["bare aiosmtpd (discard)"] = await bench.bare_smtp()
        results["intake SMTP (250)"] = await bench.intake_smtp("intake-smtp", None)
        for tree in args.compare:
            results[f"intake SMTP @ {tree.name}"] = await bench.intake_smtp(f"intake-smtp-{tree.name}", None, tree=tree)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="signed webhook requests per row")
    parser.add_argument("--concurrency", type=int, default=64, help="webhook clients (10x for the overload row)")
    parser.add_argument("--smtp-messages", type=int, default=2000, help="mails per SMTP row; 0 skips SMTP")
    parser.add_argument("--smtp-clients", type=int, default=16, help="SMTP connections")
    parser.add_argument("--runs", type=int, default=3, help="repeat every row; medians are printed")
    parser.add_argument("--quick", action="store_true", help="only the baselines and intake with its defaults")
    parser.add_argument(
        "--compare", type=Path, action="append", default=[],
        help="also run intake from this source tree (e.g. an export of an older commit), side by side",
    )  # fmt: skip
    args = parser.parse_args()
    args.compare = [path.resolve() for path in args.compare]
    with tempfile.TemporaryDirectory(prefix="intake-bench-") as tmp:
        root = Path(tmp)
        bootstrap, broker = session_broker(root / "kafka")
        try:
            bench = Bench(root, bootstrap, LoadGenerator(root), args)
            runs = []
            for n in range(args.runs):
                runs.append(await one_run(bench, args))
                print(f"\nrun {n + 1} of {args.runs}", file=sys.stderr)
                print_table(runs[-1])
            results = medians(runs)
            driver = "the compiled load generator (bench/loadgen)" if bench.generator.binary else "an aiohttp driver in the benchmark's process"
            print(
                f"\nMedians of {args.runs}: {args.requests} signed webhook complaints from {args.concurrency} clients; "
                f"{args.smtp_messages} mails over {args.smtp_clients} SMTP connections; {driver}; "
                f"real Kafka broker; {os.cpu_count()} cores shared by all\n"
            )
            print_table(results)
            print()
            for goal, met, detail in goals(results, f"intake webhook ({os.cpu_count()} workers, default)"):
                print(f"  [{'met' if met else 'NOT met'}] {goal}: {detail}")
            base, floor = results["webhook baseline"], results["durable floor (signed, stored, relayed)"]
            print(
                f"  (the durable floor, storing before it answers and nothing more, spends "
                f"{floor['cpu_s_per_1000'] / base['cpu_s_per_1000']:.2f}x the baseline's CPU per request)"
            )
            print("\n" + json.dumps({"medians": results, "runs": runs}))
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
