"""Hostile requests through each HTTP handler of a real gateway: never a 5xx for content, and nothing answered 2xx is lost.

A 5xx tells Telegram and Twilio to deliver the same request again, so content
that makes a handler fail is retried for ever; a 2xx takes responsibility for
the message, so whatever was answered 2xx must reach the complaints topic or
the dead-letter topic. Each request is authentic (signed, or carrying the
secret), so that what is fuzzed is the content: the body, the parameters, the
form's fields and files.

Each test has an event loop of its own, run only while a request is in
flight: hypothesis draws the next input with the loop at rest, so the
gateway's use of the random module cannot disturb its generation. Each test
counts its requests by status (JUnit properties, printed nowhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from yarl import URL

from intake.channels.telegram import SECRET_HEADER
from intake.normalizer import telegram, twilio, webhook
from intake.normalizer.errors import InvalidMessage
from tests.support.fuzz import ANY_CHAR, HOSTILE_TEXT, VALIDATOR, fuzz, json_shapes, mutated, serialised
from tests.support.gateway import PARTNER, running, settings, signed_headers
from tests.support.messages import (
    TELEGRAM_KEYS,
    TELEGRAM_UPDATES,
    TWILIO_MESSAGES,
    WEBHOOK_BODIES,
    WEBHOOK_KEYS,
    form_encoded,
    twilio_params,
    typed_fields,
)
from tests.support.telegram_api import BOT_ID, TOKEN, TelegramApi
from tests.support.topic import of_type, read_topic
from tests.support.web_form import FormClient, Page, png

pytestmark = [
    pytest.mark.kafka,
    # RetryAfter's own constructor reads its deprecated int-valued retry_after (PTB 22.2+); nothing of ours to change.
    pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:telegram.warnings.PTBDeprecationWarning"),
]

Outcome = Literal["record", "dead"]
TELEGRAM_SECRET = "tg-webhook-secret_0123456789"
TWILIO_TOKEN = "0f3c9a1b2d4e5f60718293a4b5c6d7e8"
PUBLIC = "https://complaints.example.com"
# When the predictions below are made; the normalizers' outcome for these channels does not depend on it.
NOW = dt.datetime(2025, 3, 4, 12, 0, tzinfo=dt.timezone.utc)


@dataclass
class Ledger:
    """What the fuzz sent, what the gateway answered, and the spool keys it took responsibility for."""

    statuses: Counter[int] = field(default_factory=Counter)
    # spool key -> where the normalizer says it goes; the first delivery of a key decides.
    taken: dict[str, Outcome] = field(default_factory=dict)

    def answered(self, status: int, request: object) -> None:
        self.statuses[status] += 1
        # The request is in the message: hypothesis shrinks it, and the report quotes it.
        assert status < 500, f"{status} for {request!r:.600}"

    def took(self, key: str, outcome: Outcome) -> None:
        self.taken.setdefault(key, outcome)

    def report(self, record_property: Any, channel: str) -> None:
        record_property(f"{channel}_requests", sum(self.statuses.values()))
        record_property(f"{channel}_statuses", json.dumps(dict(sorted(self.statuses.items()))))
        record_property(f"{channel}_taken", len(self.taken))


T = TypeVar("T")


class Loop:
    """The test's own event loop, driven from the test: the gateway and the client run only inside ``run``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self._loop.run_until_complete(awaitable)

    def enter(self, make: Callable[[], contextlib.AbstractAsyncContextManager[T]]) -> T:
        """Make and enter an async context (a gateway, a client) inside the loop; it is left when the test ends."""

        async def entered() -> T:
            return await self._stack.enter_async_context(make())

        return self.run(entered())

    def close(self) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self._loop.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    driven = Loop()
    try:
        yield driven
    finally:
        driven.close()


def fuzz_requests(loop: Loop, strategy: st.SearchStrategy[Any], send: Callable[[Any], Awaitable[None]], examples: int) -> None:
    """Send ``examples`` inputs drawn from ``strategy``, one at a time, each through the gateway."""

    @fuzz(examples)
    @given(strategy)
    def run(value: Any) -> None:
        loop.run(asyncio.wait_for(send(value), timeout=60))

    run()


def _is_record(record) -> bool:  # type: ignore[no-untyped-def]
    return bool(of_type([record], "received") or of_type([record], "followed_up"))


