"""The commands downstream writes to the outbound topic: their types, their validation and their JSON Schema.

A command is a CloudEvent 1.0 in Kafka binary mode, as intake's own events
are: the value is the data (JSON), every attribute a ``ce_<name>`` header,
and the key the complaint's reference, so that commands for one complaint
stay in order on one partition. ``parse`` turns a consumed record into a
:class:`Command` or raises :class:`InvalidCommand` with a reason fit for the
dead-letter topic: it names fields and rules, never the values sent (a
command's text is the complainant's business).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from intake.twoway import CommandKind, Status
from intake.normalizer.record import BCP47_PATTERN, Reference
from intake.normalizer.reference import REFERENCE_PATTERN

SCHEMA_ID = "urn:intake:schema:command:v1"
MESSAGE = "intake.command.message.v1"
STATUS = "intake.command.status.v1"
SURVEY = "intake.command.survey.v1"

MAX_TEXT = 4000
MAX_STATUS_TEXT = 1000
MAX_ATTACHMENTS = 10
MAX_URL = 2048
MAX_CE_ID = 200
# A value larger than this is refused before it is parsed: the largest valid command is far smaller.
MAX_VALUE_BYTES = 64 * 1024


def _https(url: str) -> str:
    # Only https: the link is handed to the complainant's channel, which fetches it or shows it to them.
    if not re.fullmatch(r"https://[^\s/?#]+[^\s]*", url):
        raise ValueError("must be an https:// URL")
    return url


HttpsUrl = Annotated[str, Field(max_length=MAX_URL), AfterValidator(_https)]
Locale = Annotated[str, Field(pattern=BCP47_PATTERN, max_length=35)]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    reference: Reference = Field(..., description="The complaint's reference; also the record's key.")
    locale: Locale | None = Field(
        None, description="Language to write in (BCP 47), instead of the one the complaint was acknowledged in."
    )


class MessageCommand(_Command):
    """ce_type intake.command.message.v1: words from the team handling the complaint, delivered as they are."""

    model_config = ConfigDict(title="MessageCommand")

    text: str = Field(..., min_length=1, max_length=MAX_TEXT, description="The message, in the complainant's language.")
    attachment_urls: list[HttpsUrl] = Field(
        default_factory=list, max_length=MAX_ATTACHMENTS, description="Links to documents the message refers to (https only)."
    )
    status: Status | None = Field(None, description="The complaint's status after this message, if it changes.")


class StatusCommand(_Command):
    """ce_type intake.command.status.v1: the complaint moved on; the complainant is told in a standard sentence."""

    model_config = ConfigDict(title="StatusCommand")

    status: Status = Field(..., description="The complaint's new status.")
    text: str | None = Field(None, min_length=1, max_length=MAX_STATUS_TEXT, description="Words added after the status sentence.")


class SurveyCommand(_Command):
    """ce_type intake.command.survey.v1: ask the complainant how satisfied they are (ISO 10004): CSAT 1-5."""

    model_config = ConfigDict(title="SurveyCommand")

    nps: bool = Field(True, description="Also ask how likely they are to recommend us (0-10).")
    comment: bool = Field(True, description="Also invite a comment.")


MODELS: dict[str, type[_Command]] = {MESSAGE: MessageCommand, STATUS: StatusCommand, SURVEY: SurveyCommand}
KINDS: dict[str, CommandKind] = {MESSAGE: "message", STATUS: "status", SURVEY: "survey"}


class InvalidCommand(Exception):
    """A record on the outbound topic that is not a command intake can carry out; ``reason`` says why."""

    def __init__(self, reason: str, *, ce_id: str | None, ce_type: str | None, reference: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ce_id = ce_id
        self.ce_type = ce_type
        self.reference = reference


@dataclass(frozen=True)
class Command:
    """A valid command, as stored in the spool until it is delivered."""

    ce_id: str
    ce_type: str
    reference: str
    data: dict[str, Any]  # the model's fields, JSON-ready

    @property
    def kind(self) -> CommandKind:
        return KINDS[self.ce_type]

    def model(self) -> _Command:
        return MODELS[self.ce_type].model_validate(self.data)


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def _plausible_reference(value: str | None) -> str | None:
    """The reference to name in a rejection, if it has the shape of one; anything else might be anything."""
    return value if value is not None and re.fullmatch(REFERENCE_PATTERN, value) else None


def _why(error: ValidationError) -> str:
    # Field and rule only: pydantic's input echo would copy the command's text into the dead-letter topic.
    parts = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in item["loc"]) or "(data)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)[:1000]


def parse(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Command:
    """A consumed record as a command; raises InvalidCommand naming what is wrong."""
    ce_id = _header(headers, "ce_id")
    ce_type = _header(headers, "ce_type")
    key_text = key.decode("utf-8", "replace") if key else None
    reference = _plausible_reference(key_text)

    def refuse(reason: str) -> InvalidCommand:
        return InvalidCommand(reason, ce_id=ce_id if ce_id and len(ce_id) <= MAX_CE_ID else None, ce_type=ce_type if ce_type in MODELS else None, reference=reference)

    if _header(headers, "ce_specversion") != "1.0":
        raise refuse("header ce_specversion must be 1.0 (CloudEvents binary mode)")
    if not ce_id or len(ce_id) > MAX_CE_ID or not ce_id.isprintable():
        raise refuse(f"header ce_id is required: 1 to {MAX_CE_ID} printable characters")
    if ce_type not in MODELS:
        raise refuse(f"header ce_type must be one of {', '.join(MODELS)}")
    content_type = _header(headers, "content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() != "application/json":
        raise refuse("header content-type must be application/json")
    if not value:
        raise refuse("the record has no value; the command's data is its JSON value")
    if len(value) > MAX_VALUE_BYTES:
        raise refuse(f"the value is larger than {MAX_VALUE_BYTES} bytes")
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(f"the value is not JSON: {type(error).__name__} at position {getattr(error, 'pos', 0)}") from None
    if not isinstance(document, dict):
        raise refuse("the value must be a JSON object")
    try:
        model = MODELS[ce_type].model_validate(document)
    except ValidationError as error:
        raise refuse(_why(error)) from None
    reference = model.reference
    if key_text != model.reference:
        raise refuse("the record's key must be the complaint's reference, as in data.reference")
    return Command(ce_id=ce_id, ce_type=ce_type, reference=model.reference, data=model.model_dump(mode="json", exclude_none=True))


def json_schema() -> dict[str, Any]:
    """The commands' JSON Schema (draft 2020-12), as shipped in intake/normalizer/schema/command.v1.json."""
    _, definitions = models_json_schema([(model, "validation") for model in MODELS.values()], ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Command",
        "description": "A command on the outbound topic, by its ce_type header: "
        + ", ".join(f"{ce_type} = {model.__name__}" for ce_type, model in MODELS.items())
        + ". The record's key is the reference.",
        # Not oneOf: a status command with text is also a valid message command; ce_type tells them apart.
        "anyOf": [{"$ref": f"#/$defs/{model.__name__}"} for model in MODELS.values()],
        **definitions,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
