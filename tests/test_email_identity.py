"""What names an email: its Message-ID and a digest of the mail as its author sent it (no servers needed)."""

from __future__ import annotations

import time

import pytest

from intake.channels.email.inbound import channel_message_id, content_digest
from intake.normalizer.record import Complaint

AUTHORED = [
    b"From: Ewa Nowak <ewa@customer.test>",
    b"To: complaints@example.test",
    b"Subject: Uszkodzona paczka, zamowienie 1001, kurier odmowil spisania protokolu",
    b"Date: Tue, 04 Mar 2025 16:20:40 +0100",
    b"Message-ID: <1001@customer.test>",
    b"Content-Type: text/plain; charset=utf-8",
]
BODY = [b"Paczka dotarla uszkodzona.", b"", b"    Zamowienie 1001, dostawa 3 marca.", b"Ewa"]


def mail(header: list[bytes] = AUTHORED, body: list[bytes] = BODY, linesep: bytes = b"\r\n") -> bytes:
    return linesep.join([*header, b"", *body, b""])


def test_what_relays_and_stores_add_or_change_leaves_the_mail_the_same() -> None:
    relayed = [
        b"From ewa@customer.test Tue Mar  4 16:21:07 2025",  # an mbox store's separator
        b"Return-Path: <bounces@customer.test>",
        b"Delivered-To: complaints@example.test",
        b"RECEIVED: from mx2.customer.test (mx2.customer.test [192.0.2.7])",
        b"\tby mx.example.test (Postfix) with ESMTPS id 4Z8",
        b"by mx.example.test; Tue, 4 Mar 2025 16:21:07 +0100",  # broken mail: a continuation not indented
        b"Authentication-Results : mx.example.test; dkim=pass",  # "Name :" as old mailers write it
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; b=Zm9v",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=lists.example.test; b=YmFy",
        b"X-Spam-Score: -0.1",
        *AUTHORED[:2],
        # Refolded by a relay, with other whitespace.
        b"Subject:  Uszkodzona paczka, zamowienie 1001,",
        b"   kurier odmowil spisania protokolu",
        *AUTHORED[3:5],
        b"X-Virus-Scanned: clamav at mx.example.test",
        AUTHORED[5],
        b"Status: RO",
    ]
    body = [b"Paczka dotarla uszkodzona.  ", b"\t", b"    Zamowienie 1001, dostawa 3 marca.", b"Ewa", b"", b""]
    assert content_digest(mail(relayed, body, linesep=b"\n")) == content_digest(mail())
    assert content_digest(mail(linesep=b"\n")) == content_digest(mail())


@pytest.mark.parametrize(
    "header, body",
    [
        pytest.param(AUTHORED, [b"Paczka dotarla cala.", *BODY[1:]], id="another text"),
        pytest.param(AUTHORED, [BODY[0], BODY[1], BODY[2].lstrip(), BODY[3]], id="a line's leading space"),
        pytest.param(AUTHORED, [BODY[0], BODY[2], BODY[3]], id="an empty line inside"),
        pytest.param([*AUTHORED[:2], b"Subject: Zgubiona paczka", *AUTHORED[3:]], BODY, id="another subject"),
        pytest.param([*AUTHORED[:3], b"Date: Wed, 05 Mar 2025 09:00:00 +0100", *AUTHORED[4:]], BODY, id="another date"),
        pytest.param([b"To: sklep@example.test", *AUTHORED[1:]], BODY, id="another recipient"),
        pytest.param([*AUTHORED, b"X-Mailer: Kiosk 2.1"], BODY, id="a field the author added"),
    ],
)
def test_anything_the_author_wrote_differently_makes_another_mail(header: list[bytes], body: list[bytes]) -> None:
    assert content_digest(mail(header, body)) != content_digest(mail())


def test_only_header_fields_are_trace_fields() -> None:
    # A line of the text that reads like a trace field is the customer's text.
    assert content_digest(mail(body=[*BODY, b"Received: nothing so far"])) != content_digest(
        mail(body=[*BODY, b"Received: a broken parcel"])
    )


def test_the_channel_message_id_is_the_message_id_and_the_digest() -> None:
    raw = mail()
    assert channel_message_id("<1001@customer.test>", raw) == f"<1001@customer.test> sha256:{content_digest(raw)}"
    assert channel_message_id(None, raw) == f"sha256:{content_digest(raw)}"
    # The longest Message-ID the normalizer takes (900 characters between the brackets) still fits the record.
    [limit] = [m.max_length for m in Complaint.model_fields["channel_message_id"].metadata if hasattr(m, "max_length")]
    assert len(channel_message_id("<" + "a" * 900 + ">", raw)) <= limit


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\x01\x02 not a message at all\r\n", b"no header at all, and no empty line", b"\r\nonly a body"],
    ids=["empty", "binary", "one line", "no header"],
)
def test_bytes_that_are_not_mail_have_a_digest_too(raw: bytes) -> None:
    # The dead-letter path names what it keeps by it: it must not fail on anything.
    assert len(content_digest(raw)) == 64


def test_a_line_of_a_million_spaces_is_read_in_linear_time() -> None:
    raw = mail(body=[b" " * 1_000_000 + b"x", b"\t" * 1_000_000])
    started = time.monotonic()
    content_digest(raw)
    assert time.monotonic() - started < 1