async def assert_nothing_lost(bootstrap: str, topic: str, ledger: Ledger) -> None:
    """Every key answered 2xx is on the complaints topic (as a record) or on the dead-letter topic."""
    records = sum(1 for outcome in ledger.taken.values() if outcome == "record")
    dead = len(ledger.taken) - records
    # Counting the records only: each comes with acknowledgement events, and counting those too stopped the read before
    # the last records (sent again after a broker's NotLeaderForPartition) had arrived.
    complaints = await read_topic(bootstrap, topic, expect=records, timeout=60, counted=_is_record)
    dead_letters = await read_topic(bootstrap, f"{topic}.dead-letter", expect=dead, timeout=30)
    recorded = [*of_type(complaints, "received"), *of_type(complaints, "followed_up")]
    for record in recorded:
        VALIDATOR.validate(record.data)  # what a consumer reads validates against the shipped schema
    found = {f"{r.data['channel']}:{r.data['channel_message_id']}" for r in recorded} | {r.data["spool_key"] for r in dead_letters}
    missing = sorted(set(ledger.taken) - found)
    assert missing == [], f"{len(missing)} messages answered 2xx are on neither topic, e.g. {missing[:5]}"


# --- the partner webhook ----------------------------------------------------------------------

_BROKEN_COMPLAINT = st.sampled_from(WEBHOOK_BODIES).flatmap(lambda body: mutated(body, WEBHOOK_KEYS)).flatmap(serialised)
# Mostly real complaints broken field by field: random shapes and bytes only ever reach the 4xx answers.
WEBHOOK_BODY = st.one_of(_BROKEN_COMPLAINT, _BROKEN_COMPLAINT, _BROKEN_COMPLAINT, json_shapes(WEBHOOK_KEYS).flatmap(serialised), st.binary(max_size=300))


def test_the_webhook_answers_any_signed_body_without_a_5xx_and_loses_nothing(tmp_path: Path, kafka, topic, loop: Loop, record_property):
    ledger = Ledger()
    keys = itertools.count()
    _gateway, base = loop.enter(lambda: running(settings(tmp_path, kafka.bootstrap, topic)))
    http = loop.enter(aiohttp.ClientSession)

    async def send(body: bytes) -> None:
        key = f"fuzz-{next(keys)}"
        async with http.post(f"{base}/webhook/{PARTNER}", data=body, headers=signed_headers(body, key)) as response:
            await response.read()
        ledger.answered(response.status, body)
        if 200 <= response.status < 300:
            # The webhook refuses invalid content with 4xx; a 202 is a record.
            ledger.took(f"webhook:{webhook.channel_message_id(PARTNER, key)}", "record")

    try:
        fuzz_requests(loop, WEBHOOK_BODY, send, 300)
        loop.run(assert_nothing_lost(kafka.bootstrap, topic, ledger))
    finally:
        ledger.report(record_property, "webhook")  # the figures of a failed run count too
    assert ledger.statuses[202] > 0 and sum(n for status, n in ledger.statuses.items() if 400 <= status < 500) > 0


# --- Telegram, webhook mode ---------------------------------------------------------------------


@st.composite
def telegram_update(draw: st.DrawFn) -> bytes:
    """A real Update with fresh ids (so that most are new messages, not redeliveries), broken field by field."""
    base = json.loads(json.dumps(draw(st.sampled_from(TELEGRAM_UPDATES))))
    base["update_id"] = draw(st.integers(min_value=1, max_value=2**31))
    for kind in ("message", "edited_message"):
        if kind in base:
            base[kind]["message_id"] = draw(st.integers(min_value=1, max_value=2**31))
    return draw(serialised(draw(mutated(base, TELEGRAM_KEYS))))


TELEGRAM_BODY = st.one_of(
    telegram_update(),
    telegram_update(),
    telegram_update(),
    st.builds(lambda update_id, shape: {"update_id": update_id, "message": shape}, st.integers(), json_shapes(TELEGRAM_KEYS)).flatmap(serialised),
    st.binary(max_size=300),
)


def telegram_taken(raw: bytes) -> tuple[str, Outcome] | None:
    """The spool key an update answered 200 is stored under, and where it goes; None for what is skipped on purpose."""
    update_id = json.loads(raw)["update_id"]  # the channel read it, or it would have answered 400
    try:
        update = telegram.parse(raw)
    except InvalidMessage:
        return f"telegram:update:{update_id}", "dead"
    if update.message is None or telegram.classify(update).kind != "complaint":
        return None  # edits, commands, stickers: answered, not recorded
    key = f"telegram:{telegram.channel_message_id(update.message)}"
    try:
        telegram.to_complaint(raw, received_at=NOW, bot_id=BOT_ID)
    except InvalidMessage:
        return key, "dead"
    return key, "record"


