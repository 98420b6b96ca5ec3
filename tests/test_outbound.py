"""Two-way delivery: commands on the outbound topic of a running gateway reach the complainant once, in order, or say why not."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiokafka import AIOKafkaProducer

from intake import commands, events, texts
from intake.acknowledgement import Acknowledgement
from intake.errors import TemporaryFailure
from intake.gateway import Gateway
from intake.twoway import Delivered, Feedback, Interception, OutboundMessage, Route
from intake.normalizer.record import Complaint
from intake.normalizer.reference import parse_reference
from tests.support.gateway import complaint_body, free_port, post_complaint, running, settings
from tests.support.mail import CUSTOMER, OUR_ADDRESS, complaint_mail, email_settings, smtp_send
from tests.support.telegram_api import TOKEN, TelegramApi, message, user
from tests.support.topic import Record, read_topic, wait_for
from tests.support.web_form import FormClient, valid_fields
from tests.test_telegram import SECRET as TELEGRAM_SECRET
from tests.test_telegram import post_update
from tests.test_twilio import AUTH_TOKEN, OUR_WHATSAPP, PUBLIC, inbound_sms, inbound_whatsapp
from tests.test_twilio import post as post_twilio

OUTCOME = json.loads(files("intake.normalizer").joinpath("schema/reply-outcome.v1.json").read_text())
REJECTED = json.loads(files("intake.normalizer").joinpath("schema/command-rejected.v1.json").read_text())


class RecordingSender:
    """An OutboundSender of the test's own: what it was given, in order; optionally failing first."""

    def __init__(self, *, failures: int = 0, forever: bool = False) -> None:
        self.delivered: list[OutboundMessage] = []
        self.attempts = 0
        self._failures = failures
        self._forever = forever

    async def deliver(self, message: OutboundMessage) -> Delivered:
        self.attempts += 1
        if self._forever or self.attempts <= self._failures:
            raise TemporaryFailure("the partner's callback answered 503")
        self.delivered.append(message)
        return Delivered(provider_id=f"test-{len(self.delivered)}")


def command(kind: str, reference: str, *, ce_id: str | None = None, **data: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", ce_id or str(uuid.uuid4())),
        ("ce_type", f"intake.command.{kind}.v1"),
        ("ce_source", "urn:case-management"),
        ("content-type", "application/json"),
    ]
    return reference.encode(), json.dumps({"reference": reference, **data}).encode(), [(k, v.encode()) for k, v in headers]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


def outbound_settings(tmp_path: Path, kafka: Any, topic: str, **outbound: Any) -> Any:
    return settings(
        tmp_path, kafka.bootstrap, topic, outbound={"retry_first_seconds": 0.1, "retry_max_seconds": 0.5, **outbound}
    )


def outcomes(records: list[Record]) -> list[Record]:
    return [r for r in records if r.headers["ce_type"].startswith("intake.reply.")]


# --- the contract ---------------------------------------------------------------


def test_the_shipped_command_schema_is_the_one_the_models_generate():
    shipped = json.loads(files("intake.normalizer").joinpath("schema/command.v1.json").read_text())
    assert shipped == commands.json_schema(), "run `python -c 'from intake.commands import json_schema_text as t; print(t(), end=\"\")' > intake/normalizer/schema/command.v1.json`"


def test_a_valid_command_parses_and_validates_against_the_shipped_schema():
    key, value, headers = command("message", "C-7K3M-9QXA", text="We will refund you.", attachment_urls=["https://cases.example/d/1.pdf"], status="responded")
    parsed = commands.parse(key, value, headers)
    assert (parsed.kind, parsed.reference, parsed.data["status"]) == ("message", "C-7K3M-9QXA", "responded")
    jsonschema.validate(json.loads(value), json.loads(files("intake.normalizer").joinpath("schema/command.v1.json").read_text()))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda k, v, h: (k, v, [(n, b"0.3" if n == "ce_specversion" else x) for n, x in h]), "ce_specversion"),
        (lambda k, v, h: (k, v, [(n, b"intake.command.poke.v1" if n == "ce_type" else x) for n, x in h]), "ce_type must be one of"),
        (lambda k, v, h: (k, v, [(n, x) for n, x in h if n != "ce_id"]), "ce_id is required"),
        (lambda k, v, h: (b"C-0000-0000", v, h), "key must be the complaint's reference"),
        (lambda k, v, h: (k, b"{not json", h), "not JSON"),
        (lambda k, v, h: (k, json.dumps({"reference": "C-7K3M-9QXA", "text": "Secret words " * 400}).encode(), h), "text: String should have at most 4000"),
        (lambda k, v, h: (k, json.dumps({"reference": "C-7K3M-9QXA", "text": "Secret words", "attachment_urls": ["http://x.example/a"]}).encode(), h), "attachment_urls.0"),
    ],
)
def test_an_invalid_command_is_refused_naming_the_rule_never_the_content(change, reason):
    key, value, headers = change(*command("message", "C-7K3M-9QXA", text="Secret words"))
    with pytest.raises(commands.InvalidCommand) as refused:
        commands.parse(key, value, headers)
    assert reason in refused.value.reason
    assert "Secret" not in refused.value.reason


