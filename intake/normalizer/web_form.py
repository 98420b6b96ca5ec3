"""Web form fields to a complaint record (pure: no I/O, no clock), with a message the customer understands per wrong field.

The raw message of a form submission is the form as typed, as JSON: the
fields, the form's language and the attachments' metadata (their bytes are in
the attachment store, named by their SHA-256). ``to_complaint`` derives the
record from exactly that, so a replay from the spool gives the same record.

Field messages are English msgids marked with ``N_`` and extracted into the
``intake`` catalogs; the web form shows them translated, the record and the
logs never carry them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError

from intake.normalizer.bounds import as_invalid_message, load_json, max_length, repair, says_something
from intake.normalizer.errors import FieldError, InvalidMessage, field_errors
from intake.normalizer.record import BCP47_PATTERN, Attachment, Complainant, Complaint, ContactMethod

MEDIA_TYPE = "application/json"

# The form's field names: the HTML, the validation and the raw JSON all use these.
NAME = "name"
EMAIL = "email"
PHONE = "phone"
PREFERRED_CONTACT = "preferred_contact"
PRODUCT = "product"
OCCURRED_ON = "occurred_on"
DESCRIPTION = "description"
DESIRED_OUTCOME = "desired_outcome"
CONSENT = "consent"
ATTACHMENTS = "attachments"
# In the order the form shows them: the error summary lists problems in this order.
FIELDS = (NAME, EMAIL, PHONE, PREFERRED_CONTACT, PRODUCT, OCCURRED_ON, DESCRIPTION, DESIRED_OUTCOME, ATTACHMENTS, CONSENT)
TEXT_FIELDS = (NAME, EMAIL, PHONE, PREFERRED_CONTACT, PRODUCT, OCCURRED_ON, DESCRIPTION, DESIRED_OUTCOME, CONSENT)

MAX_CHARS = {NAME: 300, EMAIL: 320, PHONE: 40, PRODUCT: 500, OCCURRED_ON: 40, DESCRIPTION: 20_000, DESIRED_OUTCOME: 5000}

# A submission id is made by the gateway when it serves the form (secrets.token_urlsafe(16)).
SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")

# What customers attach to a complaint: photos of the damage, scanned receipts and letters.
# Recognised by their first bytes, never by the name or the type the browser claims.
ATTACHMENT_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "application/pdf")
SNIFF_BYTES = 16
_BCP47 = re.compile(BCP47_PATTERN)
# C0 and C1 controls but tab and line feed (carriage returns are line feeds by then): one pass, not one call per character.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def N_(message: str) -> str:
    """Marks an English msgid for extraction; it is translated where it is shown, in the customer's language."""
    return message


@dataclass(frozen=True)
class FormFieldError(FieldError):
    """A field error the form shows translated: ``message`` is the msgid, ``limit`` fills its ``{limit}``."""

    message: str = ""
    limit: int | None = None


def _error(field: str, message: str, limit: int | None = None) -> FormFieldError:
    detail = message.format(limit=limit) if limit is not None else message
    return FormFieldError(field, detail, message, limit)


@dataclass(frozen=True)
class ValidForm:
    """The form's fields once every one of them is acceptable."""

    name: str
    email: str | None
    phone: str | None  # E.164
    preferred_contact: ContactMethod
    product: str | None
    occurred_on: dt.date | None
    description: str
    desired_outcome: str | None


@dataclass(frozen=True)
class Upload:
    """One file the customer attached, as far as checking it needs: its size and first bytes."""

    filename: str
    size: int
    head: bytes


def clean(value: str) -> str:
    """Browsers send CRLF line ends from a textarea and customers paste control characters: keep text and line breaks."""
    value = repair(value).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", value).strip()


