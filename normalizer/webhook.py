"""Partner webhook JSON to a complaint record (pure: no I/O, no clock)."""

from __future__ import annotations

import datetime as dt

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from normalizer.errors import FieldError, InvalidMessage
from normalizer.record import BCP47_PATTERN, Attachment, Complainant, Complaint, ContactMethod, Reference
from normalizer.reference import parse_reference

MEDIA_TYPE = "application/json"


class PartnerComplainant(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as error:
            raise ValueError(str(error)) from None


class PartnerAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(None, max_length=255)
    content_type: str = Field(..., max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$")
    size: int | None = Field(None, ge=0)
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

    @field_validator("follows_up", mode="before")
    @classmethod
    def _canonical_reference(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_reference(value) or value
        return value


def _e164(phone: str, country: str | None) -> str:
    try:
        number = phonenumbers.parse(phone, country.upper() if country else None)
    except phonenumbers.NumberParseException as error:
        raise InvalidMessage(
            "invalid phone number", [FieldError("complainant.phone", f"not a phone number: {error}")]
        ) from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidMessage("invalid phone number", [FieldError("complainant.phone", "not a possible phone number")])
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _field_errors(error: ValidationError) -> list[FieldError]:
    return [
        FieldError(".".join(str(part) for part in item["loc"]) or "(body)", item["msg"])
        for item in error.errors(include_url=False)
    ]


def parse(raw: bytes) -> PartnerComplaint:
    """Validate a partner's body; InvalidMessage names every wrong field."""
    try:
        return PartnerComplaint.model_validate_json(raw)
    except ValidationError as error:
        errors = _field_errors(error)
        if any(item["type"] in ("json_invalid", "model_type") and not item["loc"] for item in error.errors()):
            raise InvalidMessage("the body is not a JSON object", [FieldError("(body)", errors[0].detail)]) from None
        raise InvalidMessage("the complaint has invalid fields", errors) from None


def channel_message_id(partner: str, idempotency_key: str) -> str:
    """Idempotency keys are the partner's own: two partners may use the same one."""
    return f"{partner}/{idempotency_key}"


def to_complaint(raw: bytes, *, partner: str, idempotency_key: str, received_at: dt.datetime) -> Complaint:
    """Turn a partner's POST body into a record; the id follows from (partner, Idempotency-Key)."""
    body = parse(raw)
    who = body.complainant
    complainant = Complainant(
        name=who.name,
        email=who.email,
        phone=_e164(who.phone, who.country) if who.phone else None,
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
        language=body.language or who.locale,
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
