"""The complaint form over plain HTTP, as a browser without JavaScript uses it, against a real gateway and Kafka broker."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from intake.channels.web_form import CsrfTokens, SlidingWindow, WebFormConfig, client_address
from intake.config import load
from intake.i18n import SUPPORTED, language_name
from intake.normalizer import web_form as normalize
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import json_schema
from tests.support.gateway import free_port, running, settings
from tests.support.topic import Record, of_type, read_topic, wait_for
from tests.support.web_form import FormClient, Page, cookie_attributes, png, valid_fields

SCHEMA = json_schema()
PAYLOADS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
VISIBLE_CONTROLS = ("name", "email", "phone", "preferred_contact-email", "preferred_contact-phone", "product",
                    "occurred_on", "description", "desired_outcome", "attachments", "consent")


def form_settings(tmp_path: Path, kafka: Any, topic: str, *, sections: dict[str, Any] | None = None, **web_form: Any) -> Any:
    return settings(
        tmp_path,
        kafka.bootstrap,
        topic,
        attachments={"directory": str(tmp_path / "attachments")},
        web_form={"enabled": True, **web_form},
        **(sections or {}),
    )



class CapturingSender:
    """Stands in for an outbound channel (email, SMS): keeps every acknowledgement payload it is given."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    async def send_reply(self, payload: dict[str, Any]) -> None:
        self.payloads.append(payload)


async def received_after_marker(kafka: Any, topic: str, client: FormClient, *, complaints: int = 1) -> tuple[str, list[Record]]:
    """Send one valid complaint last (the ``complaints``-th); once it is on the topic, anything sent before it would be too."""
    await client.open("?lang=en")
    response, page = await client.send(valid_fields(description="The marker complaint."))
    assert response.status == 200, page.html
    reference = page.by_id("reference").text
    # Each complaint is two events: received, and acknowledged on the page.
    records = await read_topic(kafka.bootstrap, topic, expect=2 * complaints)
    assert reference in {r.key for r in records}
    return reference, of_type(records, "received")


# --- the form ---------------------------------------------------------------------


async def test_the_form_is_localised_labelled_and_guarded(tmp_path: Path, kafka, topic):
    async with running(form_settings(tmp_path, kafka, topic)) as (_, base), FormClient(base) as client:
        response, page = await client.open(**{"Accept-Language": "fa-IR,fa;q=0.9,en;q=0.5"})
        assert response.status == 200
        assert (page.root.attrs["lang"], page.root.attrs["dir"]) == ("fa", "rtl")
        assert response.headers["Content-Language"] == "fa"
        assert "ثبت شکایت" in page.by_id("main").text
        # Every control a person uses has its label; the honeypot is out of reach of people and assistive technology.
        labelled = {element.attrs["for"] for element in page.find_all("label")}
        for ident in VISIBLE_CONTROLS:
            assert ident in labelled, ident
        trap = page.by_id("homepage")
        assert trap.attrs["tabindex"] == "-1" and trap.attrs["autocomplete"] == "off"
        assert page.find_all("div", class_="trap")[0].attrs["aria-hidden"] == "true"
        # The language switch names each language in itself, and marks the current one.
        links = {a.attrs["hreflang"]: a for a in page.find_all("a") if "hreflang" in a.attrs}
        assert set(links) == set(SUPPORTED)
        assert all(links[code].text == language_name(code) and links[code].attrs["href"] == f"/complaint?lang={code}" for code in SUPPORTED)
        assert links["fa"].attrs.get("aria-current") == "page"
        # Files travel as multipart; the form is sent in the language it was read in.
        form = page.find_all("form")[0]
        assert (form.attrs["method"], form.attrs["enctype"], form.attrs["action"]) == ("post", "multipart/form-data", "/complaint?lang=fa")
        assert "image/png" in page.by_id("attachments").attrs["accept"] and "application/pdf" in page.by_id("attachments").attrs["accept"]
        # No scripts at all, and none allowed to run; nothing with a token is cached.
        assert "<script" not in page.html
        assert "script-src" not in response.headers["Content-Security-Policy"] and "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
        cookie = cookie_attributes(response)
        assert cookie["name"] == "intake-form" and "httponly" in cookie and cookie["samesite"] == "samesite=strict"
        assert "secure" not in cookie  # plain http: a Secure cookie would never come back
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", client.hidden()["submission_id"])

        _, german = await client.open("?lang=de", **{"Accept-Language": "fa"})
        assert (german.root.attrs["lang"], german.root.attrs["dir"]) == ("de", "ltr")
        assert "Beschwerde einreichen" in german.by_id("main").text
        _, chinese = await client.open("?lang=xx", **{"Accept-Language": "zh-CN"})
        assert chinese.root.attrs["lang"] == "zh"
        async with client.session.get(f"{base}/static/web_form.css") as response:
            stylesheet = await response.text()
        assert response.status == 200 and response.content_type == "text/css"
        # Logical properties only: the same sheet mirrors for right-to-left pages.
        assert not re.search(r"(margin|padding|border)-(left|right)|text-align:\s*(left|right)|float:", stylesheet)