def validate(form: Mapping[str, str], *, today: dt.date, default_region: str | None = None) -> ValidForm:
    """Check every field; InvalidMessage lists a FormFieldError for each wrong one, in form order.

    ``today`` is the date the form was received (dates after it are refused, with a day's slack for
    time zones ahead of UTC); ``default_region`` lets customers type a national phone number.
    """
    values = {field: clean(form.get(field, "")) for field in TEXT_FIELDS}
    errors: list[FormFieldError] = []

    def too_long(field: str, message: str) -> bool:
        if len(values[field]) > MAX_CHARS[field]:
            errors.append(_error(field, message, MAX_CHARS[field]))
            return True
        return False

    name = values[NAME]
    if not says_something(name):
        errors.append(_error(NAME, N_("Enter your name.")))
    else:
        too_long(NAME, N_("Your name is too long: at most {limit} characters."))

    email: str | None = None
    if values[EMAIL]:
        try:
            email = validate_email(values[EMAIL][: MAX_CHARS[EMAIL] + 1], check_deliverability=False).normalized
        except EmailNotValidError:
            errors.append(_error(EMAIL, N_("Enter an email address like name@example.com.")))

    phone: str | None = None
    if values[PHONE]:
        phone = _e164(values[PHONE][: MAX_CHARS[PHONE] + 1], default_region)
        if phone is None:
            errors.append(_error(PHONE, N_("Enter a phone number with its country code, like +44 20 7946 0958.")))

    preferred = values[PREFERRED_CONTACT]
    if preferred not in ("", "email", "phone"):
        errors.append(_error(PREFERRED_CONTACT, N_("Choose how you prefer us to contact you.")))
    elif not values[EMAIL] and not values[PHONE]:
        errors.append(_error(EMAIL, N_("Give an email address or a phone number, so that we can reply to you.")))
    elif preferred == "email" and not values[EMAIL]:
        errors.append(_error(EMAIL, N_("Give the email address you want us to use, or choose contact by phone.")))
    elif preferred == "phone" and not values[PHONE]:
        errors.append(_error(PHONE, N_("Give the phone number you want us to use, or choose contact by email.")))
    chosen: ContactMethod = "phone" if preferred == "phone" or (not preferred and not values[EMAIL]) else "email"

    product = values[PRODUCT] or None
    too_long(PRODUCT, N_("The product or service is too long: at most {limit} characters."))

    occurred_on: dt.date | None = None
    if values[OCCURRED_ON]:
        try:
            occurred_on = dt.date.fromisoformat(values[OCCURRED_ON][: MAX_CHARS[OCCURRED_ON]])
        except ValueError:
            errors.append(_error(OCCURRED_ON, N_("Enter the date as year, month and day, like 2024-03-17.")))
        else:
            if occurred_on > today + dt.timedelta(days=1):
                errors.append(_error(OCCURRED_ON, N_("The date cannot be in the future.")))

    description = values[DESCRIPTION]
    if not says_something(description):  # a zero-width space or a bidi mark pasted alone is no description either
        errors.append(_error(DESCRIPTION, N_("Tell us what happened.")))
    else:
        too_long(DESCRIPTION, N_("Your description is too long: at most {limit} characters."))

    desired_outcome = values[DESIRED_OUTCOME] or None
    too_long(DESIRED_OUTCOME, N_("The outcome you want is too long: at most {limit} characters."))

    # A checkbox sends its value only when ticked; any value counts, as browsers send "on" by default.
    if not values[CONSENT]:
        errors.append(
            _error(CONSENT, N_("Tick the box to agree to the processing of your personal data: we cannot handle your complaint without it."))
        )

    if errors:
        raise InvalidMessage("the form has invalid fields", sorted(errors, key=lambda e: FIELDS.index(e.field)))
    return ValidForm(
        name=name,
        email=email,
        phone=phone,
        preferred_contact=chosen,
        product=product,
        occurred_on=occurred_on,
        description=description,
        desired_outcome=desired_outcome,
    )


