"""Files several workers or threads write at the same moment: the keys kept beside the spool, the attachment store."""

from __future__ import annotations

import asyncio
import multiprocessing
import stat
from pathlib import Path

from intake.attachments import AttachmentStore
from intake.keys import KEY_BYTES, kept_key


def _take(path: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    barrier.wait()
    try:
        results.put(kept_key(Path(path), event="test_key_generated", advice="").hex())
    except Exception as error:  # reported to the test, which names it
        results.put(f"error: {type(error).__name__}: {error}")


def test_workers_starting_together_all_sign_with_the_one_key_that_is_kept(tmp_path: Path):
    """``intake serve --workers N`` on a new volume: every worker asks for the key in the same instant. A worker that
    failed to start, or one signing with a key the file does not hold, would break survey links and form posts."""
    context = multiprocessing.get_context("fork")
    for round_ in range(10):
        path = tmp_path / f"round-{round_}" / "survey-links.key"
        barrier, results = context.Barrier(6), context.Queue()
        processes = [context.Process(target=_take, args=(str(path), barrier, results)) for _ in range(6)]
        for process in processes:
            process.start()
        keys = [results.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(30)
        assert not [key for key in keys if key.startswith("error")], keys
        assert set(keys) == {path.read_bytes().hex()}, "workers hold different keys"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [entry.name for entry in path.parent.iterdir()] == [path.name], "a partial file was left behind"


def test_a_kept_key_outlives_a_restart_and_a_short_one_is_made_again(tmp_path: Path):
    path = tmp_path / "csrf.key"
    first = kept_key(path, event="test_key_generated", advice="")
    assert len(first) == KEY_BYTES and kept_key(path, event="test_key_generated", advice="") == first
    path.write_bytes(first[:5])  # cut short by something other than intake
    again = kept_key(path, event="test_key_generated", advice="")
    assert len(again) == KEY_BYTES and again != first and path.read_bytes() == again


async def test_the_same_file_stored_by_two_messages_at_once_is_kept_once_for_both(tmp_path: Path):
    """A photo forwarded to two chats, or sent twice in one album, reaches the store from two threads at the same
    moment: both messages are stored, and they point at the one file."""
    store = AttachmentStore(tmp_path / "attachments")
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400
    for _ in range(20):
        first, second, *_ = await asyncio.gather(
            *(store.put(data, filename="photo.png", content_type="image/png") for _ in range(8))
        )
        assert first.location == second.location
    [kept] = [path for path in (tmp_path / "attachments").rglob("*") if path.is_file()]
    assert kept.read_bytes() == data