def test_the_telegram_webhook_answers_any_update_without_a_5xx_and_loses_nothing(tmp_path: Path, kafka, topic, loop: Loop, record_property):
    ledger = Ledger()
    api = loop.enter(TelegramApi)
    options = {
        "enabled": True, "token": TOKEN, "mode": "webhook", "webhook_secret": TELEGRAM_SECRET, "api_url": api.url,
        "retry_initial_seconds": 0.2, "request_timeout_seconds": 5,
    }
    config = settings(tmp_path, kafka.bootstrap, topic, telegram=options, attachments={"directory": str(tmp_path / "files")})
    _gateway, base = loop.enter(lambda: running(config))
    http = loop.enter(aiohttp.ClientSession)

    async def send(raw: bytes) -> None:
        headers = {"Content-Type": "application/json", SECRET_HEADER: TELEGRAM_SECRET}
        async with http.post(f"{base}/telegram/webhook", data=raw, headers=headers) as response:
            await response.read()
        ledger.answered(response.status, raw)
        if 200 <= response.status < 300:
            taken = telegram_taken(raw)
            if taken is not None:
                ledger.took(*taken)

    try:
        fuzz_requests(loop, TELEGRAM_BODY, send, 300)
        loop.run(assert_nothing_lost(kafka.bootstrap, topic, ledger))
    finally:
        ledger.report(record_property, "telegram")  # the figures of a failed run count too
    assert ledger.statuses[200] > 0 and len(ledger.taken) > 0


# --- Twilio -------------------------------------------------------------------------------------

_BASE_SIDS = {value for params in TWILIO_MESSAGES for name, value in params if name.endswith("Sid") and value.startswith(("SM", "MM"))}