async def test_behind_https_the_cookie_is_secure_and_host_only(tmp_path: Path, kafka, topic):
    config = form_settings(tmp_path, kafka, topic)
    config.http.public_base_url = "https://complaints.example.com"
    async with running(config) as (_, base), FormClient(base) as client:
        response, _ = await client.open()
        cookie = cookie_attributes(response)
        assert cookie["name"] == "__Host-intake-form" and "secure" in cookie and cookie["path"] == "path=/"
        assert "domain" not in cookie


# --- a complaint ------------------------------------------------------------------


async def test_a_valid_submission_is_confirmed_and_published_with_its_fields(tmp_path: Path, kafka, topic):
    photo = png()
    async with running(form_settings(tmp_path, kafka, topic)) as (gateway, base), FormClient(base) as client:
        await client.open("?lang=pl")
        submission_id = client.hidden()["submission_id"]
        response, page = await client.send(
            valid_fields(preferred_contact="phone"),
            files=[("zdjęcie paczki.png", photo, "application/octet-stream"), ("", b"", "application/octet-stream")],
            query="?lang=pl",
        )
        assert response.status == 200, page.html
        reference = page.by_id("reference").text
        assert re.fullmatch(r"C-[0-9A-Z]{4}-[0-9A-Z]{4}", reference)
        assert page.root.attrs["lang"] == "pl"
        # What happens next, from the acknowledgement in the customer's language.
        assert f"Otrzymaliśmy Państwa zgłoszenie i nadaliśmy mu numer {reference}." in page.by_id("main").text
        assert "5 dni roboczych" in page.by_id("main").text
        records = await read_topic(kafka.bootstrap, topic, expect=2)

    [received] = of_type(records, "received")
    [acknowledged] = of_type(records, "acknowledged")
    assert received.key == acknowledged.key == reference
    data = received.data
    jsonschema.validate(data, SCHEMA)
    assert data["reference"] == reference and data["channel"] == "web" and data["channel_message_id"] == submission_id
    assert received.headers["ce_source"] == "urn:intake/web"
    assert data["complainant"] == {
        "name": "Ewa Nowak",
        "email": "ewa@example.com",
        "phone": "+48601234567",
        "preferred_contact": "phone",
        "locale": "pl",
    }
    assert data["language"] == "pl"
    assert data["text"] == "The parcel arrived with a broken lid."
    assert (data["product"], data["occurred_at"], data["desired_outcome"]) == ("Courier delivery, order 1001", "2024-03-17", "A replacement")
    assert data["consent_to_processing"] is True
    # The empty file input of a browser is no attachment; the photo is stored before the record points at it.
    [attachment] = data["attachments"]
    assert attachment["content_type"] == "image/png" and attachment["size"] == len(photo)
    assert attachment["sha256"] == hashlib.sha256(photo).hexdigest() and attachment["filename"] == "zdjęcie paczki.png"
    assert Path(urlsplit(attachment["location"]).path).read_bytes() == photo
    assert data["raw"]["media_type"] == "application/json"


async def test_a_double_submit_or_a_retry_is_one_complaint(tmp_path: Path, kafka, topic):
    async with running(form_settings(tmp_path, kafka, topic)) as (_, base), FormClient(base) as client:
        await client.open("?lang=en")
        hidden = client.hidden()
        first, first_page = await client.send(valid_fields(), hidden=hidden)
        again, again_page = await client.send(valid_fields(), hidden=hidden)
        # Back button, edit, send again: the same form, so the complaint recorded first stands, and the customer is told.
        edited, edited_page = await client.send(valid_fields(description="Something else entirely."), hidden=hidden)
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)

    assert first.status == again.status == edited.status == 200
    reference = first_page.by_id("reference").text
    assert again_page.by_id("reference").text == edited_page.by_id("reference").text == reference
    assert "already been sent" not in again_page.html
    assert "This form had already been sent." in edited_page.by_id("main").text
    [received] = of_type(records, "received")
    assert received.data["reference"] == reference and received.data["text"] == "The parcel arrived with a broken lid."
    assert len(of_type(records, "acknowledged")) == 1


