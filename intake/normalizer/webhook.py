"""Partner webhook JSON to a complaint record (pure: no I/O, no clock)."""

from __future__ import annotations

import datetime as dt
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from intake.normalizer.bounds import as_invalid_message, load_json, says_something
from intake.normalizer import contact, language
from intake.normalizer.errors import FieldError, InvalidMessage, field_errors
from intake.normalizer.record import BCP47_PATTERN, E164_PATTERN, Attachment, Complainant, Complaint, ContactMethod, Reference
from intake.normalizer.reference import parse_reference

MEDIA_TYPE = "application/json"


def _absent_when_blank(value: object) -> object:
    """"" and "  " are how many partner systems (CRM exports, form builders) write a field they have no value for:
    absent, not a wrong value that refuses the whole complaint. Other strings lose the spaces a copy and paste left."""
    if isinstance(value, str):
        return value.strip() or None
    return value


def _language_tag(value: object) -> object:
    """A locale as Java, Android and POSIX write it ("pt_BR", "de_DE.UTF-8", "sr_RS@latin") as the BCP 47 tag it names."""
    value = _absent_when_blank(value)
    if isinstance(value, str):
        return value.split(".", 1)[0].split("@", 1)[0].replace("_", "-")
    return value


class PartnerComplainant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _blank = field_validator("name", "email", "phone", "country", "customer_id", "preferred_contact", mode="before")(_absent_when_blank)
    _tag = field_validator("locale", mode="before")(_language_tag)

    name: str | None = Field(None, max_length=300)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40, description="E.164, or national format with `country`.")
    country: str | None = Field(None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166 country for a national phone number.")
    customer_id: str | None = Field(None, max_length=300, description="The partner's own id of the customer.")
    preferred_contact: ContactMethod | None = None
    locale: str | None = Field(None, pattern=BCP47_PATTERN)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return contact.normalized_email(value)  # cached: partners send the same customers again


class PartnerAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(None, max_length=255)
    content_type: str = Field(..., max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$")
    # Bounded to what a signed 64-bit integer holds: the consumers of the topic are not all Python.
    size: int | None = Field(None, ge=0, lt=2**63)
    url: str = Field(..., max_length=2048, pattern=r"^https?://")


class PartnerComplaint(BaseModel):
    """The body a partner POSTs: one complaint, or a follow-up when ``follows_up`` is given."""

    model_config = ConfigDict(extra="forbid")

    complainant: PartnerComplainant = Field(default_factory=PartnerComplainant)
    subject: str | None = Field(None, max_length=1000)
    text: str = Field(..., min_length=1, max_length=100_000)
    language: str | None = Field(None, pattern=BCP47_PATTERN)
    product: str | None = Field(None, max_length=500)
    occurred_at: str | None = Field(None, max_length=200)
    desired_outcome: str | None = Field(None, max_length=5000)
    follows_up: Reference | None = None
    attachments: list[PartnerAttachment] = Field(default_factory=list, max_length=20)

    _blank = field_validator("subject", "product", "occurred_at", "desired_outcome", "follows_up", mode="before")(_absent_when_blank)
    _tag = field_validator("language", mode="before")(_language_tag)

    @field_validator("text")
    @classmethod
    def _says_something(cls, value: str) -> str:
        # Whitespace, zero-width marks or control characters only: a partner's bug, not a complaint to acknowledge.
        if not says_something(value):
            raise ValueError("the text is blank: only spaces, control characters or invisible marks")
        return value

    @field_validator("follows_up", mode="before")
    @classmethod
    def _canonical_reference(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_reference(value) or value
        return value


_E164 = re.compile(E164_PATTERN)


def _e164(phone: str, country: str | None) -> str:
    try:
        formatted = contact.e164(phone, country)
    except contact.NotAPhoneNumber as error:
        raise InvalidMessage("invalid phone number", [FieldError("complainant.phone", str(error))]) from None
    # "Possible" is a length check: it passes numbers whose E.164 form the record still refuses (a country code 0).
    if not _E164.fullmatch(formatted):
        raise InvalidMessage("invalid phone number", [FieldError("complainant.phone", "not a possible phone number")])
    return formatted


def parse(raw: bytes) -> PartnerComplaint:
    """Validate a partner's body; InvalidMessage names every wrong field.

    The JSON is read by :func:`load_json`, which repairs lone surrogates (what
    JavaScript's ``slice`` and ``JSON.stringify`` make of an emoji cut in two)
    instead of refusing the complaint for them.
    """
    document = load_json(raw)
    try:
        return PartnerComplaint.model_validate(document)
    except ValidationError as error:
        errors = field_errors(error)
        if any(item["type"] == "model_type" and not item["loc"] for item in error.errors()):
            raise InvalidMessage("the body is not a JSON object", [FieldError("(body)", errors[0].detail)]) from None
        raise InvalidMessage("the complaint has invalid fields", errors) from None


def channel_message_id(partner: str, idempotency_key: str) -> str:
    """Idempotency keys are the partner's own: two partners may use the same one."""
    return f"{partner}/{idempotency_key}"


def to_complaint(raw: bytes, *, partner: str, idempotency_key: str, received_at: dt.datetime) -> Complaint:
    """Turn a partner's POST body into a record; the id follows from (partner, Idempotency-Key)."""
    body = parse(raw)
    who = body.complainant
    phone = _e164(who.phone, who.country) if who.phone else None
    with as_invalid_message():
        complainant = Complainant(
            name=who.name,
            email=who.email,
            phone=phone,
            handle=who.customer_id,
            preferred_contact=who.preferred_contact,
            locale=who.locale or body.language,
        )
        return Complaint.derive(
            channel="webhook",
            channel_message_id=channel_message_id(partner, idempotency_key),
            raw=raw,
            raw_media_type=MEDIA_TYPE,
            received_at=received_at,
            complainant=complainant,
            subject=body.subject,
            text=body.text,
            # What the complaint is written in, which the locale (the language to answer in) need not be.
            language=body.language or language.detect(body.text),
            product=body.product,
            occurred_at=body.occurred_at,
            desired_outcome=body.desired_outcome,
            follows_up=body.follows_up,
            attachments=[
                Attachment(filename=a.filename, content_type=a.content_type, size=a.size, location=a.url)
                for a in body.attachments
            ],
            origin={"partner": partner},
        )
