"""Benchmark: the durable gateway against a non-durable baseline, both on the real Kafka broker.

Drives each server (a separate process) with concurrent signed webhook
requests and prints: complaints accepted per second, p50/p99 latency to the
202, the time until all are on the topic, and the server's peak memory.
Run with `make bench`; options: --requests, --concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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


def peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
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
            await asyncio.sleep(0.1)
    raise TimeoutError("server did not start")


async def count_on_topic(bootstrap: str, topic: str, expect: int, started: float, timeout: float = 300) -> float:
    """Seconds from the first request until ``expect`` complaint records are on the topic."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen = 0
    try:
        deadline = time.monotonic() + timeout
        while seen < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batches.values():
                for m in messages:
                    ce_type = dict(m.headers).get("ce_type", b"").decode()
                    if ce_type == "" or ce_type.startswith("intake.complaint.received"):
                        seen += 1
    finally:
        await consumer.stop()
    if seen < expect:
        raise RuntimeError(f"only {seen} of {expect} on the topic")
    return time.perf_counter() - started


async def drive(base: str, requests: int, concurrency: int) -> tuple[list[float], float, float]:
    bodies = [complaint_body(f"Benchmark complaint {n}") for n in range(requests)]
    keys = [f"bench-{uuid.uuid4().hex}" for _ in range(requests)]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                headers = signed_headers(bodies[n], keys[n], secret=SECRET)
                began = time.perf_counter()
                async with session.post(f"{base}/webhook/acme", data=bodies[n], headers=headers) as response:
                    await response.read()
                    if response.status != 202:
                        raise RuntimeError(f"HTTP {response.status}")
                latencies.append(time.perf_counter() - began)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed, started


def figures(latencies: list[float], elapsed: float, on_topic: float, memory: float) -> dict[str, float]:
    """The printed figures of one run; every latency is one accepted message."""
    latencies = sorted(latencies)
    return {
        "accepted_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "all_on_topic_s": on_topic,
        "peak_rss_mib": memory,
    }


async def drive_smtp(port: int, messages: int, concurrency: int) -> tuple[list[float], float, float]:
    """Concurrent SMTP clients, each on one connection sending its share, as an MTA does."""
    import aiosmtplib

    mails = [
        complaint_mail(f"Benchmark complaint {n}", sender=f"Customer {n} <customer{n}@bench.test>", to="complaints@example.test").as_bytes()
        for n in range(messages)
    ]
    latencies: list[float] = []
    shares = [list(range(i, messages, concurrency)) for i in range(concurrency)]

    async def client(share: list[int]) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
        await smtp.connect()
        try:
            for n in share:
                began = time.perf_counter()
                await smtp.sendmail(f"customer{n}@bench.test", ["complaints@example.test"], mails[n])
                latencies.append(time.perf_counter() - began)
        finally:
            await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares if share))
    return latencies, time.perf_counter() - started, started


async def run_smtp(root: Path, bootstrap: str, messages: int, concurrency: int) -> dict[str, float]:
    topic = f"bench-smtp-{uuid.uuid4().hex[:8]}"
    port, smtp_port = free_port(), free_port()
    relay = CapturingRelay()
    relay.start()
    config = gateway_config(root, port, bootstrap, topic)
    config.write_text(
        config.read_text()
        + f"""
[email.smtp]
enabled = true
port = {smtp_port}
accept = ["@example.test"]
[email.relay]
host = "127.0.0.1"
port = {relay.port}
security = "none"
from_address = "complaints@example.test"
"""
    )
    log = open(Path(tempfile.gettempdir()) / "bench-smtp.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "intake.cli", "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", process)
        print(f"smtp gateway started: peak RSS {peak_memory_mib(process.pid):.0f} MiB", file=sys.stderr)
        await drive_smtp(smtp_port, 100, concurrency)  # warm-up
        print(f"after warm-up: peak RSS {peak_memory_mib(process.pid):.0f} MiB", file=sys.stderr)
        latencies, elapsed, started = await drive_smtp(smtp_port, messages, concurrency)
        on_topic = await count_on_topic(bootstrap, topic, 100 + messages, started)
        memory = peak_memory_mib(process.pid)
    finally:
        process.terminate()
        process.wait(60)
        log.close()
        relay.stop()
    return figures(latencies, elapsed, on_topic, memory)


async def run_server(name: str, command: list[str], port: int, bootstrap: str, topic: str, requests: int, concurrency: int, env: dict[str, str] | None = None) -> dict[str, float]:
    log = open(Path(tempfile.gettempdir()) / f"bench-{name}.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    profiler = None
    try:
        await wait_healthy(base, process)
        if os.environ.get("BENCH_PROFILE") == name:
            profiler = subprocess.Popen(["py-spy", "record", "--pid", str(process.pid), "--format", "raw", "-o", f"/tmp/bench-{name}.folded", "--threads", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await drive(base, 200, concurrency)  # warm-up: connections, topic metadata
        warm_topic_count = 200
        latencies, elapsed, started = await drive(base, requests, concurrency)
        on_topic = await count_on_topic(bootstrap, topic, warm_topic_count + requests, started)
        memory = peak_memory_mib(process.pid)
    finally:
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
        process.terminate()
        process.wait(60)
        log.close()
    return figures(latencies, elapsed, on_topic, memory)


def gateway_config(directory: Path, port: int, bootstrap: str, topic: str) -> Path:
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
"""
    )
    return path


def print_table(results: dict[str, dict[str, float]]) -> None:
    columns = ["accepted_per_s", "p50_ms", "p99_ms", "all_on_topic_s", "peak_rss_mib"]
    print(f"{'server':<24}" + "".join(f"{c:>16}" for c in columns))
    for name, figures in results.items():
        print(f"{name:<24}" + "".join(f"{figures[c]:>16.1f}" for c in columns))
    if "baseline (send_and_wait)" in results and "intake webhook" in results:
        ratio = results["intake webhook"]["accepted_per_s"] / results["baseline (send_and_wait)"]["accepted_per_s"]
        print(f"\nintake / baseline throughput: {ratio:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--smtp-messages", type=int, default=2000)
    parser.add_argument("--smtp-clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="intake-bench-") as tmp:
        root = Path(tmp)
        bootstrap, broker = session_broker(root / "kafka")
        try:
            results: dict[str, dict[str, float]] = {}
            topic = f"bench-baseline-{uuid.uuid4().hex[:8]}"
            port = free_port()
            results["baseline (send_and_wait)"] = await run_server(
                "baseline", [sys.executable, str(ROOT / "bench/baseline_app.py"), bootstrap, topic, str(port)],
                port, bootstrap, topic, args.requests, args.concurrency,
            )
            topic = f"bench-intake-{uuid.uuid4().hex[:8]}"
            port = free_port()
            (root / "gw").mkdir()
            config = gateway_config(root / "gw", port, bootstrap, topic)
            results["intake webhook"] = await run_server(
                "intake", [sys.executable, "-m", "intake.cli", "--config", str(config), "serve"],
                port, bootstrap, topic, args.requests, args.concurrency,
            )
            (root / "smtp").mkdir()
            results["intake SMTP (250)"] = await run_smtp(root / "smtp", bootstrap, args.smtp_messages, args.smtp_clients)
            print(f"\n{args.requests} signed webhook complaints from {args.concurrency} concurrent clients; "
                  f"{args.smtp_messages} mails from {args.smtp_clients} SMTP connections; real Kafka broker, {os.cpu_count()} cores\n")
            print_table(results)
            print("\n" + json.dumps(results))
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