async def test_the_acknowledgement_also_goes_by_email_through_the_relay(tmp_path: Path, kafka, topic, relay):
    email = {"relay": {**relay.config(), "enabled": True}}
    async with running(form_settings(tmp_path, kafka, topic, sections={"email": email})) as (gateway, base), FormClient(base) as client:
        assert "email" in gateway.reply_senders
        await client.open("?lang=en")
        _, by_phone_only = await client.send(valid_fields(email="", preferred_contact=""))
        await client.open("?lang=fa")
        _, with_email = await client.send(valid_fields(), query="?lang=fa")
        [captured] = await relay.wait_for(1)
        records = await read_topic(kafka.bootstrap, topic, expect=5)

    reference = with_email.by_id("reference").text
    message = captured.message
    assert captured.recipients == ["ewa@example.com"]
    assert str(message["To"]) == "ewa@example.com"  # the address alone: a name typed into a form is not ours to send
    assert reference in message["Subject"] and message["Content-Language"] == "fa"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"].endswith("@example.test>")  # our domain: a reply to it finds the complaint again
    assert reference in message.get_body(("plain",)).get_content() and "شکایت" in message["Subject"]
    assert "این رسید را به نشانی ایمیلی که وارد کردید هم می‌فرستیم." in with_email.by_id("main").text
    assert "send this acknowledgement" not in by_phone_only.html  # no SMS channel here: the page is the acknowledgement
    assert len(relay.messages) == 1
    # One acknowledgement event for each page shown and for the email sent.
    assert len(of_type(records, "received")) == 2 and len(of_type(records, "acknowledged")) == 3


async def test_the_copy_by_email_is_under_the_email_limits_and_never_goes_to_a_role_address(tmp_path: Path, kafka, topic, relay):
    # The address is typed by whoever fills in the form: the same limits as for mail answered, the same refusals.
    email = {"relay": {**relay.config(), "enabled": True}, "limits": {"acknowledgements_per_recipient": 1}}
    async with running(form_settings(tmp_path, kafka, topic, sections={"email": email})) as (gateway, base), FormClient(base) as client:
        for fields in (valid_fields(email="no-reply@example.com"), valid_fields(), valid_fields(description="Again: a broken lid.")):
            await client.open("?lang=en")
            await client.send(fields, query="?lang=en")
        records = await read_topic(kafka.bootstrap, topic, expect=9, settle=2)
        suppressed = {
            limit: gateway.metrics.registry.get_sample_value(
                "intake_acknowledgements_suppressed_total", {"channel": "email", "limit": limit}
            )
            for limit in ("role_address", "recipient")
        }
    assert [captured.recipients for captured in relay.messages] == [["ewa@example.com"]]
    failed = of_type(records, "acknowledgement_failed")
    assert len(failed) == 2 and all("suppressed" in r.data["error"] for r in failed)
    assert suppressed == {"role_address": 1.0, "recipient": 1.0}


async def test_a_customer_who_prefers_the_phone_gets_the_acknowledgement_by_text_message(tmp_path: Path, kafka, topic):
    # Stand-ins for outbound channels: the form only decides where the copy goes and what it carries.
    email, sms = CapturingSender(), CapturingSender()
    async with running(form_settings(tmp_path, kafka, topic)) as (gateway, base), FormClient(base) as client:
        gateway.reply_senders["email"] = email
        gateway.reply_senders["sms"] = sms
        await client.open("?lang=de")
        _, by_phone = await client.send(valid_fields(preferred_contact="phone"), query="?lang=de")
        await wait_for(lambda: _settled(sms), timeout=20)
        await read_topic(kafka.bootstrap, topic, expect=3)

    assert email.payloads == []
    [text_message] = sms.payloads
    assert text_message["to"] == "+48601234567" and text_message["locale"] == "de"
    assert by_phone.by_id("reference").text in text_message["text"] and len(text_message["text"]) < 320
    assert "per SMS" in by_phone.by_id("main").text


async def _settled(*senders: CapturingSender) -> bool:
    return all(sender.payloads for sender in senders)


