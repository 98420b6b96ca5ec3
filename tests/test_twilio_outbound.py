"""Sending on SMS, MMS and WhatsApp through Twilio's REST Messages API: the real twilio client against the stand-in."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from intake.channels.twilio import TwilioConfig, TwilioSender
from intake.config import Settings, load
from intake.errors import Rejected, TemporaryFailure
from intake.twoway import Delivered, OutboundMessage, Route
from tests.support.gateway import free_port, running, settings
from tests.support.topic import of_type, read_topic
from tests.support.twilio_api import ACCOUNT_SID, AUTH_TOKEN, TwilioApi
from tests.support.web_form import FormClient, valid_fields

CUSTOMER = "+48601234567"
OTHER_PHONE = "+48512987654"
OUR_NUMBER = "+48732100200"  # the number the customer texted
DEFAULT_FROM = "+48732100999"
OUR_WHATSAPP = "+14155238886"
MESSAGING_SERVICE_SID = "MG" + "4a" * 16
TEMPLATE_SID = "HX" + "5b" * 16
REFERENCE = "C-7K3M-9QXA"
MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-f]{32}")
PHOTOS = ("https://files.example.com/c/7k3m/photo-1.jpg", "https://files.example.com/c/7k3m/photo-2.png")


def sending(api: TwilioApi, **options: Any) -> TwilioConfig:
    values: dict[str, Any] = {
        "account_sid": api.account_sid,
        "auth_tokens": [api.auth_token],
        "api_base_url": api.url,
        "default_from": DEFAULT_FROM,
        "whatsapp_from": OUR_WHATSAPP,
        "request_timeout_seconds": 2,
    }
    values.update(options)
    return TwilioConfig(**values)


def outbound(
    via: str = "sms",
    *,
    channel: str | None = None,
    address: dict[str, Any] | None = None,
    contacts: dict[str, str] | None = None,
    short: str = f"Your complaint {REFERENCE} is being handled.",
    last_inbound_at: float | None = None,
    **fields: Any,
) -> OutboundMessage:
    """A message as the delivery loop builds it; by default on the channel the customer wrote on, from their number."""
    channel = channel or via
    if address is None:
        address = {"to": CUSTOMER, "from": OUR_WHATSAPP if channel == "whatsapp" else OUR_NUMBER} if channel in ("sms", "mms", "whatsapp") else {}
    route = Route(
        channel=channel, address=address, locale="pl", last_inbound_at=time.time() if last_inbound_at is None else last_inbound_at,
        contacts=contacts or {},
    )  # fmt: skip
    return OutboundMessage(
        command_id="b1f1c2de-7a55-4c3e-9c1a-2f8f0d7e4a10", reference=REFERENCE, kind="status", via=via, route=route,
        locale="pl", direction="ltr", subject=f"Your complaint [{REFERENCE}]", text=short, short=short, **fields,
    )  # fmt: skip


async def deliver(config: TwilioConfig, message: OutboundMessage) -> Delivered:
    sender = TwilioSender(config)
    try:
        return await sender.deliver(message)
    finally:
        await sender.close()


# --- what goes out ---------------------------------------------------------------------


async def test_an_sms_answers_from_the_number_the_customer_wrote_to_signed_in_with_basic_auth():
    async with TwilioApi() as api:
        delivered = await deliver(sending(api, status_callback_url="https://complaints.example.com/twilio/status"), outbound())
        [request] = api.received
        [sent] = api.sent
    assert (sent.to, sent.from_, sent.body) == (CUSTOMER, OUR_NUMBER, f"Your complaint {REFERENCE} is being handled.")
    assert sent.media_urls == [] and sent.content_sid is None and "MessagingServiceSid" not in sent.params
    assert sent.params["StatusCallback"] == "https://complaints.example.com/twilio/status"
    assert request.credentials == (ACCOUNT_SID, AUTH_TOKEN) and request.content_type == "application/x-www-form-urlencoded"
    assert request.account_sid == ACCOUNT_SID
    assert delivered == Delivered(provider_id=sent.sid, note=None) and MESSAGE_SID.fullmatch(sent.sid)
    assert sent.resource["status"] == "queued" and sent.resource["direction"] == "outbound-api"


async def test_a_message_on_another_channel_goes_to_the_phone_given_from_the_default_number():
    async with TwilioApi() as api:
        await deliver(sending(api), outbound("sms", channel="email", address={"to": "ewa@example.com"}, contacts={"phone": OTHER_PHONE}))
        # A WhatsApp customer whose window closed, texted instead: the same number, but never from our WhatsApp sender.
        await deliver(sending(api), outbound("sms", channel="whatsapp"))
    assert [(sent.to, sent.from_) for sent in api.sent] == [(OTHER_PHONE, DEFAULT_FROM), (CUSTOMER, DEFAULT_FROM)]


async def test_whatsapp_addresses_carry_the_whatsapp_prefix_and_media_go_along():
    async with TwilioApi() as api:
        delivered = await deliver(sending(api), outbound("whatsapp", attachment_urls=PHOTOS))
        # A complaint by email answered on WhatsApp: from the configured WhatsApp sender.
        await deliver(sending(api), outbound("whatsapp", channel="email", address={}, contacts={"phone": OTHER_PHONE}))
    first, second = api.sent
    assert (first.to, first.from_, first.media_urls) == (f"whatsapp:{CUSTOMER}", f"whatsapp:{OUR_WHATSAPP}", list(PHOTOS))
    assert first.resource["num_media"] == "2" and delivered.provider_id == first.sid
    assert (second.to, second.from_) == (f"whatsapp:{OTHER_PHONE}", f"whatsapp:{OUR_WHATSAPP}")


async def test_an_mms_carries_every_medium_in_order_and_an_sms_none():
    async with TwilioApi() as api:
        mms = await deliver(sending(api), outbound("mms", attachment_urls=PHOTOS))
        sms = await deliver(sending(api), outbound("sms", attachment_urls=PHOTOS))
    first, second = api.sent
    assert first.media_urls == list(PHOTOS) and first.sid.startswith("MM") and mms.note is None
    assert (first.to, first.from_) == (CUSTOMER, OUR_NUMBER)
    assert second.media_urls == [] and second.sid.startswith("SM") and sms.note == "attachments not sent by sms"


async def test_outside_the_whatsapp_window_a_template_goes_with_its_variables_and_a_free_text_is_refused():
    wrote = time.time() - 30 * 3600
    async with TwilioApi(enforce_whatsapp_window=True) as api:
        api.customer_wrote_on_whatsapp(CUSTOMER, at=wrote)
        with pytest.raises(Rejected) as refused:
            await deliver(sending(api), outbound("whatsapp", last_inbound_at=wrote))
        variables = {"1": REFERENCE, "2": "w trakcie rozpatrywania"}
        templated = await deliver(
            sending(api), outbound("whatsapp", last_inbound_at=wrote, template_sid=TEMPLATE_SID, template_variables=variables)
        )
        api.customer_wrote_on_whatsapp(CUSTOMER)  # they write again: the window opens
        within = await deliver(sending(api), outbound("whatsapp"))
    assert "63016" in str(refused.value)
    template, free = api.sent
    assert template.content_sid == TEMPLATE_SID and template.content_variables == variables and template.body is None
    assert (template.to, template.from_) == (f"whatsapp:{CUSTOMER}", f"whatsapp:{OUR_WHATSAPP}")
    assert templated == Delivered(provider_id=template.sid, note="whatsapp template")
    assert free.body and free.content_sid is None and within.note is None


async def test_without_a_number_to_send_from_the_messaging_service_picks_one():
    async with TwilioApi() as api:
        config = sending(api, default_from=None, whatsapp_from=None, messaging_service_sid=MESSAGING_SERVICE_SID)
        await deliver(config, outbound("whatsapp", channel="web", address={}, contacts={"phone": OTHER_PHONE}))
    [sent] = api.sent
    assert sent.params["MessagingServiceSid"] == MESSAGING_SERVICE_SID and sent.from_ is None
    assert sent.to == f"whatsapp:{OTHER_PHONE}" and sent.resource["status"] == "accepted"


async def test_a_message_with_no_number_to_go_to_is_rejected_before_twilio_is_asked():
    async with TwilioApi() as api:
        with pytest.raises(Rejected, match="no phone number"):
            await deliver(sending(api), outbound("sms", channel="telegram", address={"chat_id": 5550001, "message_id": 7}))
        with pytest.raises(Rejected, match="does not send on 'email'"):
            await deliver(sending(api), outbound("email", channel="email", address={"to": "ewa@example.com"}))
    assert api.received == []


# --- failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "wait"),
    [(429, 20429, "7", 7.0), (503, 20503, None, None), (500, 20500, None, None)],
)
async def test_too_many_requests_and_server_errors_are_temporary_and_keep_twilios_retry_after(status, code, retry_after, wait):
    async with TwilioApi() as api:
        api.fail(1, status=status, code=code, retry_after=retry_after)
        sender = TwilioSender(sending(api))
        try:
            with pytest.raises(TemporaryFailure) as failure:
                await sender.deliver(outbound())
            assert api.sent == []
            retried = await sender.deliver(outbound())  # the next try goes through
        finally:
            await sender.close()
    assert str(code) in str(failure.value)
    # Read from the instance, as intake.replies reads it: the class's default is no wait asked for.
    assert vars(failure.value).get("retry_after") == wait
    assert [sent.sid for sent in api.sent] == [retried.provider_id]


async def test_a_retry_after_given_as_a_date_is_read_as_seconds_from_now():
    async with TwilioApi() as api:
        from email.utils import formatdate

        api.fail(1, status=429, code=20429, retry_after=formatdate(time.time() + 120, usegmt=True))
        with pytest.raises(TemporaryFailure) as failure:
            await deliver(sending(api), outbound())
    assert 100 <= vars(failure.value)["retry_after"] <= 121


async def test_an_unreachable_or_silent_twilio_is_a_temporary_failure():
    config = TwilioConfig(
        account_sid=ACCOUNT_SID, auth_tokens=[AUTH_TOKEN], api_base_url=f"http://127.0.0.1:{free_port()}", default_from=DEFAULT_FROM
    )
    with pytest.raises(TemporaryFailure, match="unreachable"):
        await deliver(config, outbound())
    async with TwilioApi(answer_delay=3) as api:
        started = time.monotonic()
        with pytest.raises(TemporaryFailure, match="TimeoutError"):
            await deliver(sending(api, request_timeout_seconds=0.5), outbound())
        assert time.monotonic() - started < 2.5  # bounded by request_timeout_seconds, not by aiohttp's five minutes


@pytest.mark.parametrize(
    ("case", "code"),
    [("unsubscribed", 21610), ("invalid_to", 21211), ("region", 21408), ("auth", 20003), ("unknown_code", 30999)],
)
async def test_permanent_refusals_are_rejected_with_the_code_and_without_the_number(case, code):
    async with TwilioApi() as api:
        config = sending(api)
        message = outbound()
        if case == "unsubscribed":
            api.unsubscribed.add(CUSTOMER)
        elif case == "invalid_to":
            message = outbound(address={"to": "+4860", "from": OUR_NUMBER})
        elif case == "region":
            api.fail(1, status=400, code=21408)
        elif case == "auth":
            config = sending(api, auth_tokens=["0" * 32])
        else:
            api.fail(1, status=400, code=code)
        with pytest.raises(Rejected) as refused:
            await deliver(config, message)
        [request] = api.received
    reason = str(refused.value)
    assert f"Twilio {code}" in reason
    # Twilio's own message quotes the number; the reason goes into events and logs and must not.
    if case in ("invalid_to", "region"):
        assert request.params["To"] in request.answer["message"]
    assert request.params["To"] not in reason and "+48" not in reason and AUTH_TOKEN not in reason and ACCOUNT_SID not in reason


async def test_logs_name_no_number_no_text_and_no_secret(caplog):
    caplog.set_level(logging.DEBUG)
    async with TwilioApi() as api:
        sender = TwilioSender(sending(api))
        try:
            await sender.deliver(outbound(short="Moja paczka dotarła zniszczona"))
            api.fail(1, status=429, code=20429, retry_after=3)
            with pytest.raises(TemporaryFailure):
                await sender.deliver(outbound())
            with pytest.raises(Rejected):
                await sender.deliver(outbound(address={"to": "+4860", "from": OUR_NUMBER}))
            api.unsubscribed.add(OTHER_PHONE)
            with pytest.raises(Rejected):
                await sender.send_reply({"to": OTHER_PHONE, "text": "Potwierdzamy przyjęcie", "reference": REFERENCE})
        finally:
            await sender.close()
    assert len(api.received) == 4
    assert any(getattr(record, "event", None) == "twilio_send_refused" for record in caplog.records)
    basic = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    for record in caplog.records:
        logged = record.getMessage() + " " + json.dumps({k: str(v) for k, v in vars(record).items() if k not in ("msg", "args")})
        for secret in (CUSTOMER, OTHER_PHONE, "+4860", OUR_NUMBER, DEFAULT_FROM, AUTH_TOKEN, basic, "zniszczona", "Potwierdzamy"):
            assert secret not in logged, (secret, record.name, logged)


# --- configuration -------------------------------------------------------------------------


def test_sending_needs_a_token_and_a_sender_and_its_token_comes_from_the_secret_files(tmp_path: Path, monkeypatch):
    with pytest.raises(ValidationError, match="auth token"):
        TwilioConfig(account_sid=ACCOUNT_SID, default_from=DEFAULT_FROM)
    with pytest.raises(ValidationError, match="default_from or twilio.messaging_service_sid"):
        TwilioConfig(account_sid=ACCOUNT_SID, auth_tokens=[AUTH_TOKEN])
    with pytest.raises(ValidationError, match="default_from"):
        TwilioConfig(account_sid=ACCOUNT_SID, auth_tokens=[AUTH_TOKEN], default_from="0048 732 100 999")
    assert not TwilioConfig().sending and not TwilioConfig(enabled=True, auth_tokens=[AUTH_TOKEN]).sending

    secret = tmp_path / "twilio-tokens"
    secret.write_text(json.dumps([AUTH_TOKEN]) + "\n")
    monkeypatch.setenv("INTAKE_TWILIO__ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("INTAKE_TWILIO__AUTH_TOKENS_FILE", str(secret))
    monkeypatch.setenv("INTAKE_TWILIO__DEFAULT_FROM", DEFAULT_FROM)
    config = load().twilio
    assert config.sending and config.auth_tokens[0].get_secret_value() == AUTH_TOKEN
    assert AUTH_TOKEN not in repr(config) and AUTH_TOKEN not in str(config.model_dump())


# --- through the gateway -----------------------------------------------------------------


def form_and_sms(tmp_path: Path, kafka: Any, topic: str, api: TwilioApi, **sections: Any) -> Settings:
    """A gateway with the web form, sending SMS through the stand-in (no Twilio webhook: sending needs none)."""
    twilio = sending(api).model_dump(mode="json", exclude={"auth_tokens"}) | {"auth_tokens": [api.auth_token]}
    return settings(
        tmp_path, kafka.bootstrap, topic, attachments={"directory": str(tmp_path / "attachments")}, web_form={"enabled": True},
        twilio=twilio, **sections,
    )  # fmt: skip


async def test_a_web_form_complaint_with_only_a_phone_is_acknowledged_by_sms(tmp_path: Path, kafka, topic):
    async with TwilioApi() as api:
        config = form_and_sms(tmp_path, kafka, topic, api)
        async with running(config) as (gateway, base), FormClient(base) as client:
            assert set(gateway.outbound_senders) == {"sms", "mms", "whatsapp"} and "sms" in gateway.reply_senders
            await client.open("?lang=de")
            response, page = await client.send(valid_fields(email="", preferred_contact=""), query="?lang=de")
            assert response.status == 200, page.html
            [sent] = await api.wait_sent(1)
            records = await read_topic(kafka.bootstrap, topic, expect=3)
    reference = page.by_id("reference").text
    assert (sent.to, sent.from_) == (CUSTOMER, DEFAULT_FROM) and "MediaUrl" not in sent.params
    assert reference in (sent.body or "")
    assert "per SMS" in page.by_id("main").text
    acknowledged = of_type(records, "acknowledged")
    assert {record.key for record in acknowledged} == {reference} and len(acknowledged) == 2  # on the page, and by SMS


async def test_an_sms_acknowledgement_twilio_refuses_is_recorded_as_failed_with_its_code_and_a_busy_one_retried(
    tmp_path: Path, kafka, topic
):
    async with TwilioApi() as api:
        config = form_and_sms(tmp_path, kafka, topic, api, acknowledgement={"retry_first_seconds": 0.2})
        api.unsubscribed.add(CUSTOMER)
        api.fail(1, status=429, code=20429, retry_after=1)
        async with running(config) as (_, base), FormClient(base) as client:
            await client.open("?lang=en")
            await client.send(valid_fields(email="", preferred_contact=""))
            await client.open("?lang=en")
            await client.send(valid_fields(email="", preferred_contact="", phone=OTHER_PHONE, description="A second parcel, broken."))
            # Two received, two acknowledged on the page, one failed for good, one sent once Twilio had room.
            records = await read_topic(kafka.bootstrap, topic, expect=6)
    [failed] = of_type(records, "acknowledgement_failed")
    assert "Twilio 21610" in failed.data["error"] and CUSTOMER not in json.dumps(failed.data)
    [sent] = api.sent
    assert sent.to == OTHER_PHONE
    # The first try of one of them met the 429, which was retried; the refused one was tried once.
    assert sorted(request.status for request in api.received) == [201, 400, 429]


async def test_a_gateway_without_twilio_sending_registers_no_twilio_sender(tmp_path: Path, kafka, topic):
    config = settings(tmp_path, kafka.bootstrap, topic, twilio={"enabled": True, "auth_tokens": [AUTH_TOKEN]})
    async with running(config) as (gateway, _):
        assert gateway.outbound_senders == {} and "sms" not in gateway.reply_senders