def _e164(phone: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(phone, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    # Stricter than the webhook's "possible": a person typing benefits from being told about a typo.
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def sniff(head: bytes) -> str | None:
    """The media type of a file from its first bytes, if it is one a complaint may carry."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypheim", b"ftypmif1"):
        return "image/heic"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def check_attachments(uploads: Sequence[Upload], *, max_count: int, max_bytes: int) -> list[str]:
    """The media type of each upload, or InvalidMessage naming what is wrong with them."""
    errors: list[FormFieldError] = []
    if len(uploads) > max_count:
        errors.append(_error(ATTACHMENTS, N_("Too many files: you can attach {limit} at most."), max_count))
    if any(upload.size > max_bytes for upload in uploads):
        # Whole megabytes: limits are set in round numbers, and a customer thinks in them.
        errors.append(_error(ATTACHMENTS, N_("Each file may be at most {limit} MB."), max(1, max_bytes // (1024 * 1024))))
    types = [sniff(upload.head) for upload in uploads]
    if any(media_type is None for media_type in types):
        errors.append(_error(ATTACHMENTS, N_("Attach only photos (JPEG, PNG, GIF, WebP, HEIC) or PDF documents.")))
    if errors:
        raise InvalidMessage("the attachments are not acceptable", errors)
    return [media_type for media_type in types if media_type is not None]


def raw_submission(form: Mapping[str, str], *, locale: str, attachments: Sequence[Attachment]) -> bytes:
    """The raw message spooled for a submission: what the customer typed, the form's language, the files' metadata."""
    document = {
        # repair: json.dumps would pass a lone surrogate through, and encode() then fail on it.
        "fields": {field: repair(form[field]) for field in TEXT_FIELDS if form.get(field)},
        "locale": locale,
        "attachments": [attachment.model_dump(mode="json", exclude_none=True) for attachment in attachments],
    }
    return json.dumps(document, ensure_ascii=False, sort_keys=True).encode()


def _submission(raw: bytes) -> tuple[dict[str, str], str, list[Attachment]]:
    """(fields, locale, attachments) of a raw submission, each of the type and shape raw_submission writes."""
    document = load_json(raw)
    if not isinstance(document, dict):
        raise InvalidMessage("not a web form submission", [FieldError("(body)", "a JSON object with fields, locale and attachments")])
    fields, locale, attachments = document.get("fields"), document.get("locale"), document.get("attachments")
    errors: list[FieldError] = []
    if not isinstance(fields, dict) or not all(isinstance(value, str) for value in fields.values()):
        errors.append(FieldError("fields", "an object of the form's text fields"))
    if not isinstance(locale, str) or not _BCP47.fullmatch(locale):
        errors.append(FieldError("locale", "a BCP 47 language tag"))
    if not isinstance(attachments, list) or len(attachments) > max_length(Complaint, "attachments"):
        errors.append(FieldError("attachments", "a list of attachments, as many as a record holds at most"))
    if errors:
        raise InvalidMessage("not a web form submission", errors)
    try:
        return fields, locale, [Attachment.model_validate(item) for item in attachments]
    except ValidationError as error:
        raise InvalidMessage("not a web form submission", [FieldError(f"attachments.{e.field}", e.detail) for e in field_errors(error)]) from None


def to_complaint(raw: bytes, *, submission_id: str, received_at: dt.datetime, default_region: str | None = None) -> Complaint:
    """The record of one form submission; its id and reference follow from the submission id made with the form."""
    fields, locale, attachments = _submission(raw)
    form = validate(fields, today=received_at.date(), default_region=default_region)
    with as_invalid_message():
        return Complaint.derive(
            channel="web",
            channel_message_id=submission_id,
            raw=raw,
            raw_media_type=MEDIA_TYPE,
            received_at=received_at,
            complainant=Complainant(
                name=form.name,
                email=form.email,
                phone=form.phone,
                preferred_contact=form.preferred_contact,
                locale=locale,
            ),
            text=form.description,
            # The form's language is the one the customer chose to read it in, and so most likely writes in.
            language=locale,
            product=form.product,
            occurred_at=form.occurred_on.isoformat() if form.occurred_on else None,
            desired_outcome=form.desired_outcome,
            consent_to_processing=True,
            attachments=attachments,
        )