# --- what the customer types ------------------------------------------------------


async def test_invalid_fields_are_explained_next_to_each_field_and_kept(tmp_path: Path, kafka, topic):
    tomorrow_but_one = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    async with running(form_settings(tmp_path, kafka, topic)) as (_, base), FormClient(base) as client:
        await client.open("?lang=pl")
        response, page = await client.send(
            valid_fields(name="  ", email="not-an-email", phone="12", occurred_on=tomorrow_but_one, consent="",
                         description="Zepsuta pokrywa.\r\nDruga linia."),
            files=[("photo.png", png(), "image/png")],
            query="?lang=pl",
        )
        assert response.status == 422
        assert page.find_all("title")[0].text.startswith("Błąd:")
        summary = [(a.attrs["href"], a.text) for a in page.find_all("a") if a.attrs.get("href", "").startswith("#") and a.attrs["href"] != "#main"]
        assert [href for href, _ in summary] == ["#name", "#email", "#phone", "#occurred_on", "#consent"]
        assert ("#name", "Prosimy podać imię i nazwisko.") in summary
        for field in ("name", "email", "phone", "occurred_on", "consent"):
            control = page.by_id(field)
            assert control.attrs.get("aria-invalid") == "true", field
            assert f"{field}-error" in control.attrs["aria-describedby"].split(), field
            assert page.by_id(f"{field}-error").text.endswith(dict(summary)[f"#{field}"]), field
        for field in ("product", "description", "desired_outcome"):
            assert "aria-invalid" not in page.by_id(field).attrs
        # Values come back as typed; the consent box stays unticked; files never come back, and the customer is told.
        assert page.value("email") == "not-an-email" and page.value("phone") == "12"
        assert page.value("description") == "Zepsuta pokrywa.\r\nDruga linia."
        assert "checked" not in page.by_id("consent").attrs
        assert "value" not in page.by_id("attachments").attrs
        assert "Prosimy ponownie dołączyć pliki" in page.by_id("attachments-hint").text
        assert page.value("submission_id") == client.hidden()["submission_id"]

        _, mixed = await client.send(valid_fields(preferred_contact="phone", phone="", description="x" * 20_001), query="?lang=en")
        assert [a.attrs["href"] for a in mixed.find_all("a") if a.attrs.get("href", "").startswith("#") and a.attrs["href"] != "#main"] == [
            "#phone", "#description"
        ]
        assert "at most 20,000 characters." in mixed.by_id("description-error").text
        assert mixed.find_all("input", id="preferred_contact-phone")[0].attrs.get("checked") == ""

        reference, received = await received_after_marker(kafka, topic, client)
    assert [r.data["reference"] for r in received] == [reference]


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_nothing_the_customer_types_is_rendered_unescaped(tmp_path: Path, kafka, topic, relay, payload: str):
    typed = {field: f"{payload} {field}" for field in normalize.TEXT_FIELDS if field != "consent"}
    email = {"relay": {**relay.config(), "enabled": True}}
    async with running(form_settings(tmp_path, kafka, topic, sections={"email": email})) as (_, base), FormClient(base) as client:
        await client.open("?lang=ar")
        _, errors = await client.send(typed, files=[(payload, b"<html>" + payload.encode(), "text/html")], query="?lang=ar")
        assert errors.find_all("div", class_="error-summary")
        assert_escaped(errors, payload)
        for field, value in typed.items():
            if field != "preferred_contact":
                assert errors.value(field) == value, field  # shown back exactly as typed, as text

        fields = valid_fields(**{field: f"{payload} {field}" for field in ("name", "product", "description", "desired_outcome")})
        response, confirmation = await client.send(fields, query="?lang=ar")
        assert response.status == 200
        assert_escaped(confirmation, payload)
        [captured] = await relay.wait_for(1)
        records = await read_topic(kafka.bootstrap, topic, expect=3)

    # The acknowledgement quotes nothing the customer wrote, not even the name in its To:.
    message = captured.message
    assert payload not in str(message["To"])
    html_part, text_part = message.get_body(("html",)), message.get_body(("plain",))
    assert html_part is not None and text_part is not None  # right-to-left mail carries an HTML part with dir="rtl"
    for body in (html_part.get_content(), text_part.get_content(), str(message["Subject"])):
        assert payload not in body and "<script" not in body and "<img" not in body
    [received] = of_type(records, "received")
    assert received.data["text"] == f"{payload} description"  # kept exactly, for whoever reads it to escape in turn


