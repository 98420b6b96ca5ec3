"""The Twilio channel (SMS, MMS, WhatsApp) end to end: requests signed as Twilio signs them, against the real Kafka broker."""

from __future__ import annotations

import base64
import hashlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator
from yarl import URL

from intake.acknowledgement import compose, gsm7_segments
from intake.config import Settings
from intake.i18n import SUPPORTED
from intake.normalizer import twilio as normalize
from intake.normalizer.record import json_schema
from tests.support.gateway import free_port, running, settings
from tests.support.topic import Record, of_type, read_topic

SCHEMA = json_schema()
AUTH_TOKEN = "0f3c9a1b2d4e5f60718293a4b5c6d7e8"  # the shape of a Twilio Auth Token: 32 hex digits
OLD_AUTH_TOKEN = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
ACCOUNT_SID = "AC" + "1f" * 16
MESSAGING_SERVICE_SID = "MG" + "2e" * 16
OUR_NUMBER = "+48732100200"
OUR_WHATSAPP = "whatsapp:+14155238886"
PUBLIC = "https://complaints.example.com"
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def twilio_settings(tmp: Path, bootstrap: str, topic: str, *, overrides: dict[str, Any] | None = None, **twilio: Any) -> Settings:
    return settings(
        tmp,
        bootstrap,
        topic,
        http={"public_base_url": PUBLIC},
        attachments={"directory": str(tmp / "attachments")},
        twilio={"enabled": True, "auth_tokens": [AUTH_TOKEN], **twilio},
        **(overrides or {}),
    )


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


def inbound_sms(
    body: str,
    *,
    sid: str | None = None,
    sender: str = "+48601234567",
    country: str = "PL",
    media: Iterable[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """An inbound SMS/MMS as Twilio posts it, parameters in Twilio's order."""
    media = list(media)
    sid = sid or new_sid("MM" if media else "SM")
    params = [
        ("ToCountry", "PL"), ("ToState", ""), ("SmsMessageSid", sid), ("NumMedia", str(len(media))), ("ToCity", ""),
        ("FromZip", ""), ("SmsSid", sid), ("FromState", ""), ("SmsStatus", "received"), ("FromCity", ""), ("Body", body),
        ("FromCountry", country), ("To", OUR_NUMBER), ("ToZip", ""), ("NumSegments", "1"), ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID), ("From", sender), ("ApiVersion", "2010-04-01"),
    ]
    for index, (url, content_type) in enumerate(media):
        params += [(f"MediaContentType{index}", content_type), (f"MediaUrl{index}", url)]
    return params


def inbound_whatsapp(body: str, *, wa_id: str, profile_name: str, sid: str | None = None) -> list[tuple[str, str]]:
    sid = sid or new_sid()
    return [
        ("SmsMessageSid", sid), ("NumMedia", "0"), ("ProfileName", profile_name), ("MessageType", "text"), ("SmsSid", sid),
        ("WaId", wa_id), ("SmsStatus", "received"), ("Body", body), ("To", OUR_WHATSAPP), ("NumSegments", "1"),
        ("ReferralNumMedia", "0"), ("MessageSid", sid), ("AccountSid", ACCOUNT_SID), ("From", f"whatsapp:+{wa_id}"),
        ("ApiVersion", "2010-04-01"),
    ]


def delivery_report(status: str, *, error_code: str | None = None) -> list[tuple[str, str]]:
    sid = new_sid()
    params = [
        ("SmsSid", sid), ("SmsStatus", status), ("MessageStatus", status), ("To", "+48601234567"), ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID), ("From", OUR_NUMBER), ("ApiVersion", "2010-04-01"),
    ]
    if error_code:
        params.append(("ErrorCode", error_code))
    return params


def signature(url: str, params: list[tuple[str, str]], token: str = AUTH_TOKEN) -> str:
    # What Twilio computes: the MultiDict makes RequestValidator count every value of a repeated name.
    return RequestValidator(token).compute_signature(url, MultiDict(params))


