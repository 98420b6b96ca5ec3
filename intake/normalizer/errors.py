"""What the normalizer raises when a raw message cannot become a record."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError


@dataclass(frozen=True)
class FieldError:
    """One wrong field: a dotted path into the input (``complainant.email``) and what is wrong with it."""

    field: str
    detail: str


@dataclass
class InvalidMessage(Exception):
    """The raw message cannot be turned into a record.

    Channels that can tell their sender (the webhook, the web form) answer with
    ``errors``; channels that cannot (email) send the raw message to the
    dead-letter topic with ``detail``.
    """

    detail: str
    errors: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return self.detail


def field_errors(error: ValidationError) -> list[FieldError]:
    """pydantic's errors as FieldErrors: the dotted path of each wrong field and what is wrong with it."""
    return [
        FieldError(".".join(str(part) for part in item["loc"]) or "(body)", item["msg"])
        for item in error.errors(include_url=False)
    ]
