"""The email normalizer on a corpus of real-world message shapes: text, charsets, robots, follow-ups, attachments."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import re
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import compat32
from pathlib import Path

import jsonschema
import pytest

from intake.normalizer import email as mail
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Attachment, json_schema

CORPUS = Path(__file__).parent / "corpus" / "email"
NOT_MAIL = "not_mail_binary.eml"
MESSAGES = sorted(path.name for path in CORPUS.glob("*.eml") if path.name != NOT_MAIL)
SCHEMA = json_schema()
RECEIVED_AT = dt.datetime(2025, 3, 4, 12, 0, tzinfo=dt.UTC)

REFERENCE = "C-7K3M-9QXA"
OUR_ID = "<C-7K3M-9QXA.5f0c2a9e41d7@complaints.example.com>"


def raw(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def parsed(name: str, **options: str | None) -> mail.ParsedMail:
    return mail.parse(raw(name), **options)


def plain(*, subject: str = "Broken kettle", body: str = "The kettle leaks.\n", headers: dict[str, str] | None = None) -> bytes:
    """A minimal message from a person, with extra header fields."""
    message = EmailMessage()
    message["From"] = "Dana Novak <dana.novak@example.net>"
    message["To"] = "complaints@example.com"
    message["Subject"] = subject
    message["Date"] = "Tue, 04 Mar 2025 10:00:00 +0100"
    message["Message-ID"] = "<a1b2c3@example.net>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes()


def html_only(html: str, *, subject: str = "Complaint") -> bytes:
    message = EmailMessage()
    message["From"] = "dana.novak@example.net"
    message["To"] = "complaints@example.com"
    message["Subject"] = subject
    message["Message-ID"] = "<html-only@example.net>"
    message.set_content(html, subtype="html")
    return message.as_bytes()


def record_of(parsed_mail: mail.ParsedMail, data: bytes) -> dict:
    stored = [
        Attachment(
            filename=attachment.filename,
            content_type=attachment.content_type,
            size=len(attachment.data),
            sha256=hashlib.sha256(attachment.data).hexdigest(),
            location=f"file:///var/lib/intake/attachments/{hashlib.sha256(attachment.data).hexdigest()}",
        )
        for attachment in parsed_mail.attachments
    ]
    complaint = mail.to_complaint(parsed_mail, data, received_at=RECEIVED_AT, attachments=stored, origin={"mailbox": "INBOX"})
    document = json.loads(complaint.to_json())
    jsonschema.validate(document, SCHEMA)
    return document


# --------------------------------------------------------------------------- every message


@pytest.mark.parametrize("name", MESSAGES)
def test_every_corpus_message_becomes_a_valid_record(name: str) -> None:
    message = parsed(name)
    document = record_of(message, raw(name))
    assert document["channel"] == "email"
    assert document["raw"]["media_type"] == "message/rfc822"
    assert document["raw"]["sha256"] == hashlib.sha256(raw(name)).hexdigest()
    assert message.text.strip() or message.attachments, "a message must yield words or files"
    assert "\ufffd" not in message.text + message.subject + (message.sender_name or ""), "no undecodable characters"
    assert not re.search(r"[\ue001-\ue003]", message.full_text), "no converter markers leak"


def test_binary_garbage_is_not_mail() -> None:
    with pytest.raises(InvalidMessage):
        mail.parse(raw(NOT_MAIL))


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n\r\n", b'{"complaint": "json is not mail"}', b"<html><body>hello</body></html>", b"\x89PNG\r\n\x1a\n\x00\x00"],
    ids=["empty", "blank", "json", "html", "png"],
)
def test_what_is_not_a_message_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidMessage):
        mail.parse(data)


# --------------------------------------------------------------------------- charsets


@pytest.mark.parametrize(
    ("name", "in_text", "in_subject", "sender_name"),
    [
        (
            "thunderbird_windows1250_polish.eml",
            ["Zażółć gęślą jaźń", "reklamacja"],
            "Otrzymaliśmy Państwa zgłoszenie",
            "Małgorzata Wójcik",
        ),
        ("outlook_windows1250_czech.eml", ["stížnost", "Žádám o vrácení peněz"], "Stížnost", "Věra Dvořáková"),
        ("foxmail_gb2312.eml", ["特此投诉", "电饭煲"], "投诉：快递显示已签收但未收到", "张小华"),
        ("qqmail_gbk.eml", ["我要投诉", "空气净化器"], "投诉 空气净化器噪音大", "李明"),
        ("mislabelled_gb2312_really_gbk.eml", ["我是王喆", "镕辉路", "我要投诉"], "王喆", "王喆"),
        ("thebat_koi8r_russian.eml", ["официальная жалоба", "Холодильник"], "Жалоба на доставку", "Иван Петров"),
        ("becky_iso2022jp_japanese.eml", ["苦情を申し上げます", "①　届いた", "②　電話窓口"], "炊飯器についての苦情", "田中 博"),
        ("undeclared_8bit_utf8.eml", ["queja formal", "devolución", "envío"], "José Ángel Núñez", "José Ángel Núñez"),
        ("undeclared_8bit_latin1.eml", ["Je vous écris", "dès le premier lavage", "déjà"], "Réclamation", "Hélène Lefèvre"),
        ("outlook2010_original_message_cp1252.eml", ["€49.99", "“100-3345”", "5 days – that"], "complaint", "Peter Walsh"),
        ("outlook_winmail_dat.eml", ["Müller & Söhne GmbH", "beschädigt"], "Beschädigte Lieferung", "Jürgen Weiß"),
        ("broken_rfc2047_headers.eml", ["zostałam obciążona"], "zwrot nadpłaty – zamówienie 8812", "Zażółć Kowalczyk"),
    ],
)
def test_text_in_any_charset_comes_out_readable(name: str, in_text: list[str], in_subject: str, sender_name: str) -> None:
    message = parsed(name)
    for words in in_text:
        assert words in message.full_text
    assert in_subject in message.subject
    assert message.sender_name == sender_name


def test_encoded_words_split_mid_character_are_joined() -> None:
    message = parsed("broken_rfc2047_headers.eml")
    # "ó" of the name and "ł" of the subject are each split across two encoded-words.
    assert message.sender_name == "Zażółć Kowalczyk"
    assert message.subject == "Reklamacja: ekspres do kawy przecieka, zwrot nadpłaty – zamówienie 8812"


def test_an_unknown_charset_label_still_decodes() -> None:
    data = plain(subject="placeholder").replace(
        b"Subject: placeholder", b"Subject: =?x-made-up?Q?Beschwerde_=C3=BCber_die_Lieferung?="
    )
    assert mail.parse(data).subject == "Beschwerde über die Lieferung"


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("thunderbird_windows1250_polish.eml", "pl"),  # Content-Language
        ("outlook_windows1250_czech.eml", "cs"),
        ("foxmail_gb2312.eml", "zh"),
        ("thebat_koi8r_russian.eml", "ru"),
        ("becky_iso2022jp_japanese.eml", "ja"),
        ("undeclared_8bit_utf8.eml", "es"),
        ("undeclared_8bit_latin1.eml", "fr"),
        ("exchange_online_html_only.eml", "en-GB"),  # Content-Language wins over detection
        ("thunderbird_forward_as_attachment.eml", "de-DE"),
    ],
)
def test_language_from_content_language_else_detected(name: str, language: str) -> None:
    assert parsed(name).language == language


def test_no_language_is_guessed_from_too_little_text() -> None:
    assert mail.parse(plain(subject="?", body="ok\n")).language is None


# --------------------------------------------------------------------------- the complaint's own words


@pytest.mark.parametrize(
    ("name", "own_words", "history"),
    [
        ("gmail_reply_to_acknowledgement.eml", "left the parcel in the rain", ["wrote:", "> Thank you for contacting us"]),
        ("thunderbird_german_reply_flowed.eml", "Seriennummer des Geräts", ["schrieb Beschwerdestelle:", "Lindenstraße 4"]),
        ("thunderbird_windows1250_polish.eml", "druga reklamacja", ["Biuro Obsługi Klienta pisze:", "nadaliśmy mu numer"]),
        ("orange_webmail_reference_in_quote.eml", "inutilisable", ["a écrit :", "Nous avons bien reçu"]),
        (
            "outlook2010_original_message_cp1252.eml",
            "charged €49.99 twice",
            ["-----Original Message-----", "Thank you for contacting us"],
        ),
        ("exchange_online_html_only.eml", "three cartons crushed", ["Sent: Monday, March 3, 2025", "has been dispatched"]),
        ("outlook_windows1250_czech.eml", "opožděné doručení", ["Odesláno:", "předána dopravci"]),
        ("apple_mail_iphone_inline_image.eml", "cracked water tank", ["Sent from my iPhone"]),
        ("thebat_koi8r_russian.eml", "вернуть деньги", ["С уважением", "mailto:ivan.petrov@mail.ru"]),
        ("thunderbird_forward_as_attachment.eml", "Filiale 042", ["\n--\n", "\nThomas Brandt"]),
    ],
)
def test_quoted_history_and_signatures_are_not_the_complaint(name: str, own_words: str, history: list[str]) -> None:
    message = parsed(name)
    assert own_words in message.text
    for quoted in history:
        assert quoted not in message.text
        assert quoted in message.full_text, "the full text keeps everything as sent"


def test_html_only_outlook_mail_reads_as_paragraphs() -> None:
    message = parsed("exchange_online_html_only.eml")
    assert message.text == (
        "Hello,\n\n"
        "The pallet delivered to our Leeds warehouse this morning (consignment CL-88213) arrived with the shrink wrap torn "
        "and three cartons crushed. The driver would not wait for us to note the damage on the delivery note.\n\n"
        "We need a replacement by Friday – please confirm.\n\n"
        "Kind regards,\nClaire"
    )
    for markup in ("MsoNormal", "font-family", "<o:p>", "&nbsp;", "<p", "<div", "mso-", "@font-face"):
        assert markup not in message.full_text


def test_html_style_and_script_are_not_text() -> None:
    message = mail.parse(
        html_only(
            "<html><head><style>p { color: red }</style></head><body><script>alert('x')</script>"
            "<p>The fridge is loud.</p><ul><li>day one</li><li>day two</li></ul><p>Please fix it.</p></body></html>"
        )
    )
    assert message.text == "The fridge is loud.\n\n- day one\n- day two\n\nPlease fix it."


def test_gmail_quote_in_html_only_mail_is_history() -> None:
    html = (
        '<div dir="ltr">Still waiting for the refund.</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        "On Tue, 4 Mar 2025 at 10:15, Complaints &lt;complaints@example.com&gt; wrote:<br></div>"
        '<blockquote class="gmail_quote">We have received your complaint.</blockquote></div>'
    )
    message = mail.parse(html_only(html))
    assert message.text == "Still waiting for the refund."
    assert "We have received your complaint." in message.full_text


def test_an_answer_below_nested_html_quotes_is_kept() -> None:
    html = "<p>See below.</p><blockquote>Old<blockquote>Older</blockquote>still old</blockquote><p>My answer: the 12th.</p>"
    message = mail.parse(html_only(html))
    assert message.text == "See below.\n\nMy answer: the 12th."
    assert "Older" in message.full_text


def test_an_answer_below_a_quote_is_kept() -> None:
    body = "On Tue, 4 Mar 2025 at 10:15, Complaints <complaints@example.com> wrote:\n> When did it break?\n\nOn the first day.\n"
    message = mail.parse(plain(body=body))
    assert message.text == "On the first day."


def test_the_customers_own_story_is_not_mistaken_for_an_attribution() -> None:
    body = "The driver came back. On Monday he wrote:\nparcel left with neighbour\nbut no neighbour has it.\n"
    assert mail.parse(plain(body=body)).text == body.strip()


def test_format_flowed_paragraphs_are_joined() -> None:
    text = parsed("thunderbird_german_reply_flowed.eml").text
    assert "Der Techniker war heute da, konnte aber ohne Ersatzteil nichts tun." in text


# --------------------------------------------------------------------------- robots are recorded, never answered


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("postfix_bounce_dsn.eml", "bounce (delivery-status report)"),
        ("gmail_vacation_auto_submitted.eml", "Auto-Submitted: auto-replied"),
        ("exchange_abwesenheitsnotiz_de.eml", "X-Auto-Response-Suppress"),
        ("mailman_list_message.eml", "List-Id"),
    ],
)
def test_machine_sent_mail_is_flagged_and_not_answered(name: str, reason: str) -> None:
    message = parsed(name)
    assert message.automated == reason
    assert message.reply_to is None
    document = record_of(message, raw(name))
    assert document["flags"]["automated"] is True
    assert document["flags"]["automated_reason"] == reason


def test_exchange_out_of_office_is_recognised_by_its_subject_alone() -> None:
    data = raw("exchange_abwesenheitsnotiz_de.eml").replace(b"X-Auto-Response-Suppress: All\r\n", b"")
    assert b"X-Auto-Response-Suppress" not in data
    message = mail.parse(data)
    assert message.automated == "out-of-office subject"
    assert message.reply_to is None


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: We have received your complaint [C-7K3M-9QXA]",
        "Abwesenheitsnotiz: Ihre Beschwerde",
        "Automatische Antwort: Ihre Beschwerde",
        "Réponse automatique : votre réclamation",
        "Respuesta automática: su reclamación",
        "Odpowiedź automatyczna: zgłoszenie",
        "Automatisch antwoord: uw klacht",
        "Out of Office: back on Monday",
        "[Auto-Reply] Ihre Beschwerde",
        "رد تلقائي: شكوى",
        "پاسخ خودکار: شکایت",
        "自動回覆: 投訴",
        "Otomatik yanıt: şikayet",
        "Automatiskt svar: klagomål",
        "(Automatic reply) your complaint",
    ],
)
def test_out_of_office_subjects_in_several_languages(subject: str) -> None:
    assert mail.parse(plain(subject=subject)).automated == "out-of-office subject"


@pytest.mark.parametrize(
    ("headers", "envelope_sender", "reason"),
    [
        ({}, "", "null sender"),
        ({"Return-Path": "<>"}, None, "null sender"),
        ({}, "MAILER-DAEMON@mx.example.net", "MAILER-DAEMON"),
        ({"Sender": "x"}, "postmaster@example.net", "postmaster"),
        ({"Auto-Submitted": "auto-generated"}, None, "Auto-Submitted: auto-generated"),
        ({"Precedence": "bulk"}, None, "Precedence: bulk"),
        ({"Precedence": "junk"}, None, "Precedence: junk"),
        ({"X-Autoreply": "yes"}, None, "X-Autoreply"),
        ({"X-Autorespond": "Vacation"}, None, "X-Autorespond"),
        ({"X-Loop": "helpdesk@example.net"}, None, "X-Loop"),
        ({"List-Unsubscribe": "<mailto:leave@example.net>"}, None, "List-Unsubscribe"),
        # Vacation responders that predate Auto-Submitted, and what Outlook.com, GNU mailutils, Sieve and FirstClass set.
        ({"Precedence": "auto_reply"}, None, "Precedence: auto_reply"),
        ({"X-Precedence": "auto_reply"}, None, "X-Precedence: auto_reply"),
        ({"X-Autogenerated": "Reply"}, None, "X-Autogenerated"),
        ({"X-Mail-Autoreply": "yes"}, None, "X-Mail-Autoreply"),
        ({"X-AutoReply-From": "dana.novak@example.net"}, None, "X-AutoReply-From"),
        ({"X-FC-MachineGenerated": "true"}, None, "X-FC-MachineGenerated"),
    ],
)
def test_rfc3834_and_helpdesk_robot_signs(headers: dict[str, str], envelope_sender: str | None, reason: str) -> None:
    message = mail.parse(plain(headers=headers), envelope_sender=envelope_sender)
    assert message.automated == reason
    assert message.reply_to is None


@pytest.mark.parametrize(
    ("headers", "envelope_sender"),
    [({}, None), ({"Auto-Submitted": "no"}, "dana.novak@example.net"), ({"Return-Path": "<dana.novak@example.net>"}, None)],
)
def test_a_person_is_answered(headers: dict[str, str], envelope_sender: str | None) -> None:
    message = mail.parse(plain(headers=headers), envelope_sender=envelope_sender)
    assert message.automated is None
    assert message.reply_to == "dana.novak@example.net"


def test_reply_to_wins_over_from() -> None:
    message = parsed("broken_rfc2047_headers.eml")
    assert message.sender == "zazolc.k@onet.pl"
    assert message.reply_to == "Zazolc.Prywatny@gmail.com", "the domain is lower-cased, the local part kept"


# --------------------------------------------------------------------------- follow-ups, by each route


def test_our_message_id_carries_the_reference() -> None:
    complaint_id = uuid.UUID("5f0c2a9e-41d7-5b6c-8d9e-0a1b2c3d4e5f")
    message_id = mail.our_message_id(REFERENCE, complaint_id, "Complaints.Example.com")
    assert message_id == "<C-7K3M-9QXA.5f0c2a9e41d7@complaints.example.com>"
    assert mail.reference_from_message_ids([message_id]) == REFERENCE
    assert mail.reference_from_message_ids(["<CAFx@mail.gmail.com> " + message_id]) == REFERENCE
    assert mail.reference_from_message_ids(["<CAFx@mail.gmail.com>", "<C-UUUU-UUUU.0123456789ab@x.example>"]) is None
    with pytest.raises(ValueError):
        mail.our_message_id("not a reference", complaint_id, "example.com")


def test_follow_up_through_in_reply_to_alone() -> None:
    data = plain(subject="Re: your message", headers={"In-Reply-To": OUR_ID})
    assert mail.parse(data).follows_up == REFERENCE


def test_follow_up_through_references_alone() -> None:
    data = plain(subject="Re: your message", headers={"References": f"<first@example.net> {OUR_ID} <later@example.net>"})
    assert mail.parse(data).follows_up == REFERENCE


def test_follow_up_through_the_subject_tag_alone() -> None:
    data = plain(subject="Re: We have received your complaint [c-7k3m-9qxa]")
    assert mail.parse(data).follows_up == REFERENCE


def test_follow_up_through_the_reference_in_the_body_alone() -> None:
    assert parsed("orange_webmail_reference_in_quote.eml").follows_up == REFERENCE
    data = plain(subject="Again", body="About my complaint C-7K3M-9QXA: still nothing.\n")
    assert mail.parse(data).follows_up == REFERENCE


def test_the_message_id_route_wins_over_subject_and_body() -> None:
    data = plain(subject="Re: [C-AAAA-BBBB]", body="See C-1111-2222.\n", headers={"In-Reply-To": OUR_ID})
    assert mail.parse(data).follows_up == REFERENCE
    data = plain(subject="Re: [C-AAAA-BBBB]", body="See C-1111-2222.\n")
    assert mail.parse(data).follows_up == "C-AAAA-BBBB"


def test_a_new_complaint_follows_up_nothing() -> None:
    for name in ("exchange_online_html_only.eml", "outlook_winmail_dat.eml", "foxmail_gb2312.eml", "kiosk_no_message_id.eml"):
        assert parsed(name).follows_up is None


def test_a_bounce_of_our_acknowledgement_points_at_its_complaint() -> None:
    message = parsed("postfix_bounce_dsn.eml")
    assert message.follows_up == REFERENCE
    assert message.automated == "bounce (delivery-status report)"


def test_references_thread_our_answer() -> None:
    message = parsed("gmail_reply_to_acknowledgement.eml")
    assert message.references == [
        "<CAFx8hN0sQ3c9V1Kp4Z7yW2mJ6eL5tR8uB1nD0aG3fH@mail.gmail.com>",
        OUR_ID,
        "<CAFx8hN3tR7wP0aQ4mK9zV1yB6cD2eG5hJ8nL0sU3xW@mail.gmail.com>",
    ]
    assert message.references[-1] == message.message_id


# --------------------------------------------------------------------------- identity


def test_without_message_id_the_bytes_identify_the_message() -> None:
    data = raw("kiosk_no_message_id.eml")
    message = mail.parse(data)
    assert message.message_id is None
    assert message.channel_message_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert mail.parse(data).channel_message_id == message.channel_message_id, "a redelivery is recognised"
    assert message.references == []
    assert message.reply_to == "r.oconnor@example.ie"


def test_the_message_id_is_the_channel_message_id() -> None:
    message = parsed("exchange_online_html_only.eml")
    assert message.message_id == "<AM0PR04MB6546B1D7E0F2A63C9E4D21A7F7C92@AM0PR04MB6546.eurprd04.prod.outlook.com>"
    assert message.channel_message_id == message.message_id


# --------------------------------------------------------------------------- attachments


def test_winmail_dat_is_unpacked_into_its_files() -> None:
    message = parsed("outlook_winmail_dat.eml")
    assert [(a.filename, a.content_type) for a in message.attachments] == [("Rechnung März 2025.pdf", "application/pdf")]
    invoice = message.attachments[0].data
    assert invoice.startswith(b"%PDF-1.4") and b"Rechnung 2025-0311" in invoice
    assert invoice.rstrip().endswith(b"%%EOF")


def test_an_unreadable_winmail_dat_is_kept_as_it_is() -> None:
    message = message_from_bytes(raw("outlook_winmail_dat.eml"), policy=compat32)
    tnef_part = message.get_payload()[1]
    tnef_part.set_payload("VGhpcyBpcyBub3QgVE5FRg==\n")  # "This is not TNEF"
    parsed_mail = mail.parse(message.as_bytes())
    assert [(a.filename, a.content_type, a.data) for a in parsed_mail.attachments] == [
        ("winmail.dat", "application/ms-tnef", b"This is not TNEF")
    ]


def test_inline_image_of_an_html_body() -> None:
    message = parsed("apple_mail_iphone_inline_image.eml")
    [image] = message.attachments
    assert image.filename == "image0.png"
    assert image.content_type == "image/png"
    assert image.inline is True
    assert image.content_id == "2E1B2F7C-8D3A-4F61-9C55-1A0B7D3E6F21"
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_attachment_names_in_rfc2231_rfc2047_and_raw_utf8() -> None:
    message = parsed("broken_rfc2047_headers.eml")
    assert [(a.filename, a.content_type, a.inline) for a in message.attachments] == [
        ("zdjęcie paragonu.png", "image/png", False),
        ("wyciąg_luty.csv", "text/csv", False),
    ]
    assert message.attachments[1].data == b"Date,Amount\r\n2025-02-11,-49.99\r\n2025-02-11,-49.99\r\n"
    assert "Date,Amount" not in message.text, "an attached text file is not the complaint"


def test_a_message_forwarded_as_attachment_is_read_and_kept() -> None:
    message = parsed("thunderbird_forward_as_attachment.eml")
    assert message.forwarded is True
    assert "ich leite Ihnen die Nachricht meiner Großmutter weiter" in message.text
    assert "die neue Waschmaschine pumpt nicht ab" in message.text
    by_type = {a.content_type: a for a in message.attachments}
    assert by_type["application/pdf"].filename == "Quittung.pdf"
    assert by_type["application/pdf"].data.startswith(b"%PDF")
    forwarded = by_type["message/rfc822"]
    assert forwarded.filename == "Die Waschmaschine.eml"
    inner = message_from_bytes(forwarded.data, policy=compat32)
    assert inner["Message-ID"] == "<trinity-4b1c2d3e-5f60-4718-9a2b-3c4d5e6f7081-1740842444123@3c-app-webde-bap12>"


def test_an_inline_forward_is_flagged_and_its_content_kept() -> None:
    message = parsed("gmail_inline_forward.eml")
    assert message.forwarded is True
    assert "Nobody has answered me for two weeks" in message.text.replace("\n", " ")
    assert "I have not received my refund of 89.99 EUR." in message.text.replace("\n", " ")


def test_an_outlook_forward_is_content_not_history() -> None:
    body = (
        "Please look into this.\n\n"
        "From: Shop <shop@example.com>\nSent: Monday, March 3, 2025 4:12 PM\nTo: Dana\nSubject: Order cancelled\n\n"
        "Your order was cancelled but the card was charged.\n"
    )
    message = mail.parse(plain(subject="FW: Order cancelled", body=body))
    assert message.forwarded is True
    assert "the card was charged" in message.text
    assert mail.parse(plain(subject="RE: Order cancelled", body=body)).text == "Please look into this."


def test_a_bounce_keeps_its_report_and_the_returned_message() -> None:
    message = parsed("postfix_bounce_dsn.eml")
    assert [a.content_type for a in message.attachments] == ["message/delivery-status", "message/rfc822"]
    assert b"Status: 5.1.1" in message.attachments[0].data
    assert OUR_ID.encode() in message.attachments[1].data
    assert message.forwarded is False


def test_signature_parts_are_not_attachments() -> None:
    data = (
        b"From: dana.novak@example.net\r\nTo: complaints@example.com\r\nSubject: signed\r\nMessage-ID: <s@example.net>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pgp-signature"; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe invoice is wrong.\r\n"
        b"--b\r\nContent-Type: application/pgp-signature; name=signature.asc\r\n\r\n"
        b"-----BEGIN PGP SIGNATURE-----\r\niQEzBAEBCAAdFiEE\r\n-----END PGP SIGNATURE-----\r\n--b--\r\n"
    )
    message = mail.parse(data)
    assert message.text == "The invoice is wrong."
    assert message.attachments == []


# --------------------------------------------------------------------------- the record


def test_the_record_carries_what_the_channel_needs() -> None:
    name = "apple_mail_iphone_inline_image.eml"
    message = parsed(name)
    document = record_of(message, raw(name))
    assert document["complainant"] == {
        "name": "Sofia Martins",
        "email": "sofia.martins@icloud.com",
        "preferred_contact": "email",
        "locale": "en",
    }
    assert document["channel_message_id"] == "<5A3B9C1E-7D2F-4E08-A6B4-9C1D3E5F7A20@icloud.com>"
    assert document["subject"] == "Cracked water tank"
    assert document["text"] == (
        "The coffee machine I bought arrived with a cracked water tank, see the photo.\n\n"
        "I would like a replacement, not a refund."
    )
    assert document["full_text"].endswith("Sent from my iPhone")
    assert document["attachments"][0]["filename"] == "image0.png"
    assert document["origin"] == {"mailbox": "INBOX"}
    assert document["flags"] == {"automated": False, "truncated": False}
    assert "follows_up" not in document


def test_full_text_is_left_out_when_it_is_the_text() -> None:
    document = record_of(parsed("kiosk_no_message_id.eml"), raw("kiosk_no_message_id.eml"))
    assert "full_text" not in document


def test_a_follow_up_record_is_keyed_by_its_complaint() -> None:
    name = "thunderbird_german_reply_flowed.eml"
    complaint = mail.to_complaint(parsed(name), raw(name), received_at=RECEIVED_AT, attachments=[], origin={})
    assert complaint.follows_up == REFERENCE
    assert complaint.key == REFERENCE


def test_a_redelivery_gets_the_same_id_and_reference() -> None:
    name = "gmail_reply_to_acknowledgement.eml"
    first = mail.to_complaint(parsed(name), raw(name), received_at=RECEIVED_AT, attachments=[], origin={})
    later = RECEIVED_AT + dt.timedelta(minutes=5)
    again = mail.to_complaint(parsed(name), raw(name), received_at=later, attachments=[], origin={})
    assert (first.id, first.reference) == (again.id, again.reference)


def test_overlong_text_is_cut_and_flagged() -> None:
    body = ("The heating has failed again. " * 5000).strip() + "\n"
    data = plain(body=body)
    message = mail.parse(data)
    assert len(message.text) > 100_000
    document = record_of(message, data)
    assert len(document["text"]) == 100_000
    assert document["flags"]["truncated"] is True


# --------------------------------------------------------------------------- robustness


_TOKENS = [
    b"=?", b"?=", b"=?utf-8?B?", b"=?gb2312?Q?=B0", b"\r\n--", b"\r\n\r\n", b"; charset=", b'boundary="', b"\x00", b"\xff\xfe",
    b"\x1b$B", b"Content-Type: multipart/mixed; boundary=x\r\n", b"Content-Transfer-Encoding: base64\r\n", b"begin 644 x\r\n",
    b"<blockquote>", b"</div>", b"cid:", b"filename*0*=utf-8''%E2", b"\r\n ", b"\xc3", b"Return-Path: <>\r\n", b"=\r\n",
]  # fmt: skip


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        position = rng.randrange(len(data))
        action = rng.randrange(6)
        if action == 0:
            data[position] = rng.randrange(256)
        elif action == 1:
            data[position:position] = rng.choice(_TOKENS)
        elif action == 2:
            del data[position : position + rng.randint(1, 200)]
        elif action == 3:
            end = min(len(data), position + rng.randint(1, 300))
            data[position:position] = data[position:end]
        elif action == 4:
            del data[rng.randrange(len(data)) :]
        else:
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    return bytes(data)


@pytest.mark.parametrize("depth", [40, 5000])
def test_hostile_nesting_is_read_or_refused_never_a_crash(depth: int) -> None:
    body = b"Content-Type: text/plain\r\n\r\ninnermost words\r\n"
    for level in range(depth, 0, -1):
        body = (
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level) + body + b"\r\n--b%d--\r\n" % level
        )
    data = b"From: dana.novak@example.net\r\nSubject: nested\r\nMessage-ID: <n@example.net>\r\nMIME-Version: 1.0\r\n" + body
    try:
        message = mail.parse(data)
    except InvalidMessage as error:
        assert depth > 1000 and error.__cause__ is None
    else:
        assert message.text == "innermost words"


def test_fuzzed_messages_parse_or_are_refused_as_not_mail() -> None:
    rng = random.Random(1729)
    corpus = [raw(name) for name in MESSAGES]
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(400):
        data = _mutate(rng.choice(corpus), rng)
        try:
            message = mail.parse(data)
        except InvalidMessage as error:
            # Refused because the bytes are not mail, never because the parser broke (that is chained as the cause).
            assert error.__cause__ is None, f"parser failure: {error.__cause__!r}"
            outcomes["refused"] += 1
            continue
        mail.to_complaint(message, data, received_at=RECEIVED_AT, attachments=[], origin={})
        outcomes["parsed"] += 1
    assert outcomes["parsed"] > 300, outcomes


# --------------------------------------------------------------------------- repairs real readers make


def _mail(*header: bytes, body: bytes = b"The kettle leaks.\n") -> bytes:
    return b"\n".join(header) + b"\n\n" + body


PERSON = (b"From: Dana Novak <dana.novak@example.net>", b"To: complaints@example.com", b"Subject: Broken kettle",
          b"Message-ID: <repair@example.net>")  # fmt: skip


def test_unindented_continuation_lines_do_not_end_the_header() -> None:
    # A spam filter's report folded without indentation: the lines belong to its field, not to the body.
    data = _mail(
        b"Received: from mx.example.net by mx.example.com; Tue, 4 Mar 2025 10:00:00 +0100",
        b"X-Spam-Report: score=2.1",
        b"dGhpcyBpcyBhIGZvbGRlZCBiYXNlNjQgbGluZQ==",
        b"c2Vjb25kIGxpbmUgb2YgaXQ=",
        *PERSON,
    )
    message = mail.parse(data)
    assert (message.sender, message.subject, message.message_id) == ("dana.novak@example.net", "Broken kettle", "<repair@example.net>")
    assert message.reply_to == "dana.novak@example.net"
    assert message.text == "The kettle leaks."


def test_a_body_that_follows_the_header_without_a_blank_line_stays_the_body() -> None:
    # No field after the odd line: it is the body a mailer forgot to set apart, as before.
    data = b"\n".join([*PERSON, b"The kettle leaks.", b"It is new."]) + b"\n"
    message = mail.parse(data)
    assert message.subject == "Broken kettle"
    assert message.text == "The kettle leaks.\nIt is new."


@pytest.mark.parametrize("stray", [b"---- Original email message ----", b" " * 255, b"> forwarded by the helpdesk:"])
def test_a_stray_line_before_a_full_header_section_is_skipped(stray: bytes) -> None:
    message = mail.parse(_mail(stray, *PERSON))
    assert (message.sender, message.subject, message.text) == ("dana.novak@example.net", "Broken kettle", "The kettle leaks.")


def test_a_declared_utf8_part_with_one_bad_byte_stays_utf8() -> None:
    text = "Здравствуйте! Холодильник, который я купил, не работает. Прошу вернуть деньги."
    body = text.encode("utf-8").replace("вернуть".encode(), b"\xff" + "ернуть".encode())
    data = _mail(*PERSON, b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 8bit", body=body)
    assert mail.parse(data).text == text.replace("вернуть", "\ufffdернуть")


@pytest.mark.parametrize(
    ("subject", "charset"), [("投诉：快递显示已签收但未收到", "gb2312"), ("炊飯器についての苦情です", "shift_jis")]
)
def test_raw_8bit_header_is_read_in_its_own_charset_not_the_messages(subject: str, charset: str) -> None:
    # The body declares Latin-1: the first charset of the message is no guide to the subject's raw bytes.
    data = _mail(
        b"From: dana.novak@example.net", b"Subject: " + subject.encode(charset), b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=iso-8859-1", body="Réclamation.\n".encode("latin-1"),
    )  # fmt: skip
    assert mail.parse(data).subject == subject


def test_an_unclosed_alternative_that_runs_into_junk_still_reads() -> None:
    data = _mail(
        *PERSON, b"MIME-Version: 1.0", b"Content-Type: multipart/alternative; boundary=a",
        body=b"--a\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes("<p>Der Wasserkocher ist undicht.</p>".encode()) + b"\n--outer-boundary--\n",
    )  # fmt: skip
    assert mail.parse(data).text == "Der Wasserkocher ist undicht."


def test_inline_text_parts_with_a_filename_are_the_text() -> None:
    part = b'Content-Type: text/plain\nContent-Disposition: inline;\n\tfilename="msg.txt"\n\n'
    data = _mail(
        *PERSON, b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b"',
        body=b"--b\n" + part + b"The kettle leaks.\n--b\n" + part + b"It is new.\n--b--\n",
    )  # fmt: skip
    message = mail.parse(data)
    assert message.text == "The kettle leaks.\n\nIt is new."
    assert message.attachments == []


def test_text_only_in_a_text_attachment_is_still_the_complaint() -> None:
    data = _mail(
        *PERSON, b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="b"',
        body=b'--b\nContent-Type: text/plain; name="complaint.txt"\nContent-Disposition: attachment; filename="complaint.txt"\n\n'
        b"The kettle leaks.\n--b--\n",
    )  # fmt: skip
    message = mail.parse(data)
    assert message.text == "The kettle leaks."
    assert [attachment.filename for attachment in message.attachments] == ["complaint.txt"]


@pytest.mark.parametrize(
    ("header", "sender", "name"),
    [
        ([b"From: Test test@example.com"], "test@example.com", "Test"),
        ([b"From: Dana Novak <dana.novak@yahoo.com.>"], "dana.novak@yahoo.com", "Dana Novak"),
        ([b"From: dana.novak@yahoo.com."], "dana.novak@yahoo.com", None),
        ([b"From: undisclosed-recipients:;", b"From: Dana Novak <dana.novak@example.net>"], "dana.novak@example.net", "Dana Novak"),
        ([b"Reply-To: Dana Novak <dana.novak@example.net>"], "dana.novak@example.net", "Dana Novak"),
    ],
    ids=["name and bare address", "trailing dot", "bare trailing dot", "second From", "Reply-To only"],
)
def test_senders_are_recovered_as_mail_clients_do(header: list[bytes], sender: str, name: str | None) -> None:
    message = mail.parse(_mail(*header, b"To: complaints@example.com", b"Subject: Broken kettle"))
    assert (message.sender, message.sender_name, message.reply_to) == (sender, name, sender)


@pytest.mark.parametrize(
    "address",
    ["noreply@shop.example", "no-reply@shop.example", "do-not-reply@shop.example", "DoNotReply@shop.example",
     "ppp-request@zzz.example", "scr-bounces@lists.example", "owner-freebsd-isp@freebsd.example",
     "Internet-Drafts@ietf.example", "oracle@db01.example", "mailer@node.example", "root@host.example"],
)  # fmt: skip
def test_role_and_robot_senders_are_never_acknowledged(address: str) -> None:
    message = mail.parse(_mail(f"From: Someone <{address}>".encode(), b"To: complaints@example.com", b"Subject: Hello"))
    assert message.reply_to is None
    assert message.automated and "role address" in message.automated
    assert mail.is_role_address(address)


@pytest.mark.parametrize("address", ["norbert@shop.example", "requests@shop.example", "owner@shop.example", "dana.novak@example.net"])
def test_people_whose_address_merely_resembles_a_role_are_answered(address: str) -> None:
    message = mail.parse(_mail(f"From: {address}".encode(), b"To: complaints@example.com", b"Subject: Hello"))
    assert message.reply_to == address and message.automated is None
    assert not mail.is_role_address(address)


def test_a_signature_delimiter_with_a_space_too_many_is_still_one() -> None:
    # Sparrow writes "-- " plus a space through quoted-printable ("-- =20").
    data = _mail(*PERSON, b"Content-Transfer-Encoding: quoted-printable", body=b"The kettle leaks.\n\n-- =20\nDana Novak\nSent with Sparrow\n")
    assert mail.parse(data).text == "The kettle leaks."