# --- end to end, real broker ------------------------------------------------------


async def test_commands_are_delivered_once_in_order_and_bad_ones_reach_the_dead_letter_topic(tmp_path: Path, kafka, topic):
    config = outbound_settings(tmp_path, kafka, topic, survey_on=["resolved"])
    sender = RecordingSender()
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        gateway.outbound_senders["webhook"] = sender
        first = (await post_complaint(http, base, complaint_body(), "two-way-1"))[1]["reference"]
        second = (await post_complaint(http, base, complaint_body("Another one."), "two-way-2"))[1]["reference"]
        hello = command("message", first, text="We are looking into it.", ce_id="cmd-hello")
        batch = [
            hello,
            command("status", first, status="in_progress", ce_id="cmd-progress"),
            command("message", second, text="A courier comes tomorrow.", ce_id="cmd-other"),
            hello,  # redelivered: the same ce_id
            command("status", first, status="resolved", text="Refunded in full.", ce_id="cmd-resolved"),
            command("message", "C-7K3M-9QXA", text="Nobody has this one.", ce_id="cmd-unknown"),
            command("status", first, status="reopened", ce_id="cmd-invalid"),
        ]
        await produce(kafka.bootstrap, config.kafka.outbound_topic, batch)
        await wait_for(lambda: _true(len(sender.delivered) >= 5), timeout=30)
        await asyncio.sleep(1)  # a duplicate delivered late would show now
        assert [m.command_id for m in sender.delivered if m.reference == first][:3] == ["cmd-hello", "cmd-progress", "cmd-resolved"]
        assert [m.command_id for m in sender.delivered if m.reference == second] == ["cmd-other"]
        assert len(sender.delivered) == 5  # the fifth: the survey "resolved" asks for
        survey = sender.delivered[-1]
        assert survey.kind == "survey" and survey.reference == first and survey.survey is not None
        # References are delivered side by side: the first reference's first command, whichever went out first.
        greeting = next(m for m in sender.delivered if m.command_id == "cmd-hello")
        assert greeting.via == "webhook" and greeting.route.address["partner"] == "acme"
        assert "We are looking into it." in greeting.short and first in greeting.short
        view = await gateway.spool.status(first)
        assert view is not None and (view.status, view.text) == ("resolved", "Refunded in full.")
        assert (await gateway.spool.open_survey(first)).survey_id == survey.survey.survey_id
        assert await gateway.spool.status(second) is None  # a message without status leaves it "received"
        main = await read_topic(kafka.bootstrap, topic, expect=9)
        dead = await read_topic(kafka.bootstrap, config.kafka.dead_letter_topic, expect=2)

    delivered = outcomes(main)
    assert sorted(r.data["command_id"] for r in delivered)[:4] == ["cmd-hello", "cmd-other", "cmd-progress", "cmd-resolved"]
    assert len(delivered) == 5 and {r.headers["ce_type"] for r in delivered} == {events.REPLY_DELIVERED}
    for record in delivered:
        jsonschema.validate(record.data, OUTCOME)
        assert record.key == record.data["reference"] and record.data["channel"] == "webhook" == record.data["route_channel"]
    rejected = {r.data["command_id"]: r for r in dead if r.headers["ce_type"] == events.COMMAND_REJECTED}
    assert set(rejected) == {"cmd-unknown", "cmd-invalid"}
    assert "unknown reference" in rejected["cmd-unknown"].data["reason"]
    assert "status" in rejected["cmd-invalid"].data["reason"] and rejected["cmd-invalid"].key == first
    for record in rejected.values():
        jsonschema.validate(record.data, REJECTED)
        assert "Nobody" not in record.value.decode()