def assert_escaped(page: Page, payload: str) -> None:
    assert payload not in page.html
    assert "<script" not in page.html and "<img" not in page.html
    # Every element the page has is one the templates wrote.
    assert not [e for e in page.elements if e.tag in ("script", "img", "iframe") or any(a.startswith("on") for a in e.attrs)]


# --- abuse ------------------------------------------------------------------------


async def test_a_post_without_a_matching_csrf_token_or_from_another_site_is_refused(tmp_path: Path, kafka, topic):
    async with running(form_settings(tmp_path, kafka, topic)) as (_, base), FormClient(base) as client, FormClient(base) as other:
        await client.open("?lang=fr")
        await other.open()
        genuine = client.hidden()
        forged = {**genuine, "csrf_token": genuine["csrf_token"][:-3] + "AAA"}
        attempts = [
            await client.send(valid_fields(), hidden={"submission_id": genuine["submission_id"]}, query="?lang=fr"),  # no token
            await client.send(valid_fields(), hidden={**genuine, "csrf_token": other.hidden()["csrf_token"]}),  # another visitor's
            await client.send(valid_fields(), hidden=forged),
            await client.send(valid_fields(), hidden=genuine, headers={"Origin": "https://evil.example"}),
            await client.send(valid_fields(), hidden=genuine, headers={"Origin": "null"}),
            await client.send(valid_fields(), hidden=genuine, headers={"Sec-Fetch-Site": "cross-site"}),
        ]
        client.session.cookie_jar.clear()
        attempts.append(await client.send(valid_fields(), hidden=genuine))  # the token without its cookie
        for response, page in attempts:
            assert response.status == 403, page.html
            assert "Open the form again" in page.html or "Rouvrir le formulaire" in page.html
            assert not page.find_all("input", name="description")
        assert attempts[0][1].root.attrs["lang"] == "fr"

        await client.open("?lang=en")
        response, page = await client.send(valid_fields(description="Same origin."), headers={"Origin": base})
        assert response.status == 200
        reference, received = await received_after_marker(kafka, topic, client, complaints=2)
    assert sorted(r.data["text"] for r in received) == ["Same origin.", "The marker complaint."]


async def test_a_filled_honeypot_is_refused_and_nothing_is_published(tmp_path: Path, kafka, topic):
    async with running(form_settings(tmp_path, kafka, topic)) as (_, base), FormClient(base) as client:
        await client.open()
        response, page = await client.send(valid_fields(homepage="http://spam.example"))
        assert response.status == 400
        assert "reference" not in {e.attrs.get("id") for e in page.elements}
        reference, received = await received_after_marker(kafka, topic, client)
    assert [r.data["reference"] for r in received] == [reference]


async def test_posts_are_rate_limited_per_client_address(tmp_path: Path, kafka, topic):
    async with running(form_settings(tmp_path, kafka, topic, rate_limit=3)) as (_, base), FormClient(base) as client:
        await client.open()
        for _ in range(3):
            response, _ = await client.send(valid_fields(name=""))
            assert response.status == 422
        # X-Forwarded-For is anyone's to write: without a trusted proxy it changes nothing.
        response, page = await client.send(valid_fields(), query="?lang=es", headers={"X-Forwarded-For": "203.0.113.9"})
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 600
        assert page.root.attrs["lang"] == "es" and "Demasiados intentos" in page.by_id("main").text

    (tmp_path / "proxied").mkdir()
    async with running(form_settings(tmp_path / "proxied", kafka, topic, rate_limit=1, trusted_proxy_hops=1)) as (_, base), FormClient(base) as client:
        await client.open()
        assert (await client.send(valid_fields(name=""), headers={"X-Forwarded-For": "203.0.113.1"}))[0].status == 422
        assert (await client.send(valid_fields(name=""), headers={"X-Forwarded-For": "203.0.113.2"}))[0].status == 422
        # A client writing its own X-Forwarded-For only adds to the left of what the proxy appends.
        assert (await client.send(valid_fields(name=""), headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}))[0].status == 429
        # An IPv6 customer holds a whole /64.
        assert (await client.send(valid_fields(name=""), headers={"X-Forwarded-For": "2001:db8:1:2::1"}))[0].status == 422
        assert (await client.send(valid_fields(name=""), headers={"X-Forwarded-For": "2001:db8:1:2::ffff"}))[0].status == 429


