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
from intake.normalizer import email as mail
from intake.normalizer import telegram, twilio, web_form, webhook
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Attachment, Complaint
from tests.support.fuzz import (
    ANY_CHAR,
    assert_refusal,
    fuzz,
    json_shapes,
    mutated,
    record_or_refusal,
    serialised,
)
from tests.support.messages import (
    FORM_ATTACHMENT,
    FORM_KEYS,
    FORM_SUBMISSIONS,
    SID,
    TELEGRAM_KEYS,
    TELEGRAM_UPDATES,
    TWILIO_MESSAGES,
    WEBHOOK_BODIES,
    WEBHOOK_KEYS,
    form_encoded,
    twilio_params,
    typed_fields,
)
from tests.support.telegram_api import BOT_ID

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


def test_a_media_url_that_is_no_http_url_is_not_listed_for_the_channel_to_fetch():
    # The channel reads each medium's host before copying it; urlsplit raises on "http://[".
    urls = ["http://[", "javascript:alert(1)", "https://x/" + "m" * 2048, "https://api.twilio.com/2010-04-01/Media/ME1"]
    params = twilio.parse(form_encoded([("NumMedia", str(len(urls))), *((f"MediaUrl{n}", url) for n, url in enumerate(urls))]))
    assert [item.url for item in twilio.media(params)] == urls[3:]


# --- the partner webhook ------------------------------------------------------------------

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

def form_record(raw: bytes) -> Complaint | None:
    return record_or_refusal(lambda: web_form.to_complaint(raw, submission_id="A" * 22, received_at=NOW, default_region="PL"))


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