async def test_a_failing_sender_is_retried_then_reported_as_reply_failed(tmp_path: Path, kafka, topic):
    config = outbound_settings(tmp_path, kafka, topic, max_attempts=3)
    flaky, broken = RecordingSender(failures=1), RecordingSender(forever=True)
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        gateway.outbound_senders["webhook"] = flaky
        reference = (await post_complaint(http, base, complaint_body(), "flaky-1"))[1]["reference"]
        await produce(kafka.bootstrap, config.kafka.outbound_topic, [command("message", reference, text="One.", ce_id="cmd-flaky")])
        await wait_for(lambda: _true(len(flaky.delivered) == 1), timeout=30)
        gateway.outbound_senders["webhook"] = broken
        await produce(kafka.bootstrap, config.kafka.outbound_topic, [command("message", reference, text="Two.", ce_id="cmd-broken")])
        await wait_for(lambda: _true(broken.attempts >= 3), timeout=30)
        main = await read_topic(kafka.bootstrap, topic, expect=4)
        assert (await gateway.spool.status()).pending_commands == 0
    assert flaky.attempts == 2
    by_id = {r.data["command_id"]: r for r in outcomes(main)}
    assert by_id["cmd-flaky"].headers["ce_type"] == events.REPLY_DELIVERED
    failed = by_id["cmd-broken"]
    assert failed.headers["ce_type"] == events.REPLY_FAILED
    assert "gave up after 3 attempts" in failed.data["error"] and "503" in failed.data["error"]
    jsonschema.validate(failed.data, OUTCOME)
    assert broken.attempts == 3


async def test_a_command_stored_but_not_sent_when_the_gateway_stops_is_sent_once_after_restart(tmp_path: Path, kafka, topic):
    config = outbound_settings(tmp_path, kafka, topic)

    def dies_before_sending(gateway: Gateway) -> None:
        assert gateway.delivery is not None

        async def never_delivers() -> None:  # the gateway dies between storing and sending
            await gateway.supervisor.stopping.wait()

        gateway.delivery.run = never_delivers  # type: ignore[method-assign]

    async with running(config, prepare=dies_before_sending) as (gateway, base), aiohttp.ClientSession() as http:
        reference = (await post_complaint(http, base, complaint_body(), "restart-1"))[1]["reference"]
        await produce(kafka.bootstrap, config.kafka.outbound_topic, [command("message", reference, text="After the restart.", ce_id="cmd-restart")])

        async def stored() -> bool:
            return (await gateway.spool.status()).pending_commands == 1

        await wait_for(stored, timeout=30)
    sender = RecordingSender()
    # A fresh gateway on the same spool, its sender registered before it starts, as channels do.
    async with running(config, prepare=lambda again: again.outbound_senders.update(webhook=sender)):
        await wait_for(lambda: _true(len(sender.delivered) == 1), timeout=30)
        await asyncio.sleep(2)  # the consumer group rejoined: a redelivery of the committed batch would show now
        assert [m.command_id for m in sender.delivered] == ["cmd-restart"]
        main = await read_topic(kafka.bootstrap, topic, expect=3)
    assert [r.data["command_id"] for r in outcomes(main)] == ["cmd-restart"]