async def test_attachments_and_requests_are_bounded_in_number_size_and_type(tmp_path: Path, kafka, topic):
    limits = {"max_attachments": 2, "max_attachment_megabytes": 1}
    async with running(form_settings(tmp_path, kafka, topic, **limits)) as (_, base), FormClient(base) as client:
        _, page = await client.open("?lang=en")
        assert "Number of files: 2 at most. Size of each file: 1 MB at most." in page.by_id("attachments-hint").text

        cases = {
            "Too many files: you can attach 2 at most.": [("a.png", png(), "image/png")] * 3,
            "Each file may be at most 1 MB.": [("big.png", png() + b"\0" * (1024 * 1024), "image/png")],
            "Attach only photos (JPEG, PNG, GIF, WebP, HEIC) or PDF documents.": [("invoice.png", b"MZ\x90\x00 not an image", "image/png")],
        }
        for message, files in cases.items():
            response, page = await client.send(valid_fields(), files=files)
            assert response.status == 422, message
            assert message in page.by_id("attachments-error").text
            assert page.by_id("attachments").attrs["aria-invalid"] == "true"

        # Larger than any acceptable submission: refused before it is read, with a page saying why.
        response, page = await client.send(valid_fields(), files=[("huge.pdf", b"%PDF-" + b"\0" * (5 * 1024 * 1024), "application/pdf")])
        assert response.status == 413
        assert "too large" in page.by_id("main").text

        response, page = await client.send(valid_fields(), files=[("receipt.pdf", b"%PDF-1.7\n" + b"x" * 1000, "application/pdf")])
        assert response.status == 200
        reference, received = await received_after_marker(kafka, topic, client, complaints=2)
    # Keyed by reference, so on different partitions: matched by content, not by order.
    [with_receipt] = [r.data for r in received if r.data["reference"] != reference]
    assert [a["content_type"] for a in with_receipt["attachments"]] == ["application/pdf"]


BOUNDARY = "----intakeFormBoundary7MA4YWxkTrZu0gW"


def form_part(head: bytes, data: bytes = b"") -> bytes:
    return b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n"


def text_parts(fields: dict[str, str]) -> bytes:
    return b"".join(form_part(f'Content-Disposition: form-data; name="{name}"'.encode(), value.encode()) for name, value in fields.items())


FILE_HEAD = b'Content-Disposition: form-data; name="attachments"; filename="photo.png"\r\nContent-Type: image/png'
END = b"--" + BOUNDARY.encode() + b"--\r\n"
# What comes after the hidden fields and the typed text: each breaks the multipart in its own way.
BROKEN = {
    "a NUL in the file name": form_part(b'Content-Disposition: form-data; name="attachments"; filename="photo\x00.png"', png()) + END,
    "a NUL in a part header": form_part(FILE_HEAD + b"\r\nX-Note: a\x00b", png()) + END,
    "a part header without a colon": form_part(FILE_HEAD + b"\r\nnot a header", png()) + END,
    "a part header line of 10 000 bytes": form_part(FILE_HEAD + b"\r\nX-Note: " + b"a" * 10_000, png()) + END,
    "200 part headers": form_part(FILE_HEAD + b"".join(b"\r\nX-Note-%d: a" % n for n in range(200)), png()) + END,
    "a Content-Disposition that does not parse": form_part(b'Content-Disposition: ;;;=="', png()) + END,
    "a part that is not form-data": form_part(b'Content-Disposition: attachment; filename="photo.png"', png()) + END,
    "a file name in a charset that does not exist": form_part(
        b"Content-Disposition: form-data; name=\"attachments\"; filename*=no-such-charset''photo%FF.png", png()
    ) + END,
    "a nested multipart": form_part(
        b'Content-Disposition: form-data; name="attachments"\r\nContent-Type: multipart/mixed; boundary=inner', b"--inner--"
    ) + END,
    "the body cut off inside the file": form_part(FILE_HEAD, png())[:-20],
    "no closing boundary": form_part(FILE_HEAD, png()),
}


