"""Acknowledgements written straight to the wire (intake.channels.email.wire): read back by the email package, they
say what the composed message says, header by header and word for word, within RFC 5322's lines; what they cannot
write as plainly is left to the email package."""

from __future__ import annotations

import email
from email import policy

import pytest
from aiosmtplib.email import flatten_message

from intake.acknowledgement import compose
from intake.channels.email import EmailLimitsConfig, RelayConfig
from intake.channels.email import wire
from intake.channels.email.reply import AcknowledgementSender
from intake.i18n import SUPPORTED
from intake.metrics import Metrics

HEADERS = (
    "From", "To", "Subject", "Message-ID", "In-Reply-To", "References", "Auto-Submitted", "X-Auto-Response-Suppress",
    "Content-Language", "MIME-Version",
)


def sender(from_name: str = "Obsługa Klienta Zażółć") -> AcknowledgementSender:
    relay = RelayConfig(host="127.0.0.1", port=25, security="none", from_address="complaints@example.test", from_name=from_name)
    return AcknowledgementSender(relay, EmailLimitsConfig(), Metrics())


def payload(language: str, *, follow_up: bool = False, **changes: object) -> dict:
    ack = compose("C-7K3M-9QXA", language, response_days=5, organisation="Zażółć Gęślą", follow_up=follow_up, replyable=True)
    return {
        "to": "customer.one+orders@mail.example.com",
        "subject": ack.subject,
        "text": ack.text,
        "direction": ack.direction,
        "message_id": "<C-7K3M-9QXA.5f1c@complaints.example.test>",
        "in_reply_to": "<CAF=abc123@mail.gmail.com>",
        "references": [f"<part{n}.{'x' * 40}@mail.example.com>" for n in range(6)] + ["<CAF=abc123@mail.gmail.com>"],
        "locale": ack.locale,
        **changes,
    }


def read(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def assert_wire_form(data: bytes) -> None:
    assert data.isascii()
    lines = data.split(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 78


LEFT_TO_RIGHT = [locale for locale in SUPPORTED if compose("C-7K3M-9QXA", locale, response_days=5).direction == "ltr"]


@pytest.mark.parametrize("follow_up", [False, True])
@pytest.mark.parametrize("locale", LEFT_TO_RIGHT)
def test_every_acknowledgement_reads_back_as_the_composed_message_says(locale: str, follow_up: bool) -> None:
    acknowledgements = sender()
    message = payload(locale, follow_up=follow_up)
    plain = acknowledgements.plain(message)
    assert plain is not None
    assert_wire_form(plain)
    written, composed = read(plain), read(flatten_message(acknowledgements.compose(message)))
    for name in HEADERS:
        assert str(written[name]) == str(composed[name]), name
    assert written.get_content_type() == "text/plain" and written.get_content_charset() == "utf-8"
    assert written.get_content() == composed.get_content()
    assert written["Date"].datetime is not None


def test_message_ids_longer_than_a_line_stay_whole_each_on_a_line_of_its_own() -> None:
    """Outlook's ids run past 78 characters: a msg-id is never broken (RFC 5322 §3.6.4), so its line is longer."""
    ids = [f"<part{n}.{'x' * 90}@mail.example.com>" for n in range(3)]
    plain = sender().plain(payload("en", references=ids, in_reply_to=ids[-1]))
    assert plain is not None
    assert str(read(plain)["References"]).split() == ids
    assert all(len(line) <= 998 for line in plain.split(b"\r\n"))
    lines = plain.split(b"\r\n")
    assert all(any(line.endswith(i.encode()) for line in lines) for i in ids)


def test_a_display_name_with_quotes_and_commas_is_written_as_the_email_package_writes_it() -> None:
    acknowledgements = sender('Obsługa "Zażółć", Dział Reklamacji')
    plain = acknowledgements.plain(payload("pl"))
    assert plain is not None
    written, composed = read(plain), read(flatten_message(acknowledgements.compose(payload("pl"))))
    assert written["From"].addresses == composed["From"].addresses
    assert written["From"].addresses[0].addr_spec == "complaints@example.test"


def test_at_least_the_catalogs_that_matter_are_covered() -> None:
    assert {"en", "pl", "de", "zh"} <= set(LEFT_TO_RIGHT)


@pytest.mark.parametrize(
    "subject",
    [
        "We have received your complaint [C-7K3M-9QXA]",
        "Otrzymaliśmy Państwa zgłoszenie [C-7K3M-9QXA]",
        "我们已收到您的投诉，我们将在五个工作日内答复您，请保留您的编号 [C-7K3M-9QXA]",
        "A plain word that looks encoded =?utf-8?q?x?= stays a word [C-7K3M-9QXA]",
        "ÀÉÎÕÜ " * 20 + "[C-7K3M-9QXA]",
        "An ASCII subject long enough that it has to be folded somewhere before the reference [C-7K3M-9QXA] ok",
        "Emoji 🙂 and text [C-7K3M-9QXA]",
    ],
)
def test_a_header_decodes_to_the_same_words_within_78_columns(subject: str) -> None:
    line = wire.header("Subject", subject)
    assert_wire_form(line.encode("ascii"))
    assert line.endswith("\r\n")
    assert str(read(line.encode("ascii") + b"\r\nbody\r\n")["Subject"]) == " ".join(subject.split())
    assert "[C-7K3M-9QXA]" in line  # the reference stays readable as it is, not encoded


@pytest.mark.parametrize(
    "text",
    [
        "Short ASCII lines.\n\nThank you.",
        "A line of ASCII far longer than seventy-eight characters, which quoted-printable wraps with soft breaks.",
        "Trailing spaces   \nand an equals sign = here\n.a line that starts with a dot\nFrom the start of a line",
        "Dziękujemy.\r\nLine endings of every kind\rare one kind on the wire.",
        "tab\tin the text",
    ],
)
def test_a_body_decodes_to_the_same_text(text: str) -> None:
    encoding, content = wire.body(text)
    message = read(f"Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode() + content)
    assert_wire_form(content)
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert message.get_content().replace("\r\n", "\n").rstrip("\n") == expected


@pytest.mark.parametrize(
    "changes",
    [
        {"direction": "rtl"},  # an HTML alternative lays it out right to left
        {"to": "użytkownik@przykład.pl"},  # SMTPUTF8
        {"to": '"john doe"@example.com'},  # a quoted local part
        {"to": "john@[192.0.2.1]"},  # an address literal
        {"to": "victim@example.com\r\nBcc: everyone@example.com"},  # a header smuggled in with the address
        {"to": "a" * 65 + "@example.com"},  # a local part beyond RFC 5321's 64
        {"message_id": "<not an id>"},
        {"subject": "two\nlines"},
        {"locale": "not a tag!"},
    ],
)
def test_what_is_not_plain_is_left_to_the_email_package(changes: dict) -> None:
    assert sender().plain(payload("en", **changes)) is None


def test_a_from_address_that_cannot_be_written_leaves_every_acknowledgement_to_the_email_package() -> None:
    relay = RelayConfig(host="127.0.0.1", port=25, security="none", from_address="not an address", from_name="x")
    assert AcknowledgementSender(relay, EmailLimitsConfig(), Metrics()).plain(payload("en")) is None
