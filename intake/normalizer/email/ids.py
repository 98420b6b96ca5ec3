"""Message-IDs: ours (which carry the complaint's reference) and theirs (for threading our answer)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from email.message import Message

from intake.normalizer.email.headers import header_string, raw_value
from intake.normalizer.reference import REFERENCE_PATTERN

# Our acknowledgement's Message-ID carries the reference, so that a reply (whose
# In-Reply-To / References quote it) finds its complaint on any replica with no
# lookup: the trap of helpdesks that open a new ticket for every reply.
_OUR_ID = re.compile(r"<?\s*(C-[0-9A-Z]{4}-[0-9A-Z]{4})\.([0-9a-f]{12})@([^<>\s@]+)\s*>?", re.IGNORECASE)
_REFERENCE = re.compile(REFERENCE_PATTERN)


def our_message_id(reference: str, complaint_id: uuid.UUID, domain: str) -> str:
    """The Message-ID of our acknowledgement for a complaint: ``<C-7K3M-9QXA.1a2b3c4d5e6f@domain>``.

    The hex part (from the complaint's id) keeps ids of acknowledgements for
    different complaints distinct even in the unlikely case of two equal references.
    """
    if not _REFERENCE.match(reference):
        raise ValueError(f"not a complaint reference: {reference!r}")
    return f"<{reference}.{complaint_id.hex[:12]}@{domain.strip().lower()}>"


def reference_from_message_ids(ids: Iterable[str]) -> str | None:
    """The reference in the first of ``ids`` that is one of our Message-IDs, else None.

    Each item may be one id or a whole In-Reply-To / References value.
    """
    for value in ids:
        for match in _OUR_ID.finditer(value):
            reference = match.group(1).upper()
            if _REFERENCE.match(reference):
                return reference
    return None


_MESSAGE_ID = re.compile(r"<[^<>\s]{1,900}>")
_MAX_REFERENCES = 20


def message_ids_in(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value)


def message_id_of(message: Message) -> str | None:
    value = header_string(raw_value(message, "message-id"), None).strip()
    found = message_ids_in(value)
    if found:
        return found[0]
    # Some mailers omit the angle brackets; the id is still theirs.
    if value and " " not in value and len(value) <= 900 and "@" in value:
        return f"<{value}>"
    return None


def references_of(message: Message, message_id: str | None) -> list[str]:
    """RFC 5322 §3.6.4: their References (or In-Reply-To), then their Message-ID."""
    found = message_ids_in(header_string(raw_value(message, "references"), None))
    if not found:
        found = message_ids_in(header_string(raw_value(message, "in-reply-to"), None))[:1]
    if message_id:
        found.append(message_id)
    unique = list(dict.fromkeys(found))
    if len(unique) > _MAX_REFERENCES:
        # Keep the thread's root and the most recent: what mail clients do too.
        unique = unique[:1] + unique[-(_MAX_REFERENCES - 1) :]
    return unique