@pytest.mark.parametrize("broken", list(BROKEN))
async def test_a_malformed_multipart_gets_the_form_back_with_what_was_typed(tmp_path: Path, kafka, topic, broken: str):
    typed = valid_fields(description="Typed before the file, and kept.")
    async with running(form_settings(tmp_path, kafka, topic)) as (gateway, base), FormClient(base) as client:
        await client.open()
        body = text_parts({**client.hidden(), **typed}) + BROKEN[broken]
        response, page = await client.send_raw(f"multipart/form-data; boundary={BOUNDARY}", body)
        assert response.status == 400, page.html[:2000]
        assert page.value("description") == "Typed before the file, and kept."
        assert page.value("email") == typed["email"] and page.value("submission_id") == client.hidden()["submission_id"]
        assert "Please attach your files again" in page.by_id("attachments-hint").text
        assert (await gateway.spool.status()).messages == 0


async def test_a_multipart_that_cannot_be_read_at_all_is_refused_400(tmp_path: Path, kafka, topic):
    async with running(form_settings(tmp_path, kafka, topic)) as (gateway, base), FormClient(base) as client:
        await client.open()
        good = text_parts({**client.hidden(), **valid_fields()}) + END
        attempts = {
            "another boundary": (f"multipart/form-data; boundary={BOUNDARY}x", good),
            "no boundary": ("multipart/form-data", good),
            "an empty boundary": ("multipart/form-data; boundary=", good),
            "a boundary of 100 characters": ("multipart/form-data; boundary=" + "b" * 100, good),
            "line feeds for line ends": (f"multipart/form-data; boundary={BOUNDARY}", good.replace(b"\r\n", b"\n")),
            "the broken part before the token": (
                f"multipart/form-data; boundary={BOUNDARY}",
                form_part(b'Content-Disposition: form-data; name="attachments"; filename="a\x00.png"') + good,
            ),
            "nothing": (f"multipart/form-data; boundary={BOUNDARY}", b""),
        }
        for case, (content_type, body) in attempts.items():
            response, page = await client.send_raw(content_type, body)
            assert response.status == 400, case
            # Nothing readable proves it came from our form: no values to give back, the customer starts again.
            assert not page.find_all("input", name="description"), case
            assert "Open the form again" in page.html, case
        assert (await gateway.spool.status()).messages == 0


async def test_when_the_spool_is_full_the_form_comes_back_with_everything_typed(tmp_path: Path, kafka, topic):
    # Kafka out of reach and room for one complaint's events: the second has to wait.
    config = form_settings(tmp_path, kafka, topic)
    config.kafka.bootstrap_servers = f"127.0.0.1:{free_port()}"
    config.spool.max_pending_events = 1
    config.shutdown_grace_seconds = 1
    async with running(config) as (_, base), FormClient(base) as client:
        await client.open()
        assert (await client.send(valid_fields()))[0].status == 200
        await client.open()
        submission_id = client.hidden()["submission_id"]
        response, page = await client.send(valid_fields(description="Please keep this text."))
        assert response.status == 503 and int(response.headers["Retry-After"]) > 0
        assert "Your complaint has not been sent yet" in page.by_id("main").text
        assert page.value("description") == "Please keep this text." and page.value("submission_id") == submission_id


# --- the parts, without a gateway -------------------------------------------------


def test_csrf_tokens_are_signed_and_expire() -> None:
    now = [1_700_000_000.0]
    tokens = CsrfTokens(b"k" * 32, max_age=3600, clock=lambda: now[0])
    token = tokens.issue()
    assert tokens.matches(token, token)
    assert not tokens.matches(token, tokens.issue())
    assert not CsrfTokens(b"x" * 32, max_age=3600, clock=lambda: now[0]).matches(token, token)
    issued, nonce, mac = token.split(".")
    assert not tokens.matches(f"{int(issued, 16) + 9999:x}.{nonce}.{mac}", f"{int(issued, 16) + 9999:x}.{nonce}.{mac}")
    now[0] += 3601
    assert not tokens.matches(token, token)


def request_from(peer: str, *forwarded: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000)
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    return make_mocked_request("POST", "/complaint", headers=headers, transport=transport)


