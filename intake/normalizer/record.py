"""The complaint record (schema v1): the one type every channel's message becomes.

The JSON Schema shipped in the package, the validation of what channels
produce and the JSON published to Kafka all follow from these classes.
Changes that a consumer could notice bump ``SCHEMA_VERSION`` and the schema
file name; adding an optional field is the only change allowed within v1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from intake.normalizer.reference import REFERENCE_PATTERN, complaint_id, reference_for, spool_key

SCHEMA_VERSION = 1
SCHEMA_ID = "urn:intake:schema:complaint:v1"

Channel = Literal["webhook", "email", "sms", "mms", "whatsapp", "telegram", "web"]
ContactMethod = Literal["email", "phone", "sms", "whatsapp", "telegram", "post", "none"]

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
BCP47_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"

Reference = Annotated[str, Field(pattern=REFERENCE_PATTERN, examples=["C-7K3M-9QXA"])]


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("a timestamp must carry its UTC offset")
    return value.astimezone(dt.timezone.utc)


UtcDateTime = Annotated[dt.datetime, AfterValidator(_utc)]

# C0 and C1 controls but tab, line feed and carriage return. A NUL or a BEL pasted into a partner's JSON, an SMS or a
# Telegram message is no part of what the customer wrote, and a NUL in a JSON string is refused by the consumers that
# store the record in PostgreSQL (text and jsonb cannot hold U+0000). Format characters (ZWNJ, ZWJ, bidi marks) stay:
# Persian words and emoji sequences are spelled with them.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def without_controls(value: str) -> str:
    """The text without C0/C1 control characters (tab and line breaks kept): what every channel's text becomes."""
    return _CONTROLS.sub("", value)


Text = Annotated[str, AfterValidator(without_controls)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Complainant(_Record):
    """Who complains and how to reach them; every field is optional because channels know different things."""

    name: Text | None = Field(None, max_length=300, description="Name as the complainant gave it or as the channel shows it.")
    email: str | None = Field(None, max_length=320, description="Email address (as given; not verified).")
    phone: str | None = Field(None, pattern=E164_PATTERN, description="Phone number in E.164, e.g. +48601234567.")
    handle: str | None = Field(
        None, max_length=300, description="The complainant's id on the channel: Telegram user id, WhatsApp id, partner's customer id."
    )
    preferred_contact: ContactMethod | None = Field(None, description="How the complainant prefers to be contacted.")
    locale: str | None = Field(None, pattern=BCP47_PATTERN, description="Preferred language as a BCP 47 tag, e.g. fa, pl-PL.")


class Attachment(_Record):
    """An attachment's metadata and where its bytes are; the bytes never travel inside the event."""

    filename: Text | None = Field(None, max_length=255, description="A safe file name (no path).")
    content_type: str = Field(..., max_length=255, description="Media type, e.g. image/jpeg.")
    size: int | None = Field(None, ge=0, description="Size in bytes, when known.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bytes, when stored.")
    location: str = Field(..., max_length=2048, description="URI of the bytes: file://, https://, or a channel's own scheme.")


class Flags(_Record):
    """Facts about the message that decide how it is handled."""

    automated: bool = Field(False, description="Sent by a machine (auto-reply, bounce, list mail): recorded, never acknowledged.")
    automated_reason: str | None = Field(None, max_length=200, description="Why it was judged automated, e.g. 'Auto-Submitted: auto-replied'.")
    truncated: bool = Field(False, description="Text was cut to the size limit; the raw message keeps all of it.")


class RawPointer(_Record):
    """Where the message exactly as received is kept, so the record can be re-derived."""

    spool_key: str = Field(..., description="Key of the raw message in the gateway's spool.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the raw bytes.")
    size: int = Field(..., ge=0, description="Size of the raw message in bytes.")
    media_type: str = Field(..., description="Media type of the raw message, e.g. message/rfc822, application/json.")


class Complaint(_Record):
    """One complaint or one follow-up to a complaint, as received on any channel."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Version of this record's schema.")
    id: uuid.UUID = Field(..., description="Stable id derived from (channel, channel_message_id); equals the event's ce_id.")
    reference: Reference = Field(..., description="Human reference derived from the same key, given to the complainant.")
    follows_up: Reference | None = Field(
        None, description="Reference of the complaint this message follows up; the Kafka key is then that reference."
    )
    channel: Channel
    channel_message_id: str = Field(..., min_length=1, max_length=1000, description="The channel's own id of the message.")
    received_at: UtcDateTime = Field(..., description="When the gateway received it (UTC).")
    complainant: Complainant = Field(default_factory=Complainant)
    subject: Text | None = Field(None, max_length=1000)
    text: Text = Field(..., max_length=100_000, description="The complaint in the complainant's words, quotes and signatures removed.")
    full_text: Text | None = Field(None, max_length=1_000_000, description="The whole text as sent, when it differs from text.")
    language: str | None = Field(None, pattern=BCP47_PATTERN, description="Language of the text, BCP 47.")
    product: Text | None = Field(None, max_length=500, description="Product or service complained about.")
    occurred_at: Text | None = Field(None, max_length=200, description="When it happened, in the complainant's words or ISO 8601.")
    desired_outcome: Text | None = Field(None, max_length=5000, description="What the complainant wants done.")
    consent_to_processing: bool | None = Field(None, description="Consent to processing of personal data, where the channel asks for it.")
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    flags: Flags = Field(default_factory=Flags)
    origin: dict[str, str] = Field(
        default_factory=dict, description="Channel details that are not personal data: partner name, mailbox, bot, number called."
    )
    raw: RawPointer

    @property
    def key(self) -> str:
        """The Kafka key: a follow-up travels with the complaint it follows."""
        return self.follows_up or self.reference

    @classmethod
    def derive(
        cls, *, channel: Channel, channel_message_id: str, raw: bytes, raw_media_type: str, **fields: object
    ) -> "Complaint":
        """Build a record whose id, reference and raw pointer follow from the channel's message."""
        return cls(
            id=complaint_id(channel, channel_message_id),
            reference=reference_for(channel, channel_message_id),
            channel=channel,
            channel_message_id=channel_message_id,
            raw=RawPointer(
                spool_key=spool_key(channel, channel_message_id),
                sha256=hashlib.sha256(raw).hexdigest(),
                size=len(raw),
                media_type=raw_media_type,
            ),
            **fields,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def json_schema() -> dict:
    """The record's JSON Schema (draft 2020-12), as shipped and printed by ``intake schema``."""
    schema = Complaint.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Complaint",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