async def post(
    http: aiohttp.ClientSession,
    base: str,
    params: list[tuple[str, str]],
    *,
    path: str = "/twilio/messages",
    query: str = "",
    token: str = AUTH_TOKEN,
    signed_url: str | None = None,
    signed: str | None = None,
) -> tuple[int, str]:
    """POST as Twilio does, signed over the public URL unless told otherwise."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
        "X-Twilio-Signature": signed if signed is not None else signature(signed_url or f"{PUBLIC}{path}{query}", params, token),
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
    }
    # encoded=True: sent byte for byte as configured at Twilio (yarl would otherwise requote %2F in the query).
    async with http.post(URL(f"{base}{path}{query}", encoded=True), data=urlencode(params), headers=headers) as response:
        return response.status, await response.text()


def messages(twiml: str) -> list[ET.Element]:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return root.findall("Message")


def metric(gateway: Any, name: str, **labels: str) -> float:
    return gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def complaints(records: list[Record]) -> list[Record]:
    return of_type(records, "received") + of_type(records, "followed_up")


async def test_signed_requests_pass_with_repeated_unknown_and_messaging_service_parameters_behind_a_proxy(
    tmp_path: Path, kafka, topic
):
    # Rotating: the new token is listed first, the old one still signs.
    config = twilio_settings(tmp_path, kafka.bootstrap, topic, auth_tokens=[AUTH_TOKEN, OLD_AUTH_TOKEN])
    plain = inbound_sms("My internet has been down for three days.")
    service = inbound_sms("Second bill this month for the same period.") + [("MessagingServiceSid", MESSAGING_SERVICE_SID)]
    # Twilio adds parameters without notice; one name may come twice, with different values.
    unknown = inbound_sms("The technician never came.") + [
        ("ChannelMetadata", '{"type":"sms","data":{"context":{}}}'), ("Tag", "priority"), ("Tag", "retention"),
        ("SomeFieldTwilioAddsIn2031", ""),
    ]
    queried = inbound_sms("I was charged for roaming at home.")
    rotated = inbound_sms("Your shop refused my warranty.")
    local = inbound_sms("Signed for the address the app sees, not the public one.")
    one_value = inbound_sms("Signed as if the repeated name had one value.") + [("Tag", "a"), ("Tag", "b")]

    async with running(config) as (_, base), aiohttp.ClientSession() as http:
        answers = [
            await post(http, base, plain),
            await post(http, base, service),
            await post(http, base, unknown),
            await post(http, base, queried, query="?tenant=acme&x=%2Fy"),
            await post(http, base, rotated, token=OLD_AUTH_TOKEN),
        ]
        # The app listens on 127.0.0.1 behind a TLS proxy: Twilio signed the public URL, so the local one is wrong...
        local_status, _ = await post(http, base, local, signed_url=f"{base}/twilio/messages")
        # ...and a validator that kept one value per name would have signed something else.
        dict_signed = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC}/twilio/messages", dict(one_value))
        one_value_status, _ = await post(http, base, one_value, signed=dict_signed)
        records = await read_topic(kafka.bootstrap, topic, expect=10)

    assert [status for status, _ in answers] == [200] * 5
    assert all(len(messages(twiml)) == 1 for _, twiml in answers)
    assert local_status == 403 and one_value_status == 403
    received = of_type(records, "received")
    assert len(received) == 5
    for record in received:
        jsonschema.validate(record.data, SCHEMA)
    by_text = {record.data["text"]: record.data for record in received}
    assert by_text["Second bill this month for the same period."]["origin"]["messaging_service_sid"] == MESSAGING_SERVICE_SID
    assert by_text["My internet has been down for three days."]["channel_message_id"] == plain[2][1]
    assert by_text["My internet has been down for three days."]["raw"]["media_type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("case", ["wrong token", "tampered body", "no signature", "status endpoint"])
async def test_a_bad_signature_is_refused_with_403_and_nothing_is_recorded(tmp_path: Path, kafka, topic, case):
    params = inbound_sms("Refund me now.")
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        if case == "wrong token":
            status, _ = await post(http, base, params, token="ffffffffffffffffffffffffffffffff")
        elif case == "tampered body":
            good = signature(f"{PUBLIC}/twilio/messages", params)
            status, _ = await post(http, base, inbound_sms("Refund me now. And pay me 1000.", sid=params[2][1]), signed=good)
        elif case == "no signature":
            status, _ = await post(http, base, params, signed="")
        else:
            status, _ = await post(http, base, delivery_report("delivered"), path="/twilio/status", token="f" * 32)
        assert status == 403
        assert (await gateway.spool.status()).messages == 0
        endpoint = "status" if case == "status endpoint" else "messages"
        assert metric(gateway, "intake_twilio_refused_total", endpoint=endpoint, reason="signature") == 1
    assert await read_topic(kafka.bootstrap, topic, expect=1, timeout=2) == []


def without(params: list[tuple[str, str]], *names: str) -> list[tuple[str, str]]:
    return [(name, value) for name, value in params if name not in names]


def replaced(params: list[tuple[str, str]], **values: str) -> list[tuple[str, str]]:
    return [(name, values.get(name, value)) for name, value in params]


async def test_parameters_re_split_under_the_same_signature_are_refused_and_nothing_is_recorded(tmp_path: Path, kafka, topic):
    # Twilio signs the URL and each name+value, sorted, with nothing between them: moving the boundary between
    # one value and the next name keeps the signature and, without shape checks, made a new MessageSid.
    url = f"{PUBLIC}/twilio/messages"
    sms = inbound_sms("My router was never delivered.")
    sid = dict(sms)["MessageSid"]
    resplit_sid = without(replaced(sms, MessageSid=sid + "NumMedia0"), "NumMedia")
    # For an MMS, NumMedia and NumSegments folded into one unknown name: without NumMedia it passed for an SMS (another spool key).
    mms = inbound_sms("Photo of the broken box.", media=[(f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/x/Media/y", "image/jpeg")])
    resplit_count = without(mms, "NumMedia", "NumSegments") + [("NumMedia1NumSegments", "1")]
    validator = RequestValidator(AUTH_TOKEN)
    assert validator.compute_signature(url, MultiDict(resplit_sid)) == validator.compute_signature(url, MultiDict(sms))
    assert validator.compute_signature(url, MultiDict(resplit_count)) == validator.compute_signature(url, MultiDict(mms))

    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        originals = [await post(http, base, sms), await post(http, base, mms)]
        attacks = [
            await post(http, base, resplit_sid, signed=signature(url, sms)),
            await post(http, base, resplit_count, signed=signature(url, mms)),
        ]
        records = await read_topic(kafka.bootstrap, topic, expect=4, settle=2)
        assert (await gateway.spool.status()).messages == 2
        assert metric(gateway, "intake_twilio_refused_total", endpoint="messages", reason="malformed") == 2
    assert [status for status, _ in originals] == [200, 200]
    assert [status for status, _ in attacks] == [400, 400]
    assert sorted(r.data["channel_message_id"] for r in of_type(records, "received")) == sorted([sid, dict(mms)["MessageSid"]])


@pytest.mark.parametrize(
    "case",
    [
        "MessageSid not SM or MM and 32 hex digits",
        "SmsSid another message's",
        "MessageSid twice",
        "AccountSid not AC and 32 hex digits",
        "no AccountSid",
        "MessagingServiceSid not MG and 32 hex digits",
        "NumMedia in Arabic-Indic digits",
        "NumMedia of 5000 digits",
        "no NumMedia",
        "NumSegments with an underscore",
        "no From",
    ],
)
async def test_what_twilio_never_sends_is_refused_400_even_when_signed(tmp_path: Path, kafka, topic, case: str):
    params = inbound_sms("Signed, but not in Twilio's shapes.") + [("MessagingServiceSid", MESSAGING_SERVICE_SID)]
    params = {
        "MessageSid not SM or MM and 32 hex digits": replaced(params, MessageSid="SM" + "g" * 32, SmsSid="SM" + "g" * 32, SmsMessageSid="SM" + "g" * 32),
        "SmsSid another message's": replaced(params, SmsSid=new_sid()),
        "MessageSid twice": params + [("MessageSid", new_sid())],
        "AccountSid not AC and 32 hex digits": replaced(params, AccountSid="AC" + "1f" * 15),
        "no AccountSid": without(params, "AccountSid"),
        "MessagingServiceSid not MG and 32 hex digits": replaced(params, MessagingServiceSid="MG" + "2e" * 16 + "Body"),
        "NumMedia in Arabic-Indic digits": replaced(params, NumMedia="\u0660"),
        "NumMedia of 5000 digits": replaced(params, NumMedia="9" * 5000),
        "no NumMedia": without(params, "NumMedia"),
        "NumSegments with an underscore": replaced(params, NumSegments="1_0"),
        "no From": without(params, "From"),
    }[case]
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        status, answer = await post(http, base, params)
        assert status == 400, answer
        assert (await gateway.spool.status()).messages == 0


async def test_a_replayed_message_sid_is_recorded_once_and_acknowledged_once(tmp_path: Path, kafka, topic):
    params = inbound_sms("The courier left my parcel in the rain.")
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        first = await post(http, base, params)
        again = await post(http, base, params)
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
        duplicates = metric(gateway, "intake_received_total", channel="sms", outcome="duplicate")

    assert first[0] == again[0] == 200
    [ack] = messages(first[1])
    # The customer was answered once; a second SMS for the same message would be spam (and cost money).
    assert again[1] == EMPTY
    [received] = of_type(records, "received")
    assert received.data["reference"] in ack.text
    assert len(of_type(records, "acknowledged")) == 1
    assert duplicates == 1


async def test_a_whatsapp_message_is_recorded_on_the_whatsapp_channel_with_the_profile_name(tmp_path: Path, kafka, topic):
    params = inbound_whatsapp("Hola, mi pedido llegó roto y nadie me contesta.", wa_id="34600111222", profile_name="Lucía Pérez")
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        status, twiml = await post(http, base, params)
        records = await read_topic(kafka.bootstrap, topic, expect=2)

    assert status == 200
    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    complaint = received.data
    assert complaint["channel"] == "whatsapp"
    assert received.headers["ce_source"] == "urn:intake/whatsapp"
    assert complaint["complainant"] == {
        "name": "Lucía Pérez",
        "phone": "+34600111222",
        "handle": "34600111222",
        "preferred_contact": "whatsapp",
        "locale": "es",
    }
    [ack] = messages(twiml)
    assert ack.text == compose(complaint["reference"], "es").short


async def test_an_mms_with_two_media_lists_both_as_attachments_at_their_twilio_urls(tmp_path: Path, kafka, topic):
    sid = new_sid("MM")
    media = [
        (f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media/ME{'a' * 32}", "image/jpeg"),
        (f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media/ME{'b' * 32}", "application/pdf"),
    ]
    params = inbound_sms("Photos of the broken screen and the receipt.", sid=sid, media=media)
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        status, twiml = await post(http, base, params)
        records = await read_topic(kafka.bootstrap, topic, expect=2)

    assert status == 200 and len(messages(twiml)) == 1
    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    assert received.data["channel"] == "mms"
    assert [(a["location"], a["content_type"]) for a in received.data["attachments"]] == media
    assert [a["filename"] for a in received.data["attachments"]] == [f"ME{'a' * 32}.jpg", f"ME{'b' * 32}.pdf"]


class TwilioMediaStandIn:
    """api.twilio.com's media URLs (basic auth AccountSid:AuthToken, then a redirect to the CDN), on loopback."""

    def __init__(self, files: dict[str, tuple[bytes, str]], redirected: set[str]) -> None:
        self.files = files
        self.redirected = redirected
        self.api_port, self.cdn_port = free_port(), free_port()
        self.api_requests: list[tuple[str, str | None]] = []  # (medium, user:password or None)
        self.cdn_authorization: list[str | None] = []

    def url(self, message: str, medium: str) -> str:
        return f"http://127.0.0.1:{self.api_port}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message}/Media/{medium}"

    async def api(self, request: web.Request) -> web.StreamResponse:
        medium = request.match_info["medium"]
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        credentials = base64.b64decode(encoded).decode() if scheme == "Basic" else None
        self.api_requests.append((medium, credentials))
        if credentials != f"{ACCOUNT_SID}:{AUTH_TOKEN}":
            return web.Response(status=401, text="Authenticate")
        if medium not in self.files:
            return web.Response(status=404)
        if medium in self.redirected:
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.cdn_port}/cdn/{medium}")
        data, content_type = self.files[medium]
        return web.Response(body=data, content_type=content_type)

    async def cdn(self, request: web.Request) -> web.Response:
        self.cdn_authorization.append(request.headers.get("Authorization"))
        data, content_type = self.files[request.match_info["medium"]]
        return web.Response(body=data, content_type=content_type)

    async def __aenter__(self) -> TwilioMediaStandIn:
        app = web.Application()
        app.router.add_get("/2010-04-01/Accounts/{account}/Messages/{message}/Media/{medium}", self.api)
        app.router.add_get("/cdn/{medium}", self.cdn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for port in (self.api_port, self.cdn_port):
            await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def test_media_are_copied_into_the_attachment_store_with_the_accounts_credentials(tmp_path: Path, kafka, topic):
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40
    voice = b"OggS" + b"\x00\x01" * 3000
    huge = b"\x00" * 300_000
    files = {"MEphoto": (photo, "image/jpeg"), "MEvoice": (voice, "audio/ogg"), "MEhuge": (huge, "video/mp4")}
    sid = new_sid("MM")
    async with TwilioMediaStandIn(files, redirected={"MEvoice"}) as twilio_media:
        media = [(twilio_media.url(sid, name), content_type) for name, (_, content_type) in files.items()]
        media.append((f"https://attacker.example/{sid}/Media/MEelsewhere", "image/png"))
        config = twilio_settings(
            tmp_path,
            kafka.bootstrap,
            topic,
            download_media=True,
            media_hosts=["127.0.0.1"],
            media_max_bytes=200_000,
            media_timeout_seconds=5,
        )
        async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
            status, twiml = await post(http, base, inbound_sms("Video of the leak, photo, voice note.", sid=sid, media=media))
            records = await read_topic(kafka.bootstrap, topic, expect=2)
            outcomes = {
                outcome: metric(gateway, "intake_twilio_media_total", outcome=outcome)
                for outcome in ("stored", "too_large", "not_allowed_host")
            }

    assert status == 200 and len(messages(twiml)) == 1
    # The account's credentials went to the media host only, and not on to the CDN it redirected to.
    assert sorted(twilio_media.api_requests) == sorted((name, f"{ACCOUNT_SID}:{AUTH_TOKEN}") for name in files)
    assert twilio_media.cdn_authorization == [None]
    assert outcomes == {"stored": 2, "too_large": 1, "not_allowed_host": 1}
    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    attachments = received.data["attachments"]
    assert [a["content_type"] for a in attachments] == ["image/jpeg", "audio/ogg", "video/mp4", "image/png"]
    for attachment, data in zip(attachments[:2], (photo, voice), strict=True):
        assert attachment["sha256"] == hashlib.sha256(data).hexdigest() and attachment["size"] == len(data)
        assert Path(urlsplit(attachment["location"]).path).read_bytes() == data
    # What could not be copied is still listed, at Twilio's URL: the complaint is never the worse for it.
    assert [a["location"] for a in attachments[2:]] == [media[2][0], media[3][0]]


async def test_opt_out_and_help_keywords_are_not_complaints_and_get_no_acknowledgement(tmp_path: Path, kafka, topic):
    keywords = ["STOP", "stop ", "Unsubscribe", "STOPALL", "quit", "HELP", "info", "START", "unstop"]
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        answers = [await post(http, base, inbound_sms(word)) for word in keywords]
        # Advanced Opt-Out: a Messaging Service's own keyword, flagged by Twilio.
        answers.append(await post(http, base, inbound_sms("ARRET") + [("OptOutType", "STOP")]))
        # Not the whole body: a complaint that happens to start with a keyword.
        status, twiml = await post(http, base, inbound_sms("Stop charging me twice for the same bill!"))
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
        counted = {
            kind: metric(gateway, "intake_twilio_keywords_total", channel="sms", kind=kind)
            for kind in ("opt_out", "help", "opt_in")
        }
        spooled = (await gateway.spool.status()).messages

    assert answers == [(200, EMPTY)] * len(answers)
    assert counted == {"opt_out": 6, "help": 2, "opt_in": 2}
    assert status == 200 and len(messages(twiml)) == 1
    [received] = complaints(records)
    assert received.data["text"] == "Stop charging me twice for the same bill!"
    assert spooled == 1


@pytest.mark.parametrize(
    ("body", "kind"),
    [("Stop.", "opt_out"), ("STOP!", "opt_out"), ('"stop"', "opt_out"), ("Stop 🛑", "opt_out"), ("\u200bSTOP", "opt_out"),
     ("ＳＴＯＰ", "opt_out"), ("¡Stop!", "opt_out"), ("Help?", "help"), ("Start.", "opt_in"),
     ("Stop the courier!", None), ("STOP ALL", None), ("...", None)],
)
def test_a_keyword_with_the_punctuation_emoji_or_invisible_marks_a_phone_adds_is_still_the_keyword(body: str, kind: str | None):
    assert normalize.keyword(normalize.parse(urlencode({"Body": body}).encode())) == kind


async def test_delivery_reports_are_counted_and_never_taken_for_complaints(tmp_path: Path, kafka, topic):
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        answers = [
            await post(http, base, delivery_report("sent"), path="/twilio/status"),
            await post(http, base, delivery_report("delivered"), path="/twilio/status"),
            await post(http, base, delivery_report("undelivered", error_code="30003"), path="/twilio/status"),
            # A Messaging Service with one URL for both kinds of request.
            await post(http, base, delivery_report("failed", error_code="30008")),
        ]
        counted = {
            (status, code): metric(gateway, "intake_twilio_delivery_reports_total", status=status, error_code=code)
            for status, code in (("sent", ""), ("delivered", ""), ("undelivered", "30003"), ("failed", "30008"))
        }
        # The other way round, a configuration slip: an inbound message posted to the status URL is still taken in.
        misrouted_status, misrouted = await post(http, base, inbound_sms("Sent to the wrong URL."), path="/twilio/status")
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
    assert [status for status, _ in answers] == [200] * 4
    assert all(messages(twiml) == [] for _, twiml in answers)
    assert set(counted.values()) == {1}
    assert misrouted_status == 200 and len(messages(misrouted)) == 1
    [received] = complaints(records)
    assert received.data["text"] == "Sent to the wrong URL."


async def test_a_delivery_report_error_code_becomes_a_label_only_when_it_is_ascii_digits(tmp_path: Path, kafka, topic):
    # A metric label must not take what a sender writes: "\u0663\u0660\u0660\u0660\u0663" matches \\d, but is no Twilio code.
    codes = ["30003", "\u0663\u0660\u0660\u0660\u0663", "3" * 7, "30 03"]
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        statuses = [(await post(http, base, delivery_report("undelivered", error_code=code), path="/twilio/status"))[0] for code in codes]
        assert statuses == [200] * len(codes)
        assert metric(gateway, "intake_twilio_delivery_reports_total", status="undelivered", error_code="30003") == 1
        assert metric(gateway, "intake_twilio_delivery_reports_total", status="undelivered", error_code="") == 3


# One complaint per supported locale, in that language, from a number of another country:
# the text decides. Adding a locale without a sample here fails the test below.
SAMPLES = {
    "en": ("+48601234567", "My parcel arrived broken and nobody answers the phone."),
    "de": ("+48601234568", "Mein Paket kam kaputt an und niemand geht ans Telefon."),
    "es": ("+48601234569", "Mi paquete llegó roto y nadie contesta el teléfono."),
    "fr": ("+48601234570", "Mon colis est arrivé cassé et personne ne répond au téléphone."),
    "pl": ("+4915112345678", "Paczka przyszła uszkodzona i nikt nie odbiera telefonu."),
    "ar": ("+48601234571", "وصل طردي مكسورا ولا أحد يرد على الهاتف."),
    "fa": ("+48601234572", "بسته من شکسته رسید و هیچ کس تلفن را جواب نمی دهد."),
    "zh": ("+48601234573", "我的包裹到达时已经损坏，没有人接电话。"),
}


async def test_the_acknowledgement_is_twiml_in_the_customers_language_with_the_reference_in_two_segments(
    tmp_path: Path, kafka, topic
):
    assert set(SAMPLES) == set(SUPPORTED)
    cases = [(locale, inbound_sms(text, sender=sender)) for locale, (sender, text) in SAMPLES.items()]
    # Too short to tell the language: the sender's country decides (+34 Spain, +98 Iran), else the default.
    cases += [("es", inbound_sms("ok??", sender="+34600111223")), ("fa", inbound_sms("!!!", sender="+989121234567"))]
    cases += [("en", inbound_sms("ok", sender="+5511912345678"))]  # Brazil: Portuguese, which has no catalog
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        answers = [await post(http, base, params) for _, params in cases]
        # A reply quoting the reference (lower case, as typed) follows up that complaint.
        first_reference = _reference(answers[0][1])
        follow_up = inbound_sms(f"Still nothing about {first_reference.lower()}, please call me.")
        follow_status, follow_twiml = await post(http, base, follow_up)
        records = await read_topic(kafka.bootstrap, topic, expect=2 * len(cases) + 2)

    acknowledged = {r.data["reference"]: r.data for r in of_type(records, "acknowledged")}
    received = {r.data["reference"]: r for r in of_type(records, "received")}
    for (locale, _), (status, twiml) in zip(cases, answers, strict=True):
        assert status == 200
        [message] = messages(twiml)
        reference = _reference(twiml)
        assert reference in received
        assert acknowledged[reference]["locale"] == locale
        assert message.text == compose(reference, locale).short
        assert gsm7_segments(message.text) <= 2, (locale, message.text)
        # Twilio reports the acknowledgement's delivery to our status endpoint (relative to the URL it called).
        assert urljoin(f"{PUBLIC}/twilio/messages", message.get("action")) == f"{PUBLIC}/twilio/status"
    for record in received.values():
        jsonschema.validate(record.data, SCHEMA)
    assert received[_reference(answers[0][1])].data["origin"]["locale_source"] == "text"
    assert received[_reference(answers[-3][1])].data["origin"]["locale_source"] == "country"
    assert received[_reference(answers[-1][1])].data["origin"]["locale_source"] == "default"

    assert follow_status == 200
    [followed] = of_type(records, "followed_up")
    assert followed.key == first_reference and followed.data["follows_up"] == first_reference
    [message] = messages(follow_twiml)
    assert message.text == compose(first_reference, "en", follow_up=True).short
    for locale in SUPPORTED:  # every text the channel can send, new or follow-up, fits two segments
        for follow in (False, True):
            assert gsm7_segments(compose("C-7K3M-9QXA", locale, follow_up=follow).short) <= 2


def _reference(twiml: str) -> str:
    from intake.normalizer.reference import parse_reference

    [message] = messages(twiml)
    reference = parse_reference(message.text or "")
    assert reference is not None, message.text
    return reference


async def test_a_sender_the_record_cannot_name_is_dead_lettered_not_lost(tmp_path: Path, kafka, topic):
    params = [(name, "messenger:1234567890" if name == "From" else value) for name, value in inbound_sms("Hello?")]
    async with running(twilio_settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        status, twiml = await post(http, base, params)
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
    assert (status, twiml) == (200, EMPTY)
    [record] = dead
    assert record.data["channel"] == "sms" and "unsupported sender address" in record.data["error"]


async def test_a_full_spool_answers_503_so_twilio_can_retry(tmp_path: Path):
    # Kafka unreachable: nothing drains, so the spool fills up after one message.
    config = twilio_settings(
        tmp_path,
        f"127.0.0.1:{free_port()}",
        "complaints-unreachable",
        overrides={"spool": {"max_pending_events": 1}, "shutdown_grace_seconds": 1},
    )
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        first_status, first = await post(http, base, inbound_sms("First one gets in."))
        params = inbound_sms("Second one must be retried.")
        status, body = await post(http, base, params)
        async with http.post(f"{base}/twilio/messages", data=urlencode(params), headers=_signed_headers(params)) as response:
            retry_after = response.headers.get("Retry-After")
        assert not await gateway.spool.has_message(f"sms:{params[2][1]}")
    assert first_status == 200 and len(messages(first)) == 1
    assert status == 503 and "try-again-later" in body
    assert retry_after is not None and int(retry_after) > 0


def _signed_headers(params: list[tuple[str, str]]) -> dict[str, str]:
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature(f"{PUBLIC}/twilio/messages", params),
    }
