"""Hostile input for the fuzz suites: values of the wrong type or size, mutations of real messages, one settings profile.

Every channel's normalizer and HTTP handler must take whatever a stranger
sends and end in a record or a refusal, never in a crash. The strategies here
start from the structure of the real messages (a Telegram Update, Twilio's
parameters, a partner's complaint) and break it field by field, the way
forged, truncated and buggy senders do.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Complaint, json_schema

# Bounded so that each suite stays within its minute or two on a CI runner of two cores;
# INTAKE_FUZZ_SCALE=10 (say) makes a longer hunt on a workstation.
SCALE = float(os.environ.get("INTAKE_FUZZ_SCALE", "1"))

settings.register_profile(
    "intake-fuzz",
    deadline=None,  # the first message loads the language model (a second or two): not a slow input
    # Long strings (past the record's limits) are the point, not a mistake of the strategy.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=False,
)


def fuzz(examples: int, **options: Any) -> settings:
    """The profile with ``examples`` inputs (scaled by INTAKE_FUZZ_SCALE)."""
    return settings(settings.get_profile("intake-fuzz"), max_examples=max(1, int(examples * SCALE)), **options)


# --- hostile values ------------------------------------------------------------------

SURROGATES = st.characters(categories=["Cs"])
# Any code point, lone surrogates included: what JSON escapes (\ud83d) and broken codecs can put in a str.
ANY_CHAR = st.one_of(st.characters(), SURROGATES)
# Lengths around the record's limits (name 300, subject 1000, text 100 000) and what lies past them.
LONG_LENGTHS = [255, 256, 301, 1001, 2049, 5001, 20_001, 100_001]
_SPECIAL_TEXTS = [
    "", " ", "\x00", "\n", "pl\n", "\ud800", "\udfff", "a\ud83d", "\ude00b", "\u202e\u2066", "\ufeff",
    "+", "+0", "+48", "whatsapp:", "messenger:+1", "C-7K3M-9QXA", "http://[", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "१२३",
]


def long_text(longest: int = LONG_LENGTHS[-1]) -> st.SearchStrategy[str]:
    lengths = st.sampled_from([length for length in LONG_LENGTHS if length <= longest])
    return st.tuples(lengths, st.sampled_from(["a", "é", "😀", "\u202e", " ", "\ud83d"])).map(lambda pair: pair[1] * pair[0])


def hostile_text(longest: int = LONG_LENGTHS[-1]) -> st.SearchStrategy[str]:
    """Any text, lone surrogates included, the strings that broke parsers before, and strings past the record's limits.

    Build it once per module: building a strategy per draw costs more than the normalizer it feeds.
    """
    return st.one_of(st.text(ANY_CHAR, max_size=40), st.sampled_from(_SPECIAL_TEXTS), long_text(longest))


HOSTILE_TEXT = hostile_text()

HUGE_INTS = st.sampled_from([-1, 0, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400])


def nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for index in range(depth):
        value = [value] if index % 2 else {"x": value}
    return value


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(),  # NaN and infinities too: json.dumps writes them, and Python's json reads them
    HOSTILE_TEXT,
)
# A value of any JSON type, often the wrong one for the field it replaces, often out of range.
HOSTILE_VALUE: st.SearchStrategy[Any] = st.one_of(
    _LEAVES,
    st.lists(_LEAVES, max_size=3),
    st.dictionaries(st.text(max_size=6), _LEAVES, max_size=3),
    st.integers(min_value=20, max_value=60).map(nested),  # nests just past the normalizers' depth limit
)
_OPERATIONS = st.sampled_from(["replace", "replace", "replace", "delete", "add", "deep", "huge"])
_NEW_KEY = st.text(max_size=8)


def json_shapes(keys: list[str]) -> st.SearchStrategy[Any]:
    """JSON documents of random shape whose keys are mostly the real message's own."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=6))
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(), st.text(ANY_CHAR, max_size=20))
    return st.recursive(
        leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(key, children, max_size=5), max_leaves=25
    )


# --- mutations of a real message --------------------------------------------------------


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document: the keys of objects and the indices of arrays, depth first."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


_DEPTHS = st.sampled_from([33, 200, 5000, 100_000])
DEEP = "\x00deep\x00"  # replaced, once serialised, by nesting far deeper than json.dumps could write
# Replaced by an integer of more digits than Python converts (4300): json.loads raises ValueError, json.dumps cannot write it.
HUGE = "\x00huge\x00"


@st.composite
def mutated(draw: st.DrawFn, base: Any, extra_keys: list[str] | None = None) -> Any:
    """``base`` with one to four fields replaced by hostile values, deleted, or added."""
    document = copy.deepcopy(base)
    keys = st.sampled_from(extra_keys) | _NEW_KEY if extra_keys else _NEW_KEY
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        places = list(paths(document))
        if not places:
            break
        path = places[draw(st.integers(min_value=0, max_value=len(places) - 1))]
        parent = _parent(document, path)
        operation = draw(_OPERATIONS)
        if operation == "replace":
            parent[path[-1]] = draw(HOSTILE_VALUE)
        elif operation in ("deep", "huge"):
            parent[path[-1]] = DEEP if operation == "deep" else HUGE
        elif operation == "delete":
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(HOSTILE_VALUE)
        else:
            parent.append(draw(HOSTILE_VALUE))
    return document


@st.composite
def serialised(draw: st.DrawFn, document: Any) -> bytes:
    """A document as bytes, the way different senders write it: escaped or raw UTF-8, lone surrogates included."""
    text = json.dumps(document, ensure_ascii=draw(st.booleans()), allow_nan=True)
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate as the three bytes a careless encoder writes
    deep = json.dumps(DEEP).encode()
    if deep in raw:
        depth = draw(_DEPTHS)
        raw = raw.replace(deep, b"[" * depth + b"]" * depth)
    return raw.replace(json.dumps(HUGE).encode(), b"9" * 5000)


# --- what must come out ------------------------------------------------------------------

VALIDATOR = Draft202012Validator(json_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record_or_refusal(make: Callable[[], Complaint]) -> Complaint | None:
    """The record ``make`` returns, checked as a consumer would read it; None when it refused with InvalidMessage.

    Any other exception propagates: that is the defect the fuzz looks for.
    """
    try:
        complaint = make()
    except InvalidMessage as error:
        assert_refusal(error)
        return None
    serialised = complaint.to_json()
    VALIDATOR.validate(json.loads(serialised))
    assert Complaint.model_validate_json(serialised) == complaint
    return complaint


def assert_refusal(error: InvalidMessage) -> None:
    # The reason travels in the dead-letter event and in problem details: it must be text UTF-8 can carry.
    assert error.detail and encodable(error.detail), error.detail
    for item in error.errors:
        assert encodable(item.field) and encodable(item.detail), item
