"""The spool on a small disk: bounded by its own limits, and never wedged by a full disk."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from intake.errors import SpoolFull, TemporaryFailure
from intake.spool import Event, Spool, Submission

MB = 1024 * 1024
RAW_BYTES = 90_000  # a mail with a small attachment, as users sent them


@pytest.fixture
def disk(small_disk: Path) -> Path:
    """The 20 MB tmpfs of tests/conftest.py, under the name these tests use."""
    return small_disk


def complaint(n: int, *, dead_letter: bool = False) -> Submission:
    raw = (b"%08d" % n) * (RAW_BYTES // 8)
    return Submission(
        key=f"email:<{n}@example.com>",
        channel="email",
        reference=f"C-0000-{n:04d}",
        raw=raw,
        raw_digest=str(n),
        answer={"reference": f"C-0000-{n:04d}"},
        events=[Event(topic="complaints", key=b"C", value=b"{}" * 2000, headers=[("ce_id", str(n).encode())])],
        dead_letter=dead_letter,
    )


async def publish(spool: Spool, published: set[str]) -> int:
    """What the publisher does once Kafka has the events: read the outbox in order, mark them published."""
    batch = await spool.pending_events(after_seq=0, limit=1000)
    await spool.mark_published([e.seq for e in batch])
    published.update(dict(e.headers)["ce_id"].decode() for e in batch)
    return len(batch)


async def pending_ids(spool: Spool) -> set[str]:
    return {dict(e.headers)["ce_id"].decode() for e in await spool.pending_events(after_seq=0, limit=100_000)}


def footprint(path: Path) -> int:
    """Bytes the spool takes on its disk: the file, its WAL and shared memory, the reserve."""
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


class Ballast:
    """Another tenant of the disk filling it to the last byte."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "ballast"

    def fill(self) -> None:
        with self.path.open("ab", buffering=0) as file:
            free = os.statvfs(self.path.parent).f_bavail * os.statvfs(self.path.parent).f_frsize
            if free:
                os.posix_fallocate(file.fileno(), file.tell(), free)
            try:
                while True:
                    file.write(b"\0" * 4096)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise

    def remove(self) -> None:
        self.path.unlink()


async def test_retention_gives_way_so_complaints_keep_coming_in_on_a_full_disk(disk: Path):
    spool = Spool(disk / "spool.sqlite3")  # the default bound is far larger than this disk: the disk binds
    await spool.open()
    accepted: set[str] = set()
    published: set[str] = set()
    try:
        for n in range(600):  # about five times what the disk holds
            await spool.accept(complaint(n))
            accepted.add(str(n))
            if n % 5 == 4:
                await publish(spool, published)
            assert spool.fault is None
        status = await spool.status()
        assert await spool.has_message(complaint(599).key)
        assert published | await pending_ids(spool) == accepted  # nothing accepted was lost
    finally:
        await spool.close()
    assert status.messages < 200, "old raw messages should have been pruned inside retention"
    assert status.total_bytes <= 20 * MB


async def test_with_kafka_away_a_full_disk_pushes_back_and_takes_complaints_again_once_published(disk: Path):
    path = disk / "spool.sqlite3"
    spool = Spool(path)
    await spool.open()
    accepted: set[str] = set()
    published: set[str] = set()
    try:
        with pytest.raises(SpoolFull):
            for n in range(1000):  # Kafka is away: nothing is published, nothing can give way
                await spool.accept(complaint(n))
                accepted.add(str(n))
        assert len(accepted) > 50
        assert spool.is_full()
        assert await pending_ids(spool) == accepted
    finally:
        await spool.close()

    # A restart on that disk drains without republishing (the wedge users saw: every restart republished).
    spool = Spool(path)
    await spool.open()
    try:
        assert spool.pending_events_count == len(accepted)
        while await publish(spool, published):
            pass
        assert published == accepted
    finally:
        await spool.close()
    spool = Spool(path)
    await spool.open()
    try:
        assert spool.pending_events_count == 0
        for n in range(1000, 1300):  # and it takes complaints again, with no operator action
            await spool.accept(complaint(n))
            accepted.add(str(n))
            await publish(spool, published)
        assert not spool.is_full() and spool.fault is None
        assert published == accepted
    finally:
        await spool.close()


