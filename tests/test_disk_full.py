"""A full disk under a running gateway: it says so, refuses what it cannot keep, and recovers by itself once space returns."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import aiohttp

from tests.support.gateway import complaint_body, post_complaint, running, settings
from tests.support.topic import of_type, read_topic, wait_for
from tests.test_webhook import assert_no_duplicate_ce_id


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk has no room left; return it."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as file:  # unbuffered: nothing left over to fail at close
        chunk = b"\0" * (256 * 1024)
        while True:
            try:
                file.write(chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    break
    os.sync()
    return ballast


async def test_a_full_disk_is_reported_refused_and_recovered_from_without_a_restart(small_disk: Path, kafka, topic):
    config = settings(small_disk, kafka.bootstrap, topic, attachments={"directory": str(small_disk / "attachments")})
    big = "Lost luggage, details follow. " * 3000  # ~90 kB: a complaint with a long pasted history
    accepted: list[str] = []
    refused = 0
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        for n in range(5):
            status, answer = await post_complaint(http, base, complaint_body(f"{n} {big}"), f"before-{n}")
            assert status == 202
            accepted.append(answer["reference"])
        ballast = fill(small_disk)
        reported = False
        for n in range(60):
            status, answer = await post_complaint(http, base, complaint_body(f"{n} {big}"), f"full-{n}")
            assert status in (202, 503), answer  # never a 5xx other than "try again", never a lie
            if status == 202:
                accepted.append(answer["reference"])
                continue
            refused += 1
            async with http.get(f"{base}/readyz") as response:
                body = await response.json()
                # Refused before a write fails (the spool saw the disk had no room) or after one did: either way, said.
                if response.status == 503 and (body["spool"]["full"] or body["spool"]["writable"] is False):
                    reported = True
                    break
        assert refused >= 1 and reported
        ballast.unlink()

        async def ready_again() -> bool:
            async with http.get(f"{base}/readyz") as response:
                return response.status == 200

        await wait_for(ready_again, timeout=20)
        for n in range(3):
            status, answer = await post_complaint(http, base, complaint_body(f"after {n}"), f"after-{n}")
            assert status == 202
            accepted.append(answer["reference"])
        await wait_for(lambda: _drained(gateway), timeout=30)
        restarts = {state.name: state.restarts for state in gateway.supervisor.states()}
        records = await read_topic(kafka.bootstrap, topic, expect=2 * len(accepted), timeout=30)
    assert restarts["publisher"] == 0 and restarts["replies"] == 0
    assert sorted(r.key for r in of_type(records, "received")) == sorted(accepted)
    assert_no_duplicate_ce_id(records)


async def _drained(gateway) -> bool:
    return gateway.spool.pending_events_count == 0 and gateway.spool.fault is None
