"""Real messages of each channel as their senders write them, and strategies that break them: the seeds of the fuzz suites."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

from intake.normalizer import web_form
from tests.support.fuzz import ANY_CHAR, HOSTILE_TEXT, hostile_text
from tests.support.gateway import complaint_body
from tests.support.telegram_api import bot_user, message, photo_sizes, user
from tests.support.web_form import valid_fields

# --- Telegram: Updates --------------------------------------------------------------------

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


# --- Twilio: posted parameters ------------------------------------------------------------

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


# --- the partner webhook: bodies -------------------------------------------------------------

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


# --- the web form: fields as typed, raw submissions as spooled ------------------------------------

FORM_ATTACHMENT = {"filename": "lid.png", "content_type": "image/png", "size": 68, "sha256": "ab" * 32, "location": "file:///var/intake/ab/abab"}
FORM_FIELDS = valid_fields()
FORM_SUBMISSIONS: list[dict[str, Any]] = [
    {"fields": FORM_FIELDS, "locale": "pl", "attachments": []},
    {"fields": valid_fields(email="", preferred_contact="phone"), "locale": "fa", "attachments": [FORM_ATTACHMENT]},
]
FORM_KEYS = ["fields", "locale", "attachments", *web_form.TEXT_FIELDS, *FORM_ATTACHMENT]


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