async def test_max_total_bytes_bounds_the_spool_on_disk(tmp_path: Path):
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_total_bytes=16 * MB)
    await spool.open()
    published: set[str] = set()
    largest = 0
    try:
        for n in range(400):
            await spool.accept(complaint(n))
            await publish(spool, published)
            largest = max(largest, footprint(path))
        status = await spool.status()
    finally:
        await spool.close()
    assert largest <= 16 * MB, f"the spool took {largest / MB:.1f} MB on disk against a bound of 16 MB"
    assert status.total_bytes <= 16 * MB and status.capacity_total_bytes == 16 * MB
    assert len(published) == 400


async def test_dead_letters_are_kept_and_counted_and_when_they_fill_the_spool_it_pushes_back(tmp_path: Path):
    spool = Spool(tmp_path / "spool.sqlite3", max_total_bytes=16 * MB)
    await spool.open()
    published: set[str] = set()
    kept = 0
    try:
        with pytest.raises(SpoolFull, match="dead letters"):
            for n in range(1000):
                await spool.accept(complaint(n, dead_letter=True))
                await publish(spool, published)
                kept += 1
        with pytest.raises(SpoolFull, match="dead letters"):
            await spool.accept(complaint(5000))
        status = await spool.status()
    finally:
        await spool.close()
    assert kept > 20
    assert status.dead_letters == status.messages == kept, "a dead letter is the only copy of its message: never pruned"
    assert status.total_bytes <= 16 * MB


@pytest.mark.parametrize("reserve_bytes", [None, 0], ids=["with the reserve", "without a reserve"])
async def test_marking_published_works_when_the_disk_fills_and_the_fault_shows_meanwhile(disk: Path, reserve_bytes: int | None):
    options = {} if reserve_bytes is None else {"reserve_bytes": reserve_bytes}
    spool = Spool(disk / "spool.sqlite3", **options)
    await spool.open()
    ballast = Ballast(disk)
    try:
        for n in range(15):
            await spool.accept(complaint(n))
        assert spool.fault is None
        ballast.fill()
        seqs = [e.seq for e in await spool.pending_events(after_seq=0, limit=100)]
        try:
            await spool.mark_published(seqs)
            marked = True
        except TemporaryFailure:  # no reserve to fall back on: the publisher retries later
            marked = False
        assert marked == (reserve_bytes is None)
        assert spool.fault is not None and "disk full" in spool.fault
        with pytest.raises(SpoolFull):  # what room there is belongs to publishing
            await spool.accept(complaint(100))

        ballast.remove()
        freed = time.monotonic()
        if not marked:
            await spool.mark_published(seqs)
        await spool.housekeep()
        assert spool.fault is None
        await spool.accept(complaint(101))
        recovered = time.monotonic() - freed
        assert [e.headers for e in await spool.pending_events(after_seq=0, limit=100)] == [[("ce_id", b"101")]]
    finally:
        await spool.close()
    assert recovered < 1.0


async def test_a_spool_reopens_on_a_full_disk_and_does_not_republish(disk: Path):
    path = disk / "spool.sqlite3"
    spool = Spool(path)
    await spool.open()
    for n in range(15):
        await spool.accept(complaint(n))
    batch = await spool.pending_events(after_seq=0, limit=10)
    await spool.mark_published([e.seq for e in batch])
    await spool.close()

    ballast = Ballast(disk)
    ballast.fill()
    spool = Spool(path)
    await spool.open()  # on a disk full to the last byte
    try:
        assert await pending_ids(spool) == {str(n) for n in range(10, 15)}
        assert spool.fault is not None and "disk full" in spool.fault
        await spool.mark_published([e.seq for e in await spool.pending_events(after_seq=0, limit=10)])
    finally:
        await spool.close()

    spool = Spool(path)
    await spool.open()
    try:
        assert await pending_ids(spool) == set()
        ballast.remove()
        await spool.housekeep()
        assert spool.fault is None
        await spool.accept(complaint(100))
    finally:
        await spool.close()