async def test_a_gateway_killed_between_consuming_a_command_and_sending_it_sends_it_once_after_restart(tmp_path: Path, kafka, topic):
    """kill -9 of a real ``intake serve``: the command was consumed, stored and its offset committed, the partner had
    not taken it yet. After the restart it is sent from the spool, once; the topic does not give it again."""
    from tests.support.gateway import GatewayProcess, free_port
    from tests.test_outbound_channels import CALLBACK_SECRET, PARTNER_SECRET, partner_endpoint

    async with partner_endpoint() as partner:
        partner.answers = [(503, {"Retry-After": "0"})] * 1000  # first life: the partner is down, every try is refused
        port = free_port()
        config = tmp_path / "intake.toml"
        config.write_text(
            f"""
log_format = "text"
[http]
port = {port}
[spool]
path = "{tmp_path / 'spool.sqlite3'}"
[kafka]
bootstrap_servers = "{kafka.bootstrap}"
topic = "{topic}"
dead_letter_topic = "{topic}.dead-letter"
outbound_topic = "{topic}.outbound"
[outbound]
retry_first_seconds = 0.2
retry_max_seconds = 0.5
[webhook.partners.acme]
secrets = ["{PARTNER_SECRET}"]
callback_url = "{partner.url}"
callback_secrets = ["{CALLBACK_SECRET}"]
"""
        )
        gateway = GatewayProcess(config, port)
        gateway.start()
        try:
            await gateway.wait_healthy(timeout=60)
            async with aiohttp.ClientSession() as http:
                status, answer = await post_complaint(http, gateway.base, complaint_body(), "kill-outbound")
            assert status == 202
            reference = answer["reference"]
            await produce(kafka.bootstrap, f"{topic}.outbound", [command("message", reference, text="Your refund is on its way.", ce_id="cmd-kill")])
            # Consumed and stored: the gateway is trying to send it, and the partner refuses.
            await wait_for(lambda: _true(len(partner.received) >= 2), timeout=60)
        finally:
            gateway.kill()
        # A try already on the wire when the process died may still reach the partner: count it among the refused.
        await _settled(lambda: len(partner.received))
        refused = len(partner.received)
        partner.answers = []  # second life: the partner takes what it is given

        gateway.start()
        try:
            await gateway.wait_healthy(timeout=60)
            await wait_for(lambda: _true(len(partner.received) > refused), timeout=60)
            main = await read_topic(kafka.bootstrap, topic, expect=3, timeout=30, settle=3)
        finally:
            assert gateway.terminate() == 0, gateway.log.read_text()[-2000:]
    taken = partner.received[refused:]
    assert len(taken) == 1, "sent again after it was taken"
    # Every try, before and after the kill, is the same delivery to the partner: one Idempotency-Key, the command's.
    assert {r["key"] for r in partner.received} == {"cmd-kill"} and all(r["verified"] for r in partner.received)
    body = taken[0]["body"]
    assert body["reference"] == reference and body["text"].startswith("Your refund is on its way.")
    # Read on the partner's screen, where a reply does not reach us: it does not ask for one (here in Polish, the locale given).
    assert body["text"].endswith(texts.compose_message(reference, "x", "pl", replyable=False).text.split("\n\n")[-1])
    assert texts.compose_message(reference, "x", "pl").text.split("\n\n")[-1] not in body["text"]
    [outcome] = outcomes(main)
    assert outcome.headers["ce_type"] == events.REPLY_DELIVERED and outcome.data["command_id"] == "cmd-kill"


async def _settled(count, quiet: float = 1.0) -> None:
    """Until ``count()`` has not changed for ``quiet`` seconds."""
    last = count()
    while True:
        await asyncio.sleep(quiet)
        if count() == last:
            return
        last = count()


async def test_a_web_form_complaint_is_answered_by_its_preferred_contact(tmp_path: Path, kafka, topic):
    config = settings(tmp_path, kafka.bootstrap, topic, web_form={"enabled": True}, attachments={"directory": str(tmp_path / "a")})
    email, sms = RecordingSender(), RecordingSender()
    async with running(config) as (gateway, base), FormClient(base) as visitor:
        gateway.outbound_senders.update({"email": email, "sms": sms})
        await visitor.open("?lang=en")
        response, page = await visitor.send(valid_fields(preferred_contact="phone"))
        assert response.status == 200
        reference = parse_reference(page.html)
        assert reference is not None
        route = await gateway.spool.route(reference)
        assert route is not None and route.channel == "web" and route.address == {}
        assert route.contacts == {"email": "ewa@example.com", "phone": "+48601234567", "preferred": "phone"}
        await produce(kafka.bootstrap, config.kafka.outbound_topic, [command("status", reference, status="in_progress", ce_id="cmd-form")])
        await wait_for(lambda: _true(len(sms.delivered) == 1), timeout=30)
        main = await read_topic(kafka.bootstrap, topic, expect=3)
    assert email.delivered == [] and sms.delivered[0].route.address == {"to": "+48601234567"}
    [outcome] = outcomes(main)
    assert (outcome.data["channel"], outcome.data["route_channel"]) == ("sms", "web")


# --- several workers ----------------------------------------------------------------


