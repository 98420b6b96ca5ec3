"""Limits on what arrives from outside: JSON within bounds, text that UTF-8 can carry, lengths the record allows.

Every normalizer reads bytes a stranger chose. What it cannot make into a
record must end as :class:`InvalidMessage` (the channel dead-letters the raw
bytes or tells the sender), never as another exception: a 5xx makes Telegram
and Twilio deliver the same poison again and again.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ValidationError

from intake.normalizer.errors import FieldError, InvalidMessage, field_errors

# Real documents nest a few levels (a Telegram Update with a reply to a message
# about 8, a web form submission 3); the interpreter's stack gives out near 1000.
MAX_DEPTH = 32


def repair(text: str) -> str:
    """Text that UTF-8 can carry: a surrogate pair left as two code points becomes its character, a lone surrogate U+FFFD.

    Lone surrogates are what JSON escapes such as ``\\ud83d`` (Telegram cuts
    names mid-emoji), the UTF-7 codec and surrogate-escaped bytes leave in a
    str; the record would not validate or serialise with them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def says_something(text: str) -> bool:
    """Whether the text has a character one can see: not only spaces, line breaks, controls and zero-width marks."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf", "Zs", "Zl", "Zp") for char in text)


def encodable(text: str) -> bool:
    """Whether UTF-8 can carry the text as it is: identifiers are refused rather than repaired into another id."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        # 1e999: Python reads it as infinity, which no timestamp, size or id can be.
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in ``raw`` with every string repaired; InvalidMessage when it is not JSON or not within bounds.

    Python's json reads more than JSON (NaN, Infinity; 1e999 as infinity),
    integers of up to 4300 digits, lone surrogates, and nests until the stack
    gives out (RecursionError). Only what a well-meaning sender can send
    comes out.
    """
    try:
        document = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidMessage("the JSON nests too deeply", [FieldError("(body)", f"more than {max_depth} levels")]) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, integers beyond 4300 digits, the two above
        raise InvalidMessage("the body is not JSON", [FieldError("(body)", str(error)[:200])]) from None
    return _repaired(document, 0, max_depth)


def _repaired(value: Any, depth: int, max_depth: int) -> Any:
    if isinstance(value, str):
        return repair(value)
    if not isinstance(value, (list, dict)):
        return value
    if depth >= max_depth:
        raise InvalidMessage("the JSON nests too deeply", [FieldError("(body)", f"more than {max_depth} levels")])
    if isinstance(value, list):
        return [_repaired(item, depth + 1, max_depth) for item in value]
    return {repair(key): _repaired(item, depth + 1, max_depth) for key, item in value.items()}


def max_length(model: type[BaseModel], name: str) -> int:
    """The length limit declared on a record field: the limits are written once, on the record."""
    for constraint in model.model_fields[name].metadata:
        limit = getattr(constraint, "max_length", None)
        if isinstance(limit, int):
            return limit
    raise LookupError(f"{model.__name__}.{name} has no length limit")


def fit(text: str | None, limit: int) -> tuple[str | None, bool]:
    """(the text cut to ``limit`` characters, whether it was cut); the raw message in the spool keeps all of it."""
    if text is None or len(text) <= limit:
        return text, False
    return text[:limit], True


@contextmanager
def as_invalid_message(detail: str = "the message does not make a valid record") -> Iterator[None]:
    """Turn a ValidationError of the record's types, raised inside, into InvalidMessage naming each field.

    Normalizers repair and cut what they can before building the record;
    whatever still breaks one of its limits is dead-lettered with the raw bytes
    (or told to the sender), never raised as a ValidationError.
    """
    try:
        yield
    except ValidationError as error:
        raise InvalidMessage(detail, field_errors(error)) from None