@st.composite
def twilio_request(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """(path, parameters): a real message with a fresh MessageSid, broken, posted to either of Twilio's URLs."""
    sid = "SM" + format(draw(st.integers(min_value=0, max_value=2**128 - 1)), "032x")
    params = [(name, sid if value in _BASE_SIDS else value) for name, value in draw(twilio_params())]
    return draw(st.sampled_from(["/twilio/messages", "/twilio/messages", "/twilio/status"])), params


def twilio_taken(body: bytes) -> tuple[str, Outcome] | None:
    """The spool key a post answered 200 is stored under; None for delivery reports and keywords (counted only)."""
    params = twilio.parse(body)
    sid = twilio.message_sid(params)
    if twilio.delivery_status(params) is not None or twilio.keyword(params) is not None or sid is None:
        return None
    key = f"{twilio.channel_of(params)}:{sid}"
    try:
        twilio.to_complaint(body, received_at=NOW, locales=("en",))
    except InvalidMessage:
        return key, "dead"
    return key, "record"


def twilio_signature(url: str, body: bytes) -> str:
    """What Twilio sends for these parameters; a body that is not even UTF-8 form parameters cannot be signed."""
    try:
        return RequestValidator(TWILIO_TOKEN).compute_signature(url, twilio.parse(body))
    except (InvalidMessage, UnicodeEncodeError):
        return "unsignable"


def test_twilio_answers_any_signed_post_without_a_5xx_and_loses_nothing(tmp_path: Path, kafka, topic, loop: Loop, record_property):
    ledger = Ledger()
    config = settings(
        tmp_path, kafka.bootstrap, topic, http={"public_base_url": PUBLIC}, attachments={"directory": str(tmp_path / "files")},
        # Media are copied only from media_hosts: none of the fuzzed URLs is fetched, but each is looked at.
        twilio={"enabled": True, "auth_tokens": [TWILIO_TOKEN], "download_media": True, "media_hosts": ["media.invalid"]},
    )
    _gateway, base = loop.enter(lambda: running(config))
    http = loop.enter(aiohttp.ClientSession)

    async def send(request: tuple[str, list[tuple[str, str]]]) -> None:
        path, params = request
        body = form_encoded(params)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": twilio_signature(PUBLIC + path, body)}
        async with http.post(URL(base + path, encoded=True), data=body, headers=headers) as response:
            await response.read()
        ledger.answered(response.status, params)
        if 200 <= response.status < 300:
            taken = twilio_taken(body)
            if taken is not None:
                ledger.took(*taken)

    try:
        fuzz_requests(loop, twilio_request(), send, 300)
        loop.run(assert_nothing_lost(kafka.bootstrap, topic, ledger))
    finally:
        ledger.report(record_property, "twilio")  # the figures of a failed run count too
    assert ledger.statuses[200] > 0 and len(ledger.taken) > 0


# --- the web form ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One post of the form: what was typed, what was attached, how it was encoded, which language was asked for."""

    fields: dict[str, str]
    extra: list[tuple[str, str]]
    files: list[tuple[str, bytes, str]]
    multipart: bool
    lang: str


_FILE = st.tuples(
    HOSTILE_TEXT,
    st.one_of(st.binary(max_size=200), st.binary(max_size=100).map(lambda tail: png() + tail), st.just(b"%PDF-1.4\n" * 3)),
    st.sampled_from(["image/png", "application/pdf", "application/octet-stream", "text/html", ""]),
)
SUBMISSION = st.builds(
    Submission,
    fields=typed_fields(),
    extra=st.lists(st.tuples(st.text(ANY_CHAR, max_size=10), HOSTILE_TEXT), max_size=2),
    files=st.lists(_FILE, max_size=3),
    multipart=st.booleans(),
    lang=st.sampled_from(["en", "pl", "fa", "", "xx", "\ud800", "a" * 100]),
)


def _wire(text: str) -> bytes:
    """Text as a careless client writes it: a lone surrogate as its three bytes, which are not UTF-8."""
    return text.encode("utf-8", "surrogatepass")


def form_body(submission: Submission, hidden: dict[str, str]) -> tuple[bytes, str]:
    """(body, content type): multipart/form-data written by hand, so that any bytes can be sent, or urlencoded."""
    fields = [*submission.fields.items(), *submission.extra, *hidden.items()]
    if not submission.multipart:
        body = "&".join(quote_from_bytes(_wire(name)) + "=" + quote_from_bytes(_wire(value)) for name, value in fields)
        return body.encode(), "application/x-www-form-urlencoded"
    boundary = b"----intake-fuzz-7f3a9c"
    parts = [
        b'Content-Disposition: form-data; name="' + _wire(name).replace(b'"', b"%22") + b'"\r\n\r\n' + _wire(value) for name, value in fields
    ]
    for filename, data, content_type in submission.files:
        parts.append(
            b'Content-Disposition: form-data; name="attachments"; filename="' + _wire(filename).replace(b'"', b"%22").replace(b"\r", b"").replace(b"\n", b"")
            + b'"\r\nContent-Type: ' + content_type.encode() + b"\r\n\r\n" + data
        )
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    return body, "multipart/form-data; boundary=" + boundary.decode()


def test_the_web_form_answers_any_submission_without_a_5xx_and_loses_nothing(tmp_path: Path, kafka, topic, loop: Loop, record_property):
    ledger = Ledger()
    submissions = itertools.count()
    # One visitor sends every submission: the rate limit is not what is tested here.
    config = settings(
        tmp_path, kafka.bootstrap, topic, attachments={"directory": str(tmp_path / "files")},
        web_form={"enabled": True, "rate_limit": 1_000_000},
    )
    _gateway, base = loop.enter(lambda: running(config))
    client = loop.enter(lambda: FormClient(base))
    loop.run(client.open("?lang=en"))
    csrf = client.hidden()["csrf_token"]

    async def send(submission: Submission) -> None:
        # A fresh submission id (made when the form is served) per post: each is a new complaint.
        submission_id = format(next(submissions), "022d")
        body, content_type = form_body(submission, {"csrf_token": csrf, "submission_id": submission_id})
        url = URL(f"{base}/complaint?lang={quote_from_bytes(_wire(submission.lang))}", encoded=True)
        async with client.session.post(url, data=body, headers={"Content-Type": content_type}) as response:
            html = await response.text(errors="replace")
        ledger.answered(response.status, submission)
        if response.status == 200:
            # The confirmation page: its reference is the customer's proof that the complaint was taken.
            assert Page(html).by_id("reference").text
            ledger.took(f"web:{submission_id}", "record")

    try:
        fuzz_requests(loop, SUBMISSION, send, 250)
        loop.run(assert_nothing_lost(kafka.bootstrap, topic, ledger))
    finally:
        ledger.report(record_property, "web_form")  # the figures of a failed run count too
    assert ledger.statuses[200] > 0 and ledger.statuses[422] > 0
