"""Signing keys generated once and kept in a file beside the spool, so that what they signed outlives a restart.

Every worker of a gateway (``intake serve --workers N``) starts at the same
moment and asks for the same keys: the first to make one wins and the others
read it back, so a link or a form signed by one worker verifies on any other.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

__all__ = ["kept_key"]

log = logging.getLogger("intake.keys")

KEY_BYTES = 32


def _read(path: Path) -> bytes | None:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    return key if len(key) == KEY_BYTES else None


def kept_key(path: Path, *, event: str, advice: str) -> bytes:
    """A 32-byte key generated once and kept in ``path`` (owner-only).

    ``event`` names the log event written when a key is generated, ``advice`` what an
    operator running several replicas should configure instead (each would make its own).
    """
    key = _read(path)
    if key is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    # Written whole under a name of this process's own, then linked into place: a crash mid-write never leaves a
    # short key, and a link never replaces a key another worker has just put there (a rename would, and the two
    # workers would then sign with different keys).
    partial = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        for _ in range(3):
            try:
                os.link(partial, path)
                break
            except FileExistsError:
                theirs = _read(path)
                if theirs is not None:
                    return theirs  # a sibling worker made it first: one key for all of them
                path.unlink(missing_ok=True)  # empty or short, left by something else: made again
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                os.replace(partial, path)  # a file system without hard links: the rename, as before
                break
        else:
            raise OSError(f"{path} keeps being replaced by something else")
    finally:
        partial.unlink(missing_ok=True)
    _sync_directory(path.parent)
    log.info(f"{path.name} generated and kept beside the spool; {advice}", extra={"event": event})
    return key


def _sync_directory(directory: Path) -> None:
    """The new name itself made durable: without it, a power cut may leave no key file after the key was used."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
