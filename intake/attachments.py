"""The attachment store: attachment bytes live here, records carry only their metadata and location.

Content-addressed (the SHA-256 of the bytes names the file), so a redelivered
message writes nothing new and two copies of one photo are stored once. File
names from customers are never used as paths: only a cleaned name is kept, as
metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import unicodedata
from pathlib import Path

from intake.errors import Rejected, TemporaryFailure
from intake.normalizer.record import Attachment

_UNSAFE = re.compile(r"[^\w.\- ()\[\]]+", re.UNICODE)


def safe_filename(name: str | None, default: str = "attachment") -> str:
    """A name that is only a name: no directories, no control characters, no leading dots, at most 150 characters."""
    if not name:
        return default
    name = unicodedata.normalize("NFC", name).replace("\\", "/").split("/")[-1]
    name = _UNSAFE.sub("_", name).strip(" ._")
    if len(name) > 150:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[: 140 - len(suffix)] + dot + suffix) if dot and len(suffix) <= 10 else name[:150]
    return name or default


class AttachmentStore:
    """A local directory (default), shared by every channel; on several replicas, a shared volume."""

    def __init__(self, directory: Path, *, max_bytes: int = 25 * 1024 * 1024, max_count: int = 20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_count = max_count

    def check(self, sizes: list[int]) -> None:
        """Raise Rejected when a message carries more attachments, or a bigger one, than allowed."""
        if len(sizes) > self.max_count:
            raise Rejected(f"at most {self.max_count} attachments")
        if any(size > self.max_bytes for size in sizes):
            raise Rejected(f"an attachment may be at most {self.max_bytes} bytes")

    def check_writable(self) -> None:
        """Raise TemporaryFailure when attachments cannot be stored now. For a channel that answers before
        it stores them (SMTP): a store known to be broken is a "try again", not a yes it cannot keep promptly."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TemporaryFailure(f"attachment store: {error.strerror or error}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise TemporaryFailure("attachment store: not writable")

    def location(self, digest: str) -> str:
        return (self.directory.resolve() / digest[:2] / digest).as_uri()

    def _write(self, data: bytes, digest: str) -> None:
        target = self.directory / digest[:2] / digest
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of this write's own: two messages carrying the same file at once (a forwarded photo) are written by
        # two threads of one process, and one rename must not find the other's file already moved.
        temporary = target.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with temporary.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    async def put(self, data: bytes, *, filename: str | None, content_type: str) -> Attachment:
        """Store the bytes durably (before the message that refers to them is spooled) and describe them."""
        if len(data) > self.max_bytes:
            raise Rejected(f"an attachment may be at most {self.max_bytes} bytes")
        digest = hashlib.sha256(data).hexdigest()
        try:
            await asyncio.to_thread(self._write, data, digest)
        except OSError as error:
            raise TemporaryFailure(f"attachment store: {error.strerror}") from None
        return Attachment(
            filename=safe_filename(filename),
            content_type=content_type or "application/octet-stream",
            size=len(data),
            sha256=digest,
            location=self.location(digest),
        )
