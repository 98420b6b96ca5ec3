"""Deterministic complaint ids and human references derived from a channel's own message id."""

from __future__ import annotations

import hashlib
import re
import uuid

# Crockford's base32: no I, L, O or U, so a reference read out on the phone
# cannot be confused ("one or el?", "zero or oh?").
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(ALPHABET)}
_DECODE.update({"O": 0, "I": 1, "L": 1})

# Fixed forever: changing it would give every redelivered message a new id.
NAMESPACE = uuid.UUID("6f1c1f0e-3a4b-5c2d-9e8f-1a2b3c4d5e6f")

REFERENCE_PATTERN = r"^C-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$"
# A reference's shape among other words, with ASCII-only boundaries, so that one written against Chinese
# ("状态C-7K3M-9QXA") is still found; parse_reference makes it canonical.
REFERENCE_IN_TEXT = r"(?<![0-9A-Za-z])[Cc]-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}(?![0-9A-Za-z])"
# A reference as a customer might type or quote it: any case, O/I/L for 0/1.
# The dashes are required: without them too many ordinary words would match.
_LOOSE = re.compile(r"\b[Cc]-([0-9A-Za-z]{4})-([0-9A-Za-z]{4})\b")


def spool_key(channel: str, channel_message_id: str) -> str:
    """The one key that names a message on its channel: the unit of idempotency.

    Channel names never contain a colon, so the first colon splits it back.
    """
    return f"{channel}:{channel_message_id}"


def complaint_id(channel: str, channel_message_id: str) -> uuid.UUID:
    """The complaint's id: the same for every delivery of the same message, on any replica."""
    return uuid.uuid5(NAMESPACE, spool_key(channel, channel_message_id))


def reference_for(channel: str, channel_message_id: str) -> str:
    """The short human reference, e.g. ``C-7K3M-9QXA`` (40 bits of the key's SHA-256)."""
    digest = hashlib.sha256(spool_key(channel, channel_message_id).encode()).digest()
    number = int.from_bytes(digest[:5], "big")
    chars = "".join(ALPHABET[(number >> shift) & 31] for shift in range(35, -1, -5))
    return f"C-{chars[:4]}-{chars[4:]}"


def parse_reference(text: str) -> str | None:
    """Find a reference in free text (a subject, a body, a typed form field) and return it canonical.

    Tolerates lower case and the usual misreadings (O for 0, I/L for 1);
    returns None when nothing in the text has the shape of a reference.
    """
    for match in _LOOSE.finditer(text):
        chars = (match.group(1) + match.group(2)).upper()
        if all(c in _DECODE for c in chars):
            canonical = "".join(ALPHABET[_DECODE[c]] for c in chars)
            return f"C-{canonical[:4]}-{canonical[4:]}"
    return None
