"""``intake serve --workers 2`` as real processes: both take complaints, a worker killed with -9 loses nothing
it acknowledged and is started again, and SIGTERM to the parent stops them all with exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from intake.workers import spools_beyond, worker_spool_path
from tests.support.gateway import complaint_body, free_port, post_complaint
from tests.support.topic import of_type, read_topic, wait_for
from tests.test_webhook import assert_no_duplicate_ce_id


def _config(tmp_path: Path, port: int, bootstrap: str, topic: str) -> Path:
    config = tmp_path / "intake.toml"
    config.write_text(
        f"""
log_format = "text"
drain_seconds = 0.5
[http]
port = {port}
[spool]
path = "{tmp_path / 'spool.sqlite3'}"
[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
stall_seconds = 1.0
[webhook.partners.acme]
secrets = ["s3cret-for-tests-only-0123456789"]
"""
    )
    return config


def _workers(parent: int) -> dict[int, int]:
    """Worker index to pid, from the parent's live children."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == parent and b"--worker-index" in argv:
            found[int(argv[argv.index(b"--worker-index") + 1])] = int(entry.name)
    return found


async def _answered_by_each(base: str, prefix: str, count: int) -> list[tuple[int, dict]]:
    # A new connection per request: the kernel spreads connections, not requests, across the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        return await asyncio.gather(*(post_complaint(http, base, complaint_body(f"{prefix} {n}"), f"{prefix}-{n}") for n in range(count)))


def _received_per_worker(page: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith('intake_received_total{channel="webhook",outcome="accepted"'):
            worker = line.split('worker="')[1].split('"')[0]
            counts[worker] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_two_workers_share_the_port_survive_kill_9_of_one_and_stop_together(tmp_path: Path, kafka, topic):
    broker = kafka.require_control()
    port = free_port()
    config = _config(tmp_path, port, kafka.bootstrap, topic)
    log = (tmp_path / "gateway.log").open("ab")
    parent = subprocess.Popen(
        [sys.executable, "-m", "intake.cli", "--config", str(config), "serve", "--workers", "2"], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"

    async def both_up() -> bool:
        assert parent.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
        return len(_workers(parent.pid)) == 2 and await _ready(base) and await _all_ready(base)

    try:
        await wait_for(both_up, timeout=60)
        first = await _answered_by_each(base, "first", 40)
        assert {status for status, _ in first} == {202}
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
            per_worker = _received_per_worker(await response.text())
        # One scrape, whichever worker answered it, shows both.
        assert set(per_worker) == {"0", "1"} and all(n > 0 for n in per_worker.values()) and sum(per_worker.values()) == 40
        assert worker_spool_path(tmp_path / "spool.sqlite3", 1).exists()
        await read_topic(kafka.bootstrap, topic, expect=2 * len(first), timeout=30, settle=0)

        # Kafka away: what the workers acknowledge now exists only in their spools.
        broker.stop()
        try:
            during = await _answered_by_each(base, "during", 40)
            assert {status for status, _ in during} == {202}
            before = _workers(parent.pid)
            os.kill(before[1], signal.SIGKILL)

            async def restarted() -> bool:
                now = _workers(parent.pid)
                return 1 in now and now[1] != before[1] and now[0] == before[0] and await _all_ready(base)

            await wait_for(restarted, timeout=30)
        finally:
            broker.start()
        accepted = {answer["reference"] for status, answer in first + during}
        records = await read_topic(kafka.bootstrap, topic, expect=2 * len(accepted), timeout=90, settle=2)

        parent.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(parent.wait, 60)
    finally:
        if parent.poll() is None:
            parent.kill()
        log.close()
    assert exit_code == 0, (tmp_path / "gateway.log").read_text()[-3000:]
    assert _workers(parent.pid) == {}
    assert {r.key for r in of_type(records, "received")} == accepted
    assert_no_duplicate_ce_id(of_type(records, "received"))


async def _all_ready(base: str) -> bool:
    """Both workers listen and are ready: one scrape, answered by either, says so for each."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
            page = await response.text()
    except aiohttp.ClientError:
        return False
    return all(f'intake_ready{{worker="{index}"}} 1.0' in page for index in (0, 1))


async def _ready(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_a_spool_of_a_worker_beyond_the_count_is_drained_by_worker_0(tmp_path: Path, kafka, topic):
    import datetime as dt

    from intake.events import complaint_event
    from intake.spool import Spool, Submission
    from intake.normalizer import webhook as normalizer

    # What a run with three workers left in worker 2's spool, Kafka having been away.
    left = worker_spool_path(tmp_path / "spool.sqlite3", 2)
    received_at = dt.datetime.now(dt.timezone.utc)
    complaint = normalizer.to_complaint(complaint_body(), partner="acme", idempotency_key="left-1", received_at=received_at)
    spool = Spool(left)
    await spool.open()
    await spool.accept(
        Submission(
            key=complaint.raw.spool_key, channel="webhook", reference=complaint.reference, raw=complaint_body(),
            raw_digest=complaint.raw.sha256, answer={"reference": complaint.reference},
            events=[complaint_event(complaint, topic=topic, source="urn:intake")],
        )
    )  # fmt: skip
    await spool.close()
    assert spools_beyond(tmp_path / "spool.sqlite3", 2) == [left]

    port = free_port()
    config = _config(tmp_path, port, kafka.bootstrap, topic)
    parent = subprocess.Popen([sys.executable, "-m", "intake.cli", "--config", str(config), "serve", "--workers", "2"])
    try:
        records = await read_topic(kafka.bootstrap, topic, expect=1, timeout=60)
    finally:
        parent.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(parent.wait, 60)
    assert exit_code == 0
    assert [r.key for r in of_type(records, "received")] == [complaint.reference]
    assert left.exists()  # the file stays: its raw messages and dead letters are kept for their retention
