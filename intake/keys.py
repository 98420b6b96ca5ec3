"""Signing keys generated once and kept in a file beside the spool, so that what they signed outlives a restart."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

__all__ = ["kept_key"]

log = logging.getLogger("intake.keys")

KEY_BYTES = 32


def kept_key(path: Path, *, event: str, advice: str) -> bytes:
    """A 32-byte key generated once and kept in ``path`` (owner-only).

    ``event`` names the log event written when a key is generated, ``advice`` what an
    operator running several replicas should configure instead (each would make its own).
    """
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) == KEY_BYTES:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    # Written aside and renamed: a crash mid-write never leaves a short key that a restart would replace.
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    log.info(f"{path.name} generated and kept beside the spool; {advice}", extra={"event": event})
    return key
