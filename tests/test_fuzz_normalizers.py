"""Every channel's normalizer, fuzzed: whatever the bytes, a record that validates against the shipped schema, or InvalidMessage.

A normalizer that raises anything else turns a message into a 5xx, and
Telegram and Twilio deliver the same poison again for ever. The inputs are
random bytes, JSON of random shapes, and real messages broken field by field
(wrong types, huge numbers, empty and over-long strings, lone surrogates, deep
nesting); for email, MIME trees built at random and byte-level mutations of
the corpus. Each test counts its inputs (``record_property``: in the JUnit
report, printed nowhere) and checks that both outcomes were reached, so a
strategy that stopped producing one of them is noticed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intake.attachments import safe_filename
from normalizer import email as mail
from normalizer import telegram, twilio, web_form, webhook
from normalizer.errors import InvalidMessage
from normalizer.record import Attachment, Complaint
from tests.support.fuzz import (
    ANY_CHAR,
    assert_refusal,
    fuzz,
    HOSTILE_TEXT,
    hostile_text,
    json_shapes,
    mutated,
    record_or_refusal,
    serialised,
)
from tests.support.gateway import complaint_body
from tests.support.telegram_api import BOT_ID, bot_user, message, photo_sizes, user
from tests.support.web_form import valid_fields

NOW = dt.datetime(2025, 3, 4, 12, 0, tzinfo=dt.timezone.utc)
LOCALES = ("en", "pl", "fa", "de")
CORPUS = Path(__file__).parent / "corpus" / "email"


class Tally:
    """How many inputs a test fed, by outcome; reported through the JUnit properties, asserted on, never printed."""

    def __init__(self, record_property: Any, name: str) -> None:
        self._record_property = record_property
        self._name = name
        self.outcomes: Counter[str] = Counter()

    def saw(self, complaint: Complaint | None) -> None:
        self.outcomes["record" if complaint is not None else "invalid"] += 1

    def report(self, *, both: bool = True) -> None:
        self._record_property(f"{self._name}_inputs", sum(self.outcomes.values()))
        self._record_property(f"{self._name}_records", self.outcomes["record"])
        self._record_property(f"{self._name}_invalid", self.outcomes["invalid"])
        if both:
            # A strategy that only ever produces refusals (or only records) no longer tests the other path.
            assert self.outcomes["record"] > 0 and self.outcomes["invalid"] > 0, self.outcomes


@pytest.fixture
def tally(record_property: Any, request: pytest.FixtureRequest) -> Tally:
    return Tally(record_property, request.node.name.removeprefix("test_"))


# --- Telegram --------------------------------------------------------------------------

CUSTOMER = user(5550001, language_code="pl")
ACKNOWLEDGEMENT = message(bot_user(), 40, text="Your complaint C-7K3M-9QXA is registered.", date=1_700_000_000)
TELEGRAM_UPDATES: list[dict[str, Any]] = [
    {"update_id": 1, "message": message(CUSTOMER, 41, text="Paczka przyszła rozbita.", date=1_700_000_000)},
    {
        "update_id": 2,
        "message": message(
            CUSTOMER, 42, date=1_700_000_100, caption="The lid", photo=photo_sizes("AgAC-photo", "AQAD-photo"),
            reply_to_message=ACKNOWLEDGEMENT,
        ),
    },
    {
        "update_id": 3,
        "message": message(
            CUSTOMER, 43, date=1_700_000_200, text="Receipt attached",
            document={"file_id": "BQAC-doc", "file_unique_id": "AgAD-doc", "file_name": "receipt.pdf", "mime_type": "application/pdf", "file_size": 48_213},
            quote={"text": "C-7K3M-9QXA", "position": 0},
        ),
    },
    {
        "update_id": 4,
        "message": message(
            CUSTOMER, 44, date=1_700_000_300, contact={"phone_number": "48601234567", "first_name": "Ewa", "user_id": CUSTOMER["id"]}
        ),
    },
    {"update_id": 5, "message": message(CUSTOMER, 45, text="/start", date=1_700_000_400)},
    {"update_id": 6, "edited_message": {**message(CUSTOMER, 41, text="edited", date=1_700_000_000), "edit_date": 1_700_000_500}},
    {
        "update_id": 7,
        # A group's anonymous admin: no "from" person, a sender_chat instead.
        "message": {"message_id": 46, "date": 1_700_000_600, "chat": {"id": -1001, "type": "supergroup", "title": "Shop"},
                    "sender_chat": {"id": -1001, "type": "supergroup", "title": "Shop"}, "text": "Complaint from the group"},
    },
    {"update_id": 8, "message": message(CUSTOMER, 47, date=1_700_000_700, voice={"file_id": "AwAC", "file_unique_id": "AgAD-v", "duration": 3, "mime_type": "audio/ogg", "file_size": 9000})},
]
TELEGRAM_KEYS = sorted({
    "update_id", "message", "edited_message", "message_id", "date", "chat", "id", "type", "from", "is_bot", "first_name",
    "last_name", "language_code", "text", "caption", "photo", "document", "file_id", "file_unique_id", "file_size", "width",
    "height", "mime_type", "file_name", "contact", "phone_number", "user_id", "reply_to_message", "quote", "entities",
    "offset", "length", "sender_chat", "edit_date", "forward_origin", "external_reply", "pinned_message", "voice", "duration",
})


def telegram_record(raw: bytes) -> Complaint | None:
    """What the channel does with an update: the checks it makes before the record, then the record."""

    def make() -> Complaint:
        update = telegram.parse(raw)
        # The channel calls these before normalize(): once parse() has returned, they must not fail either.
        kind = telegram.classify(update)
        if update.message is not None:
            telegram.channel_message_id(update.message)
            telegram.files(update.message)
            telegram.command(update.message)
            telegram.complainant(update.message)
            if update.message.from_user is not None:
                assert update.message.from_user.language_code is None or isinstance(update.message.from_user.language_code, str)
        complaint = telegram.to_complaint(raw, received_at=NOW, bot_id=BOT_ID)
        assert kind.kind == "complaint"
        return complaint

    return record_or_refusal(make)


def test_every_real_update_shape_becomes_a_record_or_is_skipped_on_purpose():
    outcomes = [telegram_record(json.dumps(update).encode()) is not None for update in TELEGRAM_UPDATES]
    # The command and the edit are not complaints; everything else is.
    assert outcomes == [True, True, True, True, False, False, True, True]


def test_telegram_random_bytes(tally: Tally):
    @fuzz(400)
    @given(st.binary(max_size=600))
    def run(raw: bytes) -> None:
        tally.saw(telegram_record(raw))

    run()
    tally.report(both=False)  # random bytes are practically never an Update


def test_telegram_json_of_random_shapes(tally: Tally):
    @fuzz(600)
    @given(json_shapes(TELEGRAM_KEYS).flatmap(serialised))
    def run(raw: bytes) -> None:
        tally.saw(telegram_record(raw))

    run()
    tally.report(both=False)


def test_telegram_updates_with_broken_fields(tally: Tally):
    @fuzz(2000)
    @given(st.sampled_from(TELEGRAM_UPDATES).flatmap(lambda update: mutated(update, TELEGRAM_KEYS)).flatmap(serialised))
    def run(raw: bytes) -> None:
        tally.saw(telegram_record(raw))

    run()
    tally.report()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chat", None),
        ("text", 5),
        ("text", ["a"]),
        ("date", 10**20),
        ("date", 1e300),
        ("message_id", 10**400),
        ("from", {"id": "5550001", "is_bot": False, "first_name": "Ewa"}),
        ("from", {"id": 5550001, "is_bot": False, "first_name": 5}),
        ("photo", [{"file_id": "x", "file_unique_id": "y", "width": "1", "height": 1}]),
    ],
)
def test_the_reported_poison_updates_are_refused_not_raised(field: str, value: Any):
    update = json.loads(json.dumps(TELEGRAM_UPDATES[0]))
    if value is None:
        del update["message"][field]
    else:
        update["message"][field] = value
    with pytest.raises(InvalidMessage) as refused:
        telegram.parse(json.dumps(update).encode())
    assert_refusal(refused.value)


def test_lone_surrogates_and_over_long_text_are_repaired_and_cut_not_refused():
    update = json.loads(json.dumps(TELEGRAM_UPDATES[0]))
    # Telegram cuts names mid-emoji: the first half of a surrogate pair, alone.
    update["message"]["from"]["first_name"] = "Ewa \ud83d"
    update["message"]["text"] = "x" * 100_001 + "\udc80"
    raw = json.dumps(update).encode()
    complaint = record_or_refusal(lambda: telegram.to_complaint(raw, received_at=NOW, bot_id=BOT_ID))
    assert complaint is not None
    assert complaint.complainant.name == "Ewa \ufffd Nowak"
    assert complaint.flags.truncated and len(complaint.text) == 100_000
    assert complaint.full_text is not None and complaint.full_text.endswith("x\ufffd")


def test_deep_json_is_refused_not_a_recursion_error():
    raw = b'{"update_id": 1, "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidMessage, match="nests too deeply"):
        telegram.parse(raw)


# --- Twilio -----------------------------------------------------------------------------

SID = "SM" + "0" * 32
TWILIO_MESSAGES: list[list[tuple[str, str]]] = [
    [("ToCountry", "PL"), ("SmsMessageSid", SID), ("NumMedia", "0"), ("SmsSid", SID), ("SmsStatus", "received"),
     ("Body", "Paczka przyszła rozbita, proszę o zwrot."), ("FromCountry", "PL"), ("To", "+48732100200"), ("NumSegments", "1"),
     ("MessageSid", SID), ("AccountSid", "AC" + "1f" * 16), ("From", "+48601234567"), ("ApiVersion", "2010-04-01")],
    [("MessageSid", "MM" + "1" * 32), ("NumMedia", "2"), ("Body", "Photos of the damage"), ("From", "+14155550100"),
     ("MediaUrl0", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"), ("MediaContentType0", "image/jpeg"),
     ("MediaUrl1", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2"), ("MediaContentType1", "application/pdf"),
     ("MessagingServiceSid", "MG" + "2e" * 16), ("SmsStatus", "received")],
    [("MessageSid", "SM" + "2" * 32), ("ProfileName", "Ewa 🌷"), ("WaId", "48601234567"), ("Body", "Dzień dobry, reklamacja C-7K3M-9QXA"),
     ("From", "whatsapp:+48601234567"), ("To", "whatsapp:+14155238886"), ("MessageType", "text"), ("SmsStatus", "received")],
    [("MessageSid", "SM" + "3" * 32), ("From", "whatsapp:+48601234567"), ("Latitude", "52.2297"), ("Longitude", "21.0122"),
     ("Label", "Sklep"), ("Address", "Warszawa"), ("Body", ""), ("MessageType", "location")],
    [("MessageSid", "SM" + "4" * 32), ("From", "MyShop"), ("Body", "A sender id, not a number"), ("FromCountry", "GB")],
    [("MessageSid", "SM" + "5" * 32), ("From", "+48601234567"), ("Body", "STOP"), ("OptOutType", "STOP")],
    [("MessageSid", "SM" + "6" * 32), ("MessageStatus", "delivered"), ("From", "+48732100200"), ("ErrorCode", "30003")],
]
TWILIO_NAMES = sorted({name for params in TWILIO_MESSAGES for name, _value in params} | {"ButtonText", "Forwarded", "MediaUrl2", "MediaContentType2"})


# Twilio posts at most a few KiB and the channel refuses bodies over 64 KiB: longer values only slow the fuzz down.
_TWILIO_VALUE = st.one_of(hostile_text(5001), st.sampled_from(["0", "-1", "99", "9" * 5000, "١٢", "http://[", "whatsapp:+", "rcs:x"]))
_TWILIO_NAME = st.sampled_from(TWILIO_NAMES) | st.text(ANY_CHAR, max_size=8)
_TWILIO_OPERATION = st.sampled_from(["replace", "replace", "delete", "repeat", "add"])


@st.composite
def twilio_params(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A real message's parameters, some replaced, dropped, repeated or added."""
    params = list(draw(st.sampled_from(TWILIO_MESSAGES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        operation = draw(_TWILIO_OPERATION)
        index = draw(st.integers(min_value=0, max_value=max(0, len(params) - 1)))
        value = draw(_TWILIO_VALUE)
        if operation == "replace" and params:
            params[index] = (params[index][0], value)
        elif operation == "delete" and params:
            params.pop(index)
        elif operation == "repeat" and params:
            params.insert(index, (params[index][0], value))
        else:
            params.append((draw(_TWILIO_NAME), value))
    return params


def form_encoded(params: list[tuple[str, str]]) -> bytes:
    """As a client encodes the form; a lone surrogate as the bytes a careless encoder writes for it."""
    return "&".join(
        quote_from_bytes(name.encode("utf-8", "surrogatepass")) + "=" + quote_from_bytes(value.encode("utf-8", "surrogatepass"))
        for name, value in params
    ).encode()


def twilio_record(raw: bytes) -> Complaint | None:
    def make() -> Complaint:
        params = twilio.parse(raw)
        # The channel reads these before normalize(), to tell reports, keywords and messages apart.
        twilio.delivery_status(params)
        twilio.channel_of(params)
        twilio.keyword(params)
        twilio.message_sid(params)
        for item in twilio.media(params):
            Attachment(filename=item.filename, content_type="application/octet-stream", location="file:///x")
        return twilio.to_complaint(raw, received_at=NOW, locales=LOCALES)

    return record_or_refusal(make)


def test_every_real_twilio_message_becomes_a_record():
    for params in TWILIO_MESSAGES:
        assert twilio_record(form_encoded(params)) is not None, params


def test_twilio_random_bytes(tally: Tally):
    @fuzz(500)
    @given(st.binary(max_size=600) | st.text(max_size=200).map(str.encode))
    def run(raw: bytes) -> None:
        tally.saw(twilio_record(raw))

    run()
    tally.report(both=False)


def test_twilio_parameters_with_broken_values(tally: Tally):
    @fuzz(1800)
    @given(twilio_params())
    def run(params: list[tuple[str, str]]) -> None:
        tally.saw(twilio_record(form_encoded(params)))

    run()
    tally.report()


def test_a_twilio_body_of_any_length_is_cut_and_kept_in_full():
    raw = form_encoded([("MessageSid", SID), ("From", "+48601234567"), ("Body", "a" * 1_100_000)])
    complaint = record_or_refusal(lambda: twilio.to_complaint(raw, received_at=NOW, locales=LOCALES))
    assert complaint is not None and complaint.flags.truncated
    assert complaint.full_text is not None and len(complaint.full_text) == 1_000_000


def test_a_media_url_with_a_long_last_segment_gets_a_safe_file_name():
    raw = form_encoded([("MessageSid", SID), ("From", "+48601234567"), ("NumMedia", "1"), ("MediaUrl0", "https://x/" + "m" * 400)])
    complaint = record_or_refusal(lambda: twilio.to_complaint(raw, received_at=NOW, locales=LOCALES))
    assert complaint is not None and len(complaint.attachments[0].filename or "") <= 150


# --- the partner webhook ------------------------------------------------------------------

WEBHOOK_BODIES: list[dict[str, Any]] = [
    json.loads(complaint_body()),
    json.loads(complaint_body("Reply to C-7K3M-9QXA", follows_up="c-7k3m-9qxa", language="pl")),
    json.loads(
        complaint_body(
            "With a photo",
            attachments=[{"filename": "lid.jpg", "content_type": "image/jpeg", "size": 81_000, "url": "https://partner.example/lid.jpg"}],
            complainant={"phone": "601 234 567", "country": "PL", "customer_id": "c-1", "preferred_contact": "phone"},
        )
    ),
]
WEBHOOK_KEYS = ["complainant", "name", "email", "phone", "country", "customer_id", "preferred_contact", "locale", "subject", "text",
                "language", "product", "occurred_at", "desired_outcome", "follows_up", "attachments", "filename", "content_type",
                "size", "url"]


def webhook_record(raw: bytes) -> Complaint | None:
    return record_or_refusal(lambda: webhook.to_complaint(raw, partner="acme", idempotency_key="order-1001", received_at=NOW))


def test_webhook_random_bytes_and_shapes(tally: Tally):
    @fuzz(600)
    @given(st.binary(max_size=400) | json_shapes(WEBHOOK_KEYS).flatmap(serialised))
    def run(raw: bytes) -> None:
        tally.saw(webhook_record(raw))

    run()
    tally.report(both=False)


def test_webhook_complaints_with_broken_fields(tally: Tally):
    @fuzz(1500)
    @given(st.sampled_from(WEBHOOK_BODIES).flatmap(lambda body: mutated(body, WEBHOOK_KEYS)).flatmap(serialised))
    def run(raw: bytes) -> None:
        tally.saw(webhook_record(raw))

    run()
    tally.report()


def test_a_partner_text_cut_mid_emoji_is_repaired_not_refused():
    # JavaScript's slice() and JSON.stringify write half an emoji as a lone \ud83d escape.
    raw = b'{"text": "Broken lid \\ud83d", "complainant": {"name": "Ewa \\ude00"}}'
    complaint = webhook_record(raw)
    assert complaint is not None and complaint.text == "Broken lid \ufffd" and complaint.complainant.name == "Ewa \ufffd"


def test_a_partner_size_beyond_64_bits_is_named_as_the_wrong_field():
    raw = json.dumps({"text": "x", "attachments": [{"content_type": "image/jpeg", "url": "https://p/x", "size": 2**64}]}).encode()
    with pytest.raises(InvalidMessage) as refused:
        webhook.to_complaint(raw, partner="acme", idempotency_key="k", received_at=NOW)
    assert [error.field for error in refused.value.errors] == ["attachments.0.size"]


# --- the web form -------------------------------------------------------------------------

FORM_ATTACHMENT = {"filename": "lid.png", "content_type": "image/png", "size": 68, "sha256": "ab" * 32, "location": "file:///var/intake/ab/abab"}
FORM_FIELDS = valid_fields()
FORM_SUBMISSIONS: list[dict[str, Any]] = [
    {"fields": FORM_FIELDS, "locale": "pl", "attachments": []},
    {"fields": valid_fields(email="", preferred_contact="phone"), "locale": "fa", "attachments": [FORM_ATTACHMENT]},
]
FORM_KEYS = ["fields", "locale", "attachments", *web_form.TEXT_FIELDS, *FORM_ATTACHMENT]


def form_record(raw: bytes) -> Complaint | None:
    return record_or_refusal(lambda: web_form.to_complaint(raw, submission_id="A" * 22, received_at=NOW, default_region="PL"))


@st.composite
def typed_fields(draw: st.DrawFn) -> dict[str, str]:
    """What a browser (or a bot) can post: the form's fields, each possibly replaced by any text, or left out."""
    fields = dict(FORM_FIELDS)
    for name in draw(st.lists(st.sampled_from(web_form.TEXT_FIELDS), max_size=4)):
        if draw(st.booleans()):
            fields[name] = draw(HOSTILE_TEXT)
        else:
            fields.pop(name, None)
    return fields


def test_web_form_fields_as_typed(tally: Tally):
    @fuzz(1000)
    @given(typed_fields(), st.sampled_from(["pl", "en", "fa"]))
    def run(fields: dict[str, str], locale: str) -> None:
        # What the channel does: validate what was typed, then build the raw submission and its record.
        try:
            web_form.validate(fields, today=NOW.date(), default_region="PL")
        except InvalidMessage as error:
            assert_refusal(error)
            tally.saw(None)
            return
        raw = web_form.raw_submission(fields, locale=locale, attachments=[Attachment.model_validate(FORM_ATTACHMENT)])
        complaint = form_record(raw)
        assert complaint is not None  # what validate() accepted, the record must take
        tally.saw(complaint)

    run()
    tally.report()


def test_web_form_raw_submissions_with_broken_fields(tally: Tally):
    @fuzz(1000)
    @given(st.sampled_from(FORM_SUBMISSIONS).flatmap(lambda submission: mutated(submission, FORM_KEYS)).flatmap(serialised))
    def run(raw: bytes) -> None:
        tally.saw(form_record(raw))

    run()
    tally.report()


def test_web_form_random_bytes_and_shapes(tally: Tally):
    @fuzz(400)
    @given(st.binary(max_size=400) | json_shapes(FORM_KEYS).flatmap(serialised))
    def run(raw: bytes) -> None:
        tally.saw(form_record(raw))

    run()
    tally.report(both=False)


def test_uploads_of_any_size_and_first_bytes_are_typed_or_refused():
    @fuzz(300)
    @given(st.lists(st.tuples(st.text(ANY_CHAR, max_size=20), st.integers(min_value=0, max_value=2**40), st.binary(max_size=16)), max_size=8))
    def run(uploads: list[tuple[str, int, bytes]]) -> None:
        try:
            types = web_form.check_attachments([web_form.Upload(*upload) for upload in uploads], max_count=5, max_bytes=10 << 20)
        except InvalidMessage as error:
            assert_refusal(error)
            return
        assert all(media_type in web_form.ATTACHMENT_TYPES for media_type in types)

    run()


# --- email ------------------------------------------------------------------------------

CHARSETS = ["utf-8", "us-ascii", "iso-8859-2", "windows-1250", "gb2312", "koi8-r", "iso-2022-jp", "shift_jis", "big5", "utf-7",
            "utf-16", "utf-16-le", "utf-32", "x-unknown", "unicode_escape", "idna", "bogus", "", "cp50220", "utf-8''"]
MEDIA_TYPES = ["text/plain", "text/html", "text/enriched", "application/octet-stream", "application/pdf", "image/jpeg",
               "application/ms-tnef", "message/delivery-status", "text/rfc822-headers", "a/" + "b" * 300, "bogus"]


def _header_bytes() -> st.SearchStrategy[bytes]:
    """A header value as mailers write it: plain, raw 8-bit, or RFC 2047 words in any charset, broken ones included."""
    word = st.tuples(st.sampled_from(CHARSETS), st.sampled_from(["B", "Q", "b", "x"]), st.binary(max_size=30)).map(
        lambda parts: b"=?" + parts[0].encode() + b"?" + parts[1].encode() + b"?"
        + (base64.b64encode(parts[2]) if parts[1] in "Bb" else parts[2].replace(b"?", b"=3F").replace(b"\n", b"")) + b"?="
    )
    raw = st.binary(max_size=40).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b" "))
    text = st.text(ANY_CHAR, max_size=30).map(lambda value: value.encode("utf-8", "surrogatepass").replace(b"\n", b" ").replace(b"\r", b""))
    return st.lists(st.one_of(word, raw, text), min_size=0, max_size=4).map(b" ".join)


HEADER = _header_bytes()
_CHARSET = st.sampled_from(CHARSETS)
_MEDIA_TYPE = st.sampled_from(MEDIA_TYPES)
_ENCODING = st.sampled_from([b"", b"base64", b"quoted-printable", b"8bit", b"x-uuencode", b"bogus"])
_CONTENT = st.one_of(st.binary(max_size=300), st.text(ANY_CHAR, max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
_BOUNDARY = st.sampled_from([b"b1", b"==x==", b"", b"a" * 80])
_MULTIPART = st.sampled_from([b"mixed", b"alternative", b"related", b"report; report-type=delivery-status", b"signed"])


@st.composite
def mime_part(draw: st.DrawFn, depth: int) -> bytes:
    """One MIME part (a leaf, a multipart with children, or a whole message inside) as bytes."""
    kind = draw(_KINDS) if depth > 0 else "leaf"
    charset = draw(_CHARSET)
    if kind == "multipart":
        boundary = draw(_BOUNDARY) + str(depth).encode()
        subtype = draw(_MULTIPART)
        children = draw(st.lists(PARTS[depth - 1], min_size=0, max_size=3))
        close = draw(st.booleans())
        body = b"".join(b"--" + boundary + b"\n" + child + b"\n" for child in children) + (b"--" + boundary + b"--\n" if close else b"")
        return b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\n\n' + body
    if kind == "message":
        inner = draw(MESSAGES[depth - 1])
        return b"Content-Type: message/rfc822\n\n" + inner
    media_type = draw(_MEDIA_TYPE).encode()
    encoding = draw(_ENCODING)
    content = draw(_CONTENT)
    if encoding == b"base64" and draw(st.booleans()):
        content = base64.encodebytes(content)
    headers = [b"Content-Type: " + media_type + b"; charset=" + charset.encode()]
    if encoding:
        headers.append(b"Content-Transfer-Encoding: " + encoding)
    if draw(st.booleans()):
        name = draw(HEADER)
        star = draw(st.booleans())
        headers.append(
            b"Content-Disposition: attachment; " + (b"filename*=" + charset.encode() + b"''" + quote_from_bytes(name).encode() if star else b'filename="' + name + b'"')
        )
    if draw(st.booleans()):
        headers.append(b"Content-ID: <" + draw(HEADER) + b">")
    return b"\n".join(headers) + b"\n\n" + content


_FROM = st.sampled_from([b"Dana <dana@example.net>", b"<>", b"MAILER-DAEMON", b""]) | HEADER.map(lambda h: h + b" <x@example.net>")
_MESSAGE_ID = st.sampled_from([b"<a1@example.net>", b"", b"<C-7K3M-9QXA.5f0c2a9e41d7@complaints.example.com>"]) | HEADER.map(
    lambda h: b"<" + h + b"@x>"
)
_OTHER_HEADERS = st.lists(
    st.sampled_from([b"In-Reply-To", b"References", b"Reply-To", b"Auto-Submitted", b"Precedence", b"Content-Language", b"Return-Path"]),
    max_size=3,
)


@st.composite
def mime_message(draw: st.DrawFn, depth: int) -> bytes:
    """A whole message: the header fields that decide threading and answering, each possibly garbled, then a part."""
    headers = [b"From: " + draw(_FROM), b"Subject: " + draw(HEADER), b"Message-ID: " + draw(_MESSAGE_ID)]
    for name in draw(_OTHER_HEADERS):
        headers.append(name + b": " + draw(HEADER))
    return b"\n".join(headers) + b"\n" + draw(PARTS[depth])


_KINDS = st.sampled_from(["leaf", "leaf", "multipart", "message"])
PARTS = {depth: mime_part(depth) for depth in range(4)}
MESSAGES = {depth: mime_message(depth) for depth in range(4)}


def corpus() -> list[bytes]:
    return [path.read_bytes() for path in sorted(CORPUS.glob("*.eml"))]


@st.composite
def corpus_mutation(draw: st.DrawFn) -> bytes:
    """A real message from the corpus with a few bytes flipped, inserted or cut out."""
    data = bytearray(draw(st.sampled_from(corpus())))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        position = draw(st.integers(min_value=0, max_value=len(data)))
        operation = draw(st.sampled_from(["flip", "insert", "cut"]))
        if operation == "flip" and position < len(data):
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif operation == "insert":
            data[position:position] = draw(st.sampled_from([b"\xed\xa0\x80", b"\x00", b"=?utf-7?B?K2FBQS0=?=", b"\n--", b"\n\n", b"\xff" * 8]) | st.binary(max_size=8))
        else:
            del data[position : position + draw(st.integers(min_value=1, max_value=40))]
    return bytes(data)


def mail_record(raw: bytes) -> Complaint | None:
    def make() -> Complaint:
        parsed = mail.parse(raw, envelope_sender=None)
        # The channel keys the spool and stores the attachments before the record: those must be fit already.
        assert parsed.channel_message_id.encode("utf-8") and len(parsed.channel_message_id) <= 1000
        stored = [
            Attachment(
                filename=safe_filename(item.filename), content_type=item.content_type or "application/octet-stream",
                size=len(item.data), sha256=hashlib.sha256(item.data).hexdigest(), location="file:///var/intake/x",
            )
            for item in parsed.attachments[:20]
        ]
        return mail.to_complaint(parsed, raw, received_at=NOW, attachments=stored, origin={"mailbox": "INBOX"})

    return record_or_refusal(make)


def test_mail_built_from_random_mime_trees(tally: Tally):
    @fuzz(1000)
    @given(MESSAGES[3])
    def run(raw: bytes) -> None:
        tally.saw(mail_record(raw))

    run()
    tally.report()


def test_mail_from_the_corpus_with_bytes_broken(tally: Tally):
    @fuzz(700)
    @given(corpus_mutation())
    def run(raw: bytes) -> None:
        tally.saw(mail_record(raw))

    run()
    tally.report()


def test_mail_random_bytes(tally: Tally):
    @fuzz(300)
    @given(st.binary(max_size=600) | st.binary(max_size=400).map(lambda data: b"From: a@example.net\nSubject: x\n\n" + data))
    def run(raw: bytes) -> None:
        tally.saw(mail_record(raw))

    run()
    tally.report()


def test_mail_nested_past_any_depth_is_refused_or_read_not_a_crash():
    inner = b"From: a@example.net\nSubject: hi\n\nhello\n"
    for _ in range(400):
        inner = b"From: a@example.net\nContent-Type: message/rfc822\n\n" + inner
    mail_record(inner)


def test_a_utf7_body_with_a_lone_surrogate_is_repaired():
    raw = b"From: a@example.net\nSubject: =?utf-7?B?KzJBQS0=?=\nContent-Type: text/plain; charset=utf-7\n\nBroken +2AA- lid\n"
    complaint = mail_record(raw)
    assert complaint is not None and "\ufffd" in complaint.text and "\ufffd" in (complaint.subject or "")


def test_long_fields_of_a_parsed_mail_are_cut_to_the_record():
    parsed = mail.parse(b"From: a@example.net\nSubject: x\n\nhello\n")
    long = mail.ParsedMail(**{**parsed.__dict__, "subject": "s" * 5000, "sender_name": "n" * 500, "language": "pl\n", "text": "t\ud800"})
    complaint = record_or_refusal(lambda: mail.to_complaint(long, b"raw", received_at=NOW, attachments=[], origin={}))
    assert complaint is not None and len(complaint.subject or "") == 1000 and complaint.language is None and complaint.text == "t\ufffd"


def test_a_charset_label_naming_a_python_only_codec_is_not_run_on_the_mail():
    # unicode_escape would turn the customer's "\u0041" into "A" (and warn on every other backslash).
    raw = b"From: a@example.net\nSubject: x\nContent-Type: text/plain; charset=unicode_escape\n\nPath C:\\new\\u0041\n"
    complaint = mail_record(raw)
    assert complaint is not None and complaint.text == "Path C:\\new\\u0041"