@pytest.mark.parametrize(
    "hops, forwarded, expected",
    [
        # No trusted proxy: the header is anyone's to write and changes nothing.
        (0, ["203.0.113.9"], "10.0.0.2"),
        # One proxy appends the address it saw; what the client wrote is further left.
        (1, ["203.0.113.1"], "203.0.113.1"),
        (1, ["198.51.100.7, 203.0.113.1"], "203.0.113.1"),
        # Two proxies: the outer one's entry is second from the right, in one header or several.
        (2, ["198.51.100.7, 203.0.113.1, 10.0.0.1"], "203.0.113.1"),
        (2, ["198.51.100.7, 203.0.113.1", "10.0.0.1"], "203.0.113.1"),
        # Fewer entries than proxies: the request skipped an outer proxy, and the entries to the left of the
        # nearest proxy's may be the client's own. Only the rightmost is surely a trusted proxy's.
        (3, ["198.51.100.7, 203.0.113.1"], "203.0.113.1"),
        (2, ["203.0.113.5"], "203.0.113.5"),
        # Through the proxies but no header (a proxy not set to append): the nearest peer, never a guess.
        (1, [], "10.0.0.2"),
        # An IPv6 client is its /64; an IPv4-mapped one its IPv4 address.
        (1, ["2001:db8:1:2::ffff"], "2001:db8:1:2::/64"),
        (1, ["::ffff:203.0.113.4"], "203.0.113.4"),
    ],
)
def test_the_client_address_is_the_leftmost_entry_a_trusted_proxy_wrote(hops: int, forwarded: list[str], expected: str) -> None:
    assert client_address(request_from("10.0.0.2", *forwarded), hops) == expected


def test_the_shipped_configuration_trusts_no_forwarded_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # Trusting one hop where no proxy appends lets every client pick its own rate-limit address.
    deploy = Path(__file__).resolve().parents[1] / "deploy"
    monkeypatch.delenv("INTAKE_WEB_FORM__TRUSTED_PROXY_HOPS", raising=False)
    assert load(deploy / "intake.example.toml").web_form.trusted_proxy_hops == 0
    assert WebFormConfig().trusted_proxy_hops == 0
    # The image bakes the example in; neither it nor the compose file may raise it behind the operator's back.
    for name in ("Dockerfile", "compose.yaml"):
        for line in (deploy / name).read_text().splitlines():
            if "TRUSTED_PROXY_HOPS" in line and not line.lstrip().startswith("#"):
                assert re.search(r"TRUSTED_PROXY_HOPS[=:]\s*\"?0\"?\s*$", line), (name, line)


def test_the_sliding_window_frees_slots_as_hits_age() -> None:
    window = SlidingWindow(limit=2, window=60, max_clients=100)
    assert window.hit("a", 0) is None and window.hit("a", 10) is None
    assert window.hit("a", 20) == pytest.approx(40)
    assert window.hit("b", 20) is None
    assert window.hit("a", 60.5) is None  # the first hit has left the window
    many = SlidingWindow(limit=1, window=60, max_clients=100)
    for client in range(150):
        many.hit(str(client), 0)
    assert many.hit("149", 1) is not None and many.hit("0", 1) is None  # the oldest clients are forgotten first


def test_validation_is_pure_and_names_every_field() -> None:
    today = dt.date(2024, 3, 17)
    form = normalize.validate(valid_fields(phone="601 234 567", email=" Ewa@Example.com "), today=today, default_region="PL")
    assert (form.phone, form.email, form.preferred_contact) == ("+48601234567", "Ewa@example.com", "email")
    assert normalize.validate(valid_fields(email="", preferred_contact=""), today=today).preferred_contact == "phone"
    assert normalize.validate(valid_fields(occurred_on="2024-03-18"), today=today).occurred_on == dt.date(2024, 3, 18)  # a zone ahead of UTC
    with pytest.raises(InvalidMessage) as error:
        normalize.validate({"preferred_contact": "fax", "occurred_on": "17/03/2024", "consent": ""}, today=today)
    assert [e.field for e in error.value.errors] == ["name", "preferred_contact", "occurred_on", "description", "consent"]
    with pytest.raises(InvalidMessage) as error:
        normalize.validate(valid_fields(phone="601 234 567"), today=today)  # no region: the country code is needed
    assert [e.field for e in error.value.errors] == ["phone"]
    assert normalize.sniff(png()) == "image/png" and normalize.sniff(b"%PDF-1.4") == "application/pdf"
    assert normalize.sniff(b"\xff\xd8\xff\xe0") == "image/jpeg" and normalize.sniff(b"<svg onload=alert(1)>") is None


@pytest.mark.parametrize("invisible", ["\u200b", "\u200e\u200f", "\ufeff \u2060"])
def test_a_name_or_description_of_invisible_marks_only_is_asked_for_again(invisible: str) -> None:
    with pytest.raises(InvalidMessage) as error:
        normalize.validate(valid_fields(name=invisible, description=invisible), today=dt.date(2024, 3, 17))
    assert [e.field for e in error.value.errors] == ["name", "description"]