async def test_a_complaint_another_worker_took_in_is_answered_asked_about_and_surveyed(tmp_path: Path, kafka, topic):
    """Two workers of one gateway (``intake serve --workers 2``), each with its spool: worker 1 took the complaint in;
    worker 0 consumes the commands. The route, the status and the survey are found across the two spools."""
    first = outbound_settings(tmp_path, kafka, topic)
    other = first.model_copy(update={"http": first.http.model_copy(update={"port": free_port()})})
    sender = RecordingSender()
    async with (
        running(first, prepare=lambda zero: zero.outbound_senders.update(webhook=sender), worker=0, workers=2) as (zero, _),
        running(other, worker=1, workers=2) as (one, base_one),
        aiohttp.ClientSession() as http,
    ):
        assert one.outbound is None and zero.outbound is not None  # the commands are worker 0's alone
        customer = {"customer_id": "c-77", "locale": "de"}
        body = complaint_body("Mein Paket kam beschädigt an.", complainant=customer)
        reference = (await post_complaint(http, base_one, body, "worker-1"))[1]["reference"]
        assert await zero.spool.route(reference) is None  # worker 0's own spool never saw it
        await produce(
            kafka.bootstrap,
            first.kafka.outbound_topic,
            [
                command("message", reference, text="Wir prüfen das.", ce_id="cmd-w-message"),
                command("status", reference, status="in_progress", text="Erstattung beantragt.", ce_id="cmd-w-status"),
                command("survey", reference, nps=False, comment=False, ce_id="cmd-w-survey"),
            ],
        )
        await wait_for(lambda: _true(len(sender.delivered) == 3), timeout=30)
        assert [m.command_id for m in sender.delivered] == ["cmd-w-message", "cmd-w-status", "cmd-w-survey"]
        assert {m.route.address["customer_id"] for m in sender.delivered} == {"c-77"}
        assert all(m.locale == "de" for m in sender.delivered)

        # The customer asks worker 1, which holds the route but not the status: the status is worker 0's.
        status, asked = await post_complaint(http, base_one, complaint_body("Status", follows_up=reference, complainant=customer), "worker-1-status")
        assert status == 202
        expected = texts.compose_status(reference, "in_progress", "de", text="Erstattung beantragt.")
        assert asked["acknowledgement"]["text"] == expected.text

        # The answer to worker 0's survey, given through worker 1, closes it for both.
        assert await one.conversations.open_survey(reference) is not None
        status, _ = await post_complaint(http, base_one, complaint_body("5", follows_up=reference, complainant=customer), "worker-1-answer")
        assert status == 202
        assert await zero.spool.open_survey(reference) is not None  # worker 0's own rows alone would still ask
        assert await zero.conversations.open_survey(reference) is None
        assert await one.conversations.open_survey(reference) is None
        records = await read_topic(kafka.bootstrap, topic, expect=6, timeout=30, settle=2)
        dead = await read_topic(kafka.bootstrap, first.kafka.dead_letter_topic, expect=1, timeout=2)
    assert dead == []
    assert sorted(r.data["command_id"] for r in outcomes(records)) == ["cmd-w-message", "cmd-w-status", "cmd-w-survey"]
    [feedback] = [r for r in records if r.headers["ce_type"] == events.FEEDBACK_RECEIVED]
    assert (feedback.data["reference"], feedback.data["score"], feedback.data["survey_id"]) == (reference, 5, "cmd-w-survey")


# --- routes, on every channel ----------------------------------------------------


