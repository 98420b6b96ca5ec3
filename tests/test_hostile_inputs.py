"""Inputs real senders and hostile ones send that each channel's own tests do not: what comes out on the topic is text a
consumer can store, and what says nothing is refused, on every channel alike."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from intake.acknowledgement import compose
from intake.normalizer import telegram, twilio, webhook
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Complaint
from tests.support.gateway import running, settings, signed_headers
from tests.support.raw_http import closed_after, post_and_stall, post_in_two_segments
from tests.support.telegram_api import BOT_ID, message, user
from tests.support.topic import read_topic

RECEIVED_AT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
LOCALES = ["en", "de", "fa", "pl"]


def from_partner(text: str) -> Complaint:
    body = json.dumps({"text": text, "subject": text, "complainant": {"name": text}}).encode()
    return webhook.to_complaint(body, partner="acme", idempotency_key="k-1", received_at=RECEIVED_AT)


def by_sms(text: str) -> Complaint:
    body = urlencode({"MessageSid": "SM" + "a" * 32, "From": "+4915112345678", "To": "+15005550006", "Body": text}).encode()
    return twilio.to_complaint(body, received_at=RECEIVED_AT, locales=LOCALES)


def by_whatsapp(text: str) -> Complaint:
    body = urlencode(
        {"MessageSid": "SM" + "b" * 32, "From": "whatsapp:+4915112345678", "To": "whatsapp:+14155238886", "Body": text, "ProfileName": text}
    ).encode()
    return twilio.to_complaint(body, received_at=RECEIVED_AT, locales=LOCALES)


def by_telegram(text: str) -> Complaint:
    raw = json.dumps({"update_id": 7, "message": message(user(first_name=text), 3, text=text)}).encode()
    return telegram.to_complaint(raw, received_at=RECEIVED_AT, bot_id=BOT_ID)


CHANNELS = [from_partner, by_sms, by_whatsapp, by_telegram]


@pytest.mark.parametrize("receive", CHANNELS, ids=lambda receive: receive.__name__)
def test_control_characters_never_reach_the_record_on_any_channel(receive) -> None:
    # A NUL is refused by consumers that keep the record in PostgreSQL (text and jsonb cannot hold U+0000).
    complaint = receive("Mein Paket\x00 kam\x07 kaputt\x1b[31m an,\x7f\x85 bitte\tErsatz.\r\nDanke")
    published = complaint.to_json().decode()
    assert "\\u0000" not in published and "\\u0007" not in published and "\\u001b" not in published
    assert complaint.text == "Mein Paket kam kaputt[31m an, bitte\tErsatz.\r\nDanke"
    assert all(value is None or "\x00" not in value for value in (complaint.subject, complaint.complainant.name))


@pytest.mark.parametrize("receive", CHANNELS, ids=lambda receive: receive.__name__)
def test_the_marks_persian_and_emoji_are_spelled_with_are_kept(receive) -> None:
    text = "می\u200cخواهم بسته\u200cام را پس بدهم \U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert receive(text).text == text


@pytest.mark.parametrize("text", [" ", "\n\t ", "\u200b\u200b", "\x00", "\x07\x1b", "\ufeff", "\u00a0\u3000", "\u2066\u2069"])
def test_a_partner_complaint_that_says_nothing_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        from_partner(text)
    assert [error.field for error in refused.value.errors] == ["text"]


def test_a_partner_field_left_empty_is_absent_and_spaces_around_a_value_are_not_part_of_it() -> None:
    # What CRM exports and form builders send for "no value": the complaint is taken, not refused for it.
    empty = {"name": " ", "email": "", "phone": "", "country": "", "customer_id": "", "preferred_contact": "", "locale": ""}
    body = {"text": "Mein Paket kam kaputt an.", "complainant": empty, "language": "", "follows_up": "", "subject": "", "product": " "}
    complaint = webhook.to_complaint(json.dumps(body).encode(), partner="acme", idempotency_key="k-2", received_at=RECEIVED_AT)
    assert complaint.complainant.email is None and complaint.subject is None and complaint.follows_up is None
    padded = {"text": "Broken kettle", "complainant": {"email": " dana.novak@example.net\n", "locale": "pl "}}
    complaint = webhook.to_complaint(json.dumps(padded).encode(), partner="acme", idempotency_key="k-3", received_at=RECEIVED_AT)
    assert (complaint.complainant.email, complaint.complainant.locale) == ("dana.novak@example.net", "pl")


@pytest.mark.parametrize(("written", "tag", "answered_in"), [("de_DE", "de-DE", "de"), ("pl_PL.UTF-8", "pl-PL", "pl"), ("fa_IR", "fa-IR", "fa")])
def test_a_partner_locale_written_the_java_or_posix_way_is_the_customers_language(written: str, tag: str, answered_in: str) -> None:
    body = {"text": "The kettle leaks.", "complainant": {"locale": written}}
    complaint = webhook.to_complaint(json.dumps(body).encode(), partner="acme", idempotency_key="k-4", received_at=RECEIVED_AT)
    assert complaint.complainant.locale == tag
    assert compose(complaint.reference, complaint.complainant.locale).locale == answered_in


async def test_a_blank_partner_complaint_gets_a_422_and_nothing_is_stored(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        for index, text in enumerate(["   ", "\u200b\u200d", "\x00\x00"]):
            body = json.dumps({"text": text}).encode()
            headers = signed_headers(body, f"blank-{index}")
            async with http.post(f"{base}/webhook/acme", data=body, headers=headers) as response:
                assert response.status == 422
                assert response.content_type == "application/problem+json"
                problem = await response.json(content_type=None)
            assert [error["field"] for error in problem["errors"]] == ["text"]
        assert (await gateway.spool.status()).messages == 0
    assert await read_topic(kafka.bootstrap, topic, expect=1, timeout=2) == []


def test_a_channels_post_forwarded_into_its_discussion_group_is_not_a_customer() -> None:
    # Telegram names its service user "Telegram" (777000, is_bot false) as the sender of a linked channel's post.
    service = {"id": 777000, "is_bot": False, "first_name": "Telegram"}
    post = message(service, 41, text="Our new opening hours from Monday", is_automatic_forward=True)
    post["chat"] = {"id": -1001234567890, "type": "supergroup", "title": "Shop discussion"}
    post["sender_chat"] = {"id": -1009876543210, "type": "channel", "title": "Shop news"}
    complaint = telegram.to_complaint(json.dumps({"update_id": 9, "message": post}).encode(), received_at=RECEIVED_AT, bot_id=BOT_ID)
    assert complaint.flags.automated is True
    assert complaint.flags.automated_reason


@pytest.mark.parametrize(("sender", "reason"), [("40404", "short code"), ("DHL Paket", "sender id"), ("VERIFY", "sender id")])
def test_an_sms_from_a_short_code_or_a_sender_id_is_recorded_as_automated(sender: str, reason: str) -> None:
    body = urlencode({"MessageSid": "SM" + "c" * 32, "From": sender, "To": "+15005550006", "Body": "Your code is 381204"}).encode()
    complaint = twilio.to_complaint(body, received_at=RECEIVED_AT, locales=LOCALES)
    assert complaint.flags.automated is True
    assert reason in (complaint.flags.automated_reason or "")


@pytest.mark.parametrize("sender", ["+4915112345678", "+14155550100"])
def test_an_sms_from_a_phone_number_is_a_person(sender: str) -> None:
    body = urlencode({"MessageSid": "SM" + "d" * 32, "From": sender, "To": "+15005550006", "Body": "Mein Paket ist kaputt"}).encode()
    assert twilio.to_complaint(body, received_at=RECEIVED_AT, locales=LOCALES).flags.automated is False


async def test_a_body_that_stops_arriving_is_answered_on_every_http_channel(tmp_path: Path, kafka, topic):
    config = settings(
        tmp_path,
        kafka.bootstrap,
        topic,
        http={"body_timeout_seconds": 0.5},
        twilio={"enabled": True, "auth_tokens": ["0" * 32]},
        web_form={"enabled": True},
        attachments={"directory": str(tmp_path / "attachments")},
    )
    body = json.dumps({"text": "My parcel arrived broken."}).encode()
    upload = b'--b\r\nContent-Disposition: form-data; name="attachments"; filename="damage.jpg"\r\n\r\n\xff\xd8\xff'
    async with running(config) as (gateway, base):
        started = time.monotonic()
        answers = await asyncio.gather(
            post_and_stall(f"{base}/webhook/acme", signed_headers(body, "slow-1"), body[:10], length=len(body)),
            post_and_stall(f"{base}/twilio/messages", {"Content-Type": "application/x-www-form-urlencoded"}, b"Body=Hel", length=500),
            post_and_stall(f"{base}/complaint", {"Content-Type": "multipart/form-data; boundary=b"}, upload, length=200_000),
        )
        elapsed = time.monotonic() - started
        assert (await gateway.spool.status()).messages == 0
    # 408 where a sender retries by itself; the form is given back to the person at the browser.
    assert [status for status, _head in answers] == [408, 408, 400]
    assert elapsed < 5


async def test_a_connection_that_never_sends_a_whole_request_is_closed(tmp_path: Path, kafka, topic):
    """aiohttp alone keeps such a connection for an hour: a few thousand of them (nothing sent, an idle keep-alive, a
    header trickled a byte at a time) would hold every file descriptor the process has, for every channel."""
    config = settings(tmp_path, kafka.bootstrap, topic, http={"idle_timeout_seconds": 1.0, "body_timeout_seconds": 10})
    body = json.dumps({"text": "My parcel arrived broken."}).encode()
    whole = (
        "POST /webhook/acme HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in signed_headers(body, "idle-1").items())
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with running(config) as (_gateway, base):
        nothing, trickled, kept_alive = await asyncio.gather(
            closed_after(f"{base}/"),
            closed_after(f"{base}/", b"POST /webhook/acme HTTP/1.1\r\nHost: x\r\nX-Padding: ", trickle=b"a" * 100),
            closed_after(f"{base}/", whole),
        )
        # A request being answered is not cut by it: a body slower than the idle timeout (within the body's own) is
        # taken in as any other.
        status, _ = await post_in_two_segments(
            f"{base}/webhook/acme", signed_headers(body, "idle-2"), body, pause=1.5
        )
    assert status == 202
    for held in (nothing, trickled, kept_alive):
        assert held is not None and 0.9 <= held < 4


async def test_a_body_that_does_not_decompress_is_answered_and_so_is_the_next_request(tmp_path: Path, kafka, topic):
    """Its answer says the connection closes: aiohttp closes it after answering, and a client that pools connections
    (one here) sent its next request on it and got no answer at all, on every channel that reads a body."""
    config = settings(
        tmp_path,
        kafka.bootstrap,
        topic,
        twilio={"enabled": True, "auth_tokens": ["0" * 32]},
        web_form={"enabled": True},
        attachments={"directory": str(tmp_path / "attachments")},
    )
    broken = b"\x1f\x8b\x08\x00" + b"not gzip after its first four bytes " * 50
    posts = {
        "/webhook/acme": "application/json",
        "/twilio/messages": "application/x-www-form-urlencoded",
        "/complaint": "multipart/form-data; boundary=b",
        "/status": "application/x-www-form-urlencoded",
    }
    connector = aiohttp.TCPConnector(limit=1)
    async with running(config) as (gateway, base), aiohttp.ClientSession(connector=connector) as http:
        for path, media_type in posts.items():
            headers = {"Content-Encoding": "gzip", "Content-Type": media_type}
            async with http.post(f"{base}{path}", data=broken, headers=headers) as response:
                assert 400 <= response.status < 500, path
                assert response.headers.get("Connection") == "close", path
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200, path
        assert (await gateway.spool.status()).messages == 0