async def test_each_channel_records_how_to_reach_its_complainant(tmp_path: Path, kafka, topic, relay):
    api = TelegramApi()
    async with api, aiohttp.ClientSession() as http:
        config = email_settings(
            tmp_path, kafka.bootstrap, topic, relay,
            telegram={"enabled": True, "token": TOKEN, "api_url": api.url, "webhook_secret": TELEGRAM_SECRET, "mode": "webhook"},
            twilio={"enabled": True, "auth_tokens": [AUTH_TOKEN]},
            http={"public_base_url": PUBLIC},
        )  # fmt: skip
        async with running(config) as (gateway, base):
            webhook = (await post_complaint(http, base, complaint_body(complainant={"email": "ewa@example.com", "customer_id": "42", "locale": "pl"}), "route-1"))[1]
            assert (await post_twilio(http, base, inbound_sms("Paczka przyszła rozbita.", sender="+48601234567")))[0] == 200
            assert (await post_twilio(http, base, inbound_whatsapp("My parcel arrived broken.", wa_id="447700900123", profile_name="Ewa")))[0] == 200
            assert await post_update(http, base, {"update_id": 900_001, "message": message(user(5550009), 77, text="Broken parcel")}) == 200
            mail = complaint_mail(message_id="<route-test@customer.test>")
            await smtp_send(config.email.smtp.port, mail)

            async def routes() -> dict[str, Route]:
                found = {}
                for channel in ("webhook", "sms", "whatsapp", "telegram", "email"):
                    # Which reference each channel's complaint got is the channel's business: read it off the table.
                    row = await gateway.spool._read(
                        lambda c, ch=channel: c.execute("SELECT reference FROM conversation WHERE channel = ?", (ch,)).fetchone()
                    )
                    if row:
                        found[channel] = await gateway.spool.route(row[0])
                return found

            async def all_five() -> bool:
                return len(await routes()) == 5

            await wait_for(all_five, timeout=30)
            found = await routes()
            assert found["webhook"] == await gateway.spool.route(webhook["reference"])
    assert found["webhook"].address == {"partner": "acme", "customer_id": "42"}
    assert found["webhook"].locale == "pl" and found["webhook"].contacts["email"] == "ewa@example.com"
    assert found["sms"].address["to"] == "+48601234567"
    assert found["whatsapp"].address == {"to": "+447700900123", "from": OUR_WHATSAPP.removeprefix("whatsapp:")}
    assert found["telegram"].address == {"chat_id": 5550009, "message_id": 77}
    assert found["email"].address["to"] == CUSTOMER and found["email"].address["message_id"] == "<route-test@customer.test>"
    assert OUR_ADDRESS not in json.dumps(found["email"].address)


# --- the interception hook ----------------------------------------------------------


class StatusQuestions:
    """A CustomerRequests of the test's own: "status" on a follow-up is a question, "5" an answer to the survey."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Route | None]] = []

    async def intercept(self, complaint: Complaint, route: Route | None) -> Interception | None:
        self.seen.append((complaint.text, route))
        if not complaint.follows_up:
            return None
        answer = Acknowledgement(locale="en", direction="ltr", subject="Status", text="It is being handled.", short="It is being handled.")
        if complaint.text == "5":
            feedback = Feedback(reference=complaint.follows_up, survey_id="survey-1", channel=complaint.channel, score=5, answer_id=str(complaint.id))
            event = events.feedback_event(feedback, received_at=dt.datetime.now(dt.timezone.utc), topic="feedback-topic", source="urn:test")
            return Interception(kind="feedback", events=[event], answer=answer, feedback=feedback)
        return Interception(kind="status", events=[], answer=answer)


async def test_a_request_intercepted_is_stored_answered_and_never_published_as_a_complaint(tmp_path: Path, kafka, topic):
    requests = StatusQuestions()
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        gateway.reception.requests = requests
        status, complaint = await post_complaint(http, base, complaint_body(), "hook-1")
        assert status == 202 and requests.seen[0][1] is None
        status, asked = await post_complaint(http, base, complaint_body("status", follows_up=complaint["reference"]), "hook-2")
        assert status == 202 and asked["acknowledgement"]["text"] == "It is being handled."
        followed, now = requests.seen[1][1], await gateway.spool.route(complaint["reference"])
        assert followed is not None and now is not None and followed.address == now.address == {"partner": "acme"}
        assert now.last_inbound_at > followed.last_inbound_at  # the question, stored, was the complainant's latest word
        status, _ = await post_complaint(http, base, complaint_body("5", follows_up=complaint["reference"]), "hook-3")
        again, _ = await post_complaint(http, base, complaint_body("5", follows_up=complaint["reference"]), "hook-3")
        assert status == again == 202
        assert await gateway.spool.has_message("webhook:acme/hook-2")
        assert (await gateway.spool.record_feedback(requests_feedback(complaint["reference"]), _dummy_event())) is False
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
    types = [r.headers["ce_type"] for r in records]
    assert types.count(events.COMPLAINT_RECEIVED) == 1 and events.COMPLAINT_FOLLOWED_UP not in types


def requests_feedback(reference: str) -> Feedback:
    """The answer the hook recorded with hook-3, as another channel would report it again."""
    from intake.normalizer.reference import complaint_id

    return Feedback(reference=reference, survey_id="survey-1", channel="webhook", score=5, answer_id=str(complaint_id("webhook", "acme/hook-3")))


def _dummy_event() -> Any:
    return events.feedback_event(requests_feedback("C-7K3M-9QXA"), received_at=dt.datetime.now(dt.timezone.utc), topic="unused", source="urn:test")


async def _true(value: bool) -> bool:
    return value
