"""A complaint's whole two-way journey on each channel, through one real running gateway per test.

On every channel: the complaint comes in by the channel's own inbound path, in the complainant's language, and its
record is read off the real Kafka main topic; downstream's message, status change and survey request, produced to the
real outbound topic, reach the complainant once, on that channel, threaded or replied as the channel does, in their
language; a command redelivered with the same ``ce_id`` is not sent again; each command's outcome is on the main
topic; the complainant answers the survey on the channel and the answer is on the main topic; asking for the status
on the channel tells the complainant the latest status, and a stranger asking about the same reference hears what a
reference that does not exist gets.

Real parts: the Kafka broker, the gateway's listeners (SMTP, HTTP), the capturing SMTP relay, the Bot API stand-in
driven by python-telegram-bot, the Twilio REST stand-in driven by the twilio client, and a partner's callback endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from intake import events, texts
from intake.gateway import Gateway
from intake.normalizer.reference import reference_for
from intake.requests import STATUS_REQUESTED
from intake.twoway import REPLYABLE, Survey
from tests.support.gateway import PARTNER, SECRET, complaint_body, free_port, post_complaint, running
from tests.support.mail import CUSTOMER, complaint_mail, email_settings, smtp_send
from tests.support.smtp_relay import Captured, CapturingRelay
from tests.support.telegram_api import TOKEN, Sent, TelegramApi, keyboard, message, user
from tests.support.topic import Record
from tests.support.twilio_api import TwilioApi
from tests.support.web_form import FormClient, Page, valid_fields
from tests.test_outbound import command, produce
from tests.test_outbound_channels import CALLBACK_SECRET, PartnerEndpoint, partner_endpoint
from tests.test_telegram import SECRET as TELEGRAM_SECRET
from tests.test_telegram import post_update
from tests.test_twilio import ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, OUR_WHATSAPP, inbound_sms, inbound_whatsapp, messages
from tests.test_twilio import post as post_twilio

# RetryAfter's own constructor reads its deprecated int-valued retry_after (PTB 22.2+); nothing of ours to change.
pytestmark = pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:telegram.warnings.PTBDeprecationWarning")

WAIT = 30  # seconds: the bound on every wait for something to arrive
SETTLE = 1.0  # seconds after a later command was delivered, for a duplicate sent late to show
DEFAULT_FROM = "+48732100999"
# A reference of the right shape that no complaint has: what a stranger's answer is compared with.
NOWHERE = reference_for("webhook", "acme/never-sent")

# Downstream's words, in the complainant's language; the gateway wraps them in its own sentences in that language.
TEAM = {
    "pl": {
        "message": "Kurier odbierze uszkodzoną paczkę jutro między 9 a 12.",
        "status": "Zwrot pieniędzy został zlecony.",
        "later": "Zwrot zaksięgowano na Pani koncie.",
    },
    "de": {
        "message": "Ein Kurier holt das beschädigte Paket morgen zwischen 9 und 12 Uhr ab.",
        "status": "Die Erstattung ist beauftragt.",
        "later": "Die Erstattung ist auf Ihrem Konto eingegangen.",
    },
}
IDS = {"message": "journey-message", "status": "journey-status", "survey": "journey-survey", "later": "journey-later"}


# --- the main topic, as a consumer reads it ---------------------------------------------------------------------


class MainTopic:
    """Every record on the main topic from its start, read as it comes, for as long as the journey lasts."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
        )
        self._reader: asyncio.Task[None] | None = None
        self.records: list[Record] = []

    async def __aenter__(self) -> MainTopic:
        await self._consumer.start()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._consumer.stop()

    async def _read(self) -> None:
        # The gateway creates the topic as it starts: read from its beginning once it is there.
        while self._topic not in await self._consumer.topics():
            await asyncio.sleep(0.1)
        self._consumer.subscribe([self._topic])
        while True:
            for batch in (await self._consumer.getmany(timeout_ms=200)).values():
                for m in batch:
                    headers = {name: value.decode() for name, value in m.headers}
                    self.records.append(Record(m.key.decode() if m.key else "", m.value, headers, m.partition, m.offset))

    def of(self, ce_type: str, **data: Any) -> list[Record]:
        typed = [r for r in self.records if r.headers.get("ce_type") == ce_type]
        return [r for r in typed if all(r.data.get(name) == value for name, value in data.items())]

    async def wait(self, ce_type: str, count: int = 1, **data: Any) -> list[Record]:
        """At least ``count`` records of ``ce_type`` whose data have these values."""

        def seen() -> bool:
            assert self._reader is not None
            if self._reader.done():
                self._reader.result()  # the reader's failure, if it failed
            return len(self.of(ce_type, **data)) >= count

        try:
            await eventually(seen, f"{count} × {ce_type} {data}")
        except TimeoutError as late:
            raise TimeoutError(f"{late}; on the topic: {[r.headers.get('ce_type') for r in self.records]}") from None
        return self.of(ce_type, **data)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen within {timeout} s: {what}")
        await asyncio.sleep(0.05)


# --- one gateway with every channel, and the stand-ins of the world around it ----------------------------------------


@dataclass
class Journey:
    gateway: Gateway
    base: str
    http: aiohttp.ClientSession
    bootstrap: str
    outbound_topic: str
    smtp_port: int
    relay: CapturingRelay
    telegram: TelegramApi
    twilio: TwilioApi
    partner: PartnerEndpoint
    main: MainTopic
    keys: list[str] = field(default_factory=list)

    async def complaint(self, channel: str) -> Record:
        """The complaint's record on the main topic: its key is the reference."""
        [record] = await self.main.wait(events.COMPLAINT_RECEIVED, channel=channel)
        assert record.key == record.data["reference"]
        return record

    async def commands(self, *records: tuple[bytes, bytes, list[tuple[str, bytes]]]) -> None:
        await produce(self.bootstrap, self.outbound_topic, list(records))

    def key(self) -> str:
        """A new Idempotency-Key for a partner's request."""
        self.keys.append(f"journey-{len(self.keys)}")
        return self.keys[-1]


@contextlib.asynccontextmanager
async def journey(tmp_path: Path, kafka: Any, topic: str, relay: CapturingRelay) -> AsyncIterator[Journey]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        TelegramApi() as telegram,
        TwilioApi(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as twilio,
        partner_endpoint() as partner,
        aiohttp.ClientSession() as http,
    ):
        config = email_settings(
            tmp_path, kafka.bootstrap, topic, relay,
            # The public base URL is the gateway's own: survey links open here, and Twilio signs what it calls.
            http={"port": port, "public_base_url": base},
            telegram={
                "enabled": True, "token": TOKEN, "api_url": telegram.url, "mode": "webhook", "webhook_secret": TELEGRAM_SECRET,
                "request_timeout_seconds": 5, "retry_initial_seconds": 0.2,
            },
            twilio={
                "enabled": True, "auth_tokens": [AUTH_TOKEN], "account_sid": ACCOUNT_SID, "api_base_url": twilio.url,
                "default_from": DEFAULT_FROM, "whatsapp_from": OUR_WHATSAPP.removeprefix("whatsapp:"),
                "request_timeout_seconds": 5,
            },
            webhook={
                "partners": {PARTNER: {"secrets": [SECRET], "callback_url": partner.url, "callback_secrets": [CALLBACK_SECRET]}},
            },
            web_form={"enabled": True},
            outbound={"retry_first_seconds": 0.1, "retry_max_seconds": 0.5},
        )  # fmt: skip
        async with running(config) as (gateway, served), MainTopic(kafka.bootstrap, topic) as main:
            assert served == base
            assert {"email", "telegram", "sms", "whatsapp", "webhook"} <= set(gateway.outbound_senders)
            yield Journey(
                gateway, base, http, kafka.bootstrap, config.kafka.outbound_topic, config.email.smtp.port,
                relay, telegram, twilio, partner, main,
            )  # fmt: skip


# --- what downstream sends, and what the complainant is to read ---------------------------------------------------------


def composed(
    reference: str, locale: str, *, own: str, via: str, links: dict[int, str] | None = None
) -> dict[str, texts.Acknowledgement]:
    """The texts each command becomes for a complaint made on ``own`` and answered on ``via``, by kind."""
    words = TEAM[locale]
    replyable = own in REPLYABLE and via in REPLYABLE
    made = {
        "message": texts.compose_message(reference, words["message"], locale, replyable=replyable),
        "status": texts.compose_status(reference, "in_progress", locale, text=words["status"]),
        "survey": texts.compose_survey(reference, Survey(IDS["survey"], links=links or {}), locale, channel=via),
        "later": texts.compose_message(reference, words["later"], locale, replyable=replyable),
    }
    english = texts.compose_status(reference, "in_progress", "en", text=words["status"])
    assert made["status"].text != english.text, "the expected texts must be in the complainant's language, not English"
    return made


def the_commands(reference: str, locale: str) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    words = TEAM[locale]
    return [
        command("message", reference, text=words["message"], ce_id=IDS["message"]),
        command("status", reference, status="in_progress", text=words["status"], ce_id=IDS["status"]),
        command("survey", reference, ce_id=IDS["survey"]),
    ]


async def deliver_commands(
    j: Journey, reference: str, locale: str, outbox: Callable[[], list[str]], expected: dict[str, str], *, own: str, via: str
) -> None:
    """A message, a status and a survey each reach the complainant once, in the order sent; the message
    redelivered under its ``ce_id`` is not sent again; every command's outcome is on the main topic, once.

    ``outbox`` lists what reached the complainant on the channel so far, as they read it; ``expected`` says what
    each command must read as, by kind; ``own`` is the complaint's channel, ``via`` the one its answers go out on."""
    await j.commands(*the_commands(reference, locale))
    for kind in ("message", "status", "survey"):
        await j.main.wait(events.REPLY_DELIVERED, command_id=IDS[kind])
    read = outbox()
    for kind in ("message", "status", "survey"):
        assert read.count(expected[kind]) == 1, (kind, expected[kind], read)
    positions = [read.index(expected[kind]) for kind in ("message", "status", "survey")]
    assert positions == sorted(positions), "not delivered in the order downstream sent them"
    # The message again, as a producer retrying would send it, then a later one: they are consumed in that order
    # (one key, one partition), so once the later one is out, the redelivery has been seen.
    again = command("message", reference, text=TEAM[locale]["message"], ce_id=IDS["message"])
    await j.commands(again, command("message", reference, text=TEAM[locale]["later"], ce_id=IDS["later"]))
    await j.main.wait(events.REPLY_DELIVERED, command_id=IDS["later"])
    await asyncio.sleep(SETTLE)
    read = outbox()
    assert read.count(expected["message"]) == 1, "the redelivered command was sent again"
    assert read.count(expected["later"]) == 1
    delivered = j.main.of(events.REPLY_DELIVERED)
    assert sorted(r.data["command_id"] for r in delivered) == sorted(IDS.values())
    assert {(r.key, r.data["channel"], r.data["route_channel"]) for r in delivered} == {(reference, via, own)}
    assert j.main.of(events.REPLY_FAILED) == []


async def status_told_only_to_its_holder(
    j: Journey, reference: str, locale: str, ask: Callable[[str, bool], Awaitable[str]], *, short: bool, channel: str
) -> None:
    """Asked "status <reference>" on the channel, the complainant gets the latest status; anyone else gets the words
    a reference that does not exist gets. ``ask(text, stranger)`` sends it on the channel and returns the answer."""
    latest = texts.compose_status(reference, "in_progress", locale, text=TEAM[locale]["status"])
    answer = await ask(f"status {reference}", False)
    assert answer == (latest.short if short else latest.text)
    not_theirs = await ask(f"status {reference}", True)
    missing = await ask(f"status {NOWHERE}", True)
    assert not_theirs == missing
    assert reference not in not_theirs and TEAM[locale]["status"] not in not_theirs
    requested = await j.main.wait(STATUS_REQUESTED, 3)
    # Two references, which may sit on two partitions: compared whatever order they were read in.
    assert sorted((r.data["reference"], r.data["known"], r.data["channel"]) for r in requested) == sorted(
        [(reference, True, channel), (reference, False, channel), (NOWHERE, False, channel)]
    )
    # Asking is never a complaint.
    assert len(j.main.of(events.COMPLAINT_RECEIVED)) == 1


async def feedback(j: Journey, reference: str, channel: str, score: int) -> Record:
    """The survey's answer on the main topic, once, with its score and the channel it came on."""
    [answer] = await j.main.wait(events.FEEDBACK_RECEIVED, reference=reference)
    assert (answer.data["survey_id"], answer.data["channel"], answer.data["score"]) == (IDS["survey"], channel, score)
    assert answer.key == reference
    return answer


# --- email ---------------------------------------------------------------------------------------------------------

THEIR_ID = "<journey-1@customer.test>"
STRANGER_ADDRESS = "jan.kowalski@elsewhere.test"
SURVEY_LINK = re.compile(r"^https?://\S+/survey/\S+$", re.MULTILINE)


def plain(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n").strip()


def as_read(captured: Captured) -> str:
    """A mail's text as the complainant reads it, its signed survey links (new each time) written as <link>."""
    return SURVEY_LINK.sub("<link>", plain(captured.message))


def survey_links(mail: EmailMessage) -> dict[int, str]:
    """The survey's links by score, as the mail lists them (each link on the line after its score)."""
    lines = plain(mail).splitlines()
    return {int(lines[n - 1].split()[0]): line for n, line in enumerate(lines) if SURVEY_LINK.fullmatch(line)}


async def answer_by_link(j: Journey, mail: EmailMessage, score: int, **more: str) -> Page:
    """The customer opens the link of ``score`` and sends the page that opens."""
    link = survey_links(mail)[score]
    assert link.startswith(j.base)
    async with j.http.get(link) as opened:
        page = Page(await opened.text())
    assert opened.status == 200 and "checked" in page.by_id(f"score-{score}").attrs
    async with j.http.post(link, data={"score": str(score), **more}) as sent:
        assert sent.status == 200
        return Page(await sent.text())


async def test_an_email_complaint_is_answered_once_in_its_thread_in_polish_surveyed_by_link_and_only_its_sender_told_its_status(
    tmp_path: Path, kafka, topic, relay: CapturingRelay
):
    async with journey(tmp_path, kafka, topic, relay) as j:
        await smtp_send(j.smtp_port, complaint_mail(message_id=THEIR_ID))
        record = await j.complaint("email")
        reference = record.key
        [acknowledgement] = await relay.wait_for(1)
        assert f"[{reference}]" in acknowledgement.message["Subject"]

        def to_customer() -> list[Captured]:
            return [m for m in relay.messages if m.recipients == [CUSTOMER]]

        links = {score: "<link>" for score in range(1, 6)}
        expected = {kind: text.text for kind, text in composed(reference, "pl", own="email", via="email", links=links).items()}
        def read_by_customer() -> list[str]:
            return [as_read(m) for m in to_customer()]

        await deliver_commands(j, reference, "pl", read_by_customer, expected, own="email", via="email")
        answers = [m for m in to_customer() if as_read(m) in expected.values()]
        assert len(answers) == 4
        for captured in answers:
            mail = captured.message
            assert mail["In-Reply-To"] == THEIR_ID and THEIR_ID in mail["References"].split()
            assert f"[{reference}]" in mail["Subject"] and mail["Content-Language"] == "pl"
            assert mail["To"] == CUSTOMER
        [survey] = [m.message for m in answers if as_read(m) == expected["survey"]]

        # The survey, answered on the page its link opens.
        page = await answer_by_link(j, survey, 5, nps="9", comment="Szybko i uprzejmie.")
        assert page.root.attrs["lang"] == "pl"
        answer = await feedback(j, reference, "email", 5)
        assert (answer.data["nps"], answer.data["comment"]) == (9, "Szybko i uprzejmie.")

        async def ask(text: str, stranger: bool) -> str:
            sender = STRANGER_ADDRESS if stranger else CUSTOMER
            before = len([m for m in relay.messages if m.recipients == [sender]])
            await smtp_send(j.smtp_port, complaint_mail(text, subject="Status", sender=sender), mail_from=sender)
            await eventually(lambda: len([m for m in relay.messages if m.recipients == [sender]]) > before, "the answer by mail")
            [answered] = [m for m in relay.messages if m.recipients == [sender]][before:]
            return plain(answered.message)

        await status_told_only_to_its_holder(j, reference, "pl", ask, short=False, channel="email")


# --- Telegram ------------------------------------------------------------------------------------------------------

CHAT = 5550301
STRANGER_CHAT = 5550399


async def test_a_telegram_complaint_is_answered_once_in_its_chat_in_german_surveyed_by_buttons_and_only_its_chat_told_its_status(
    tmp_path: Path, kafka, topic, relay: CapturingRelay
):
    async with journey(tmp_path, kafka, topic, relay) as j:
        customer = user(CHAT, first_name="Eva", last_name="Schmidt", language_code="de")
        complaint = message(customer, 41, text="Mein Paket kam beschädigt an.")
        update = {"update_id": j.telegram.next_update_id(), "message": complaint}
        assert await post_update(j.http, j.base, update) == 200
        reference = (await j.complaint("telegram")).key
        [acknowledgement] = await j.telegram.wait_sent(1)
        assert acknowledgement.chat_id == CHAT and reference in acknowledgement.text

        def in_chat() -> list[Sent]:
            return [s for s in j.telegram.sent if s.chat_id == CHAT]

        expected = {kind: text.short for kind, text in composed(reference, "de", own="telegram", via="telegram").items()}
        await deliver_commands(j, reference, "de", lambda: [s.text for s in in_chat()], expected, own="telegram", via="telegram")
        answers = [s for s in in_chat() if s.text in expected.values()]
        assert len(answers) == 4
        for sent in answers:  # each a reply to the complaint's message, in its chat
            assert sent.reply_parameters is not None and sent.reply_parameters["message_id"] == 41
        [survey] = [s for s in answers if s.text == expected["survey"]]
        assert [label for label, _ in survey.buttons()[0]] == ["1", "2", "3", "4", "5"]
        assert all(s.reply_markup is None for s in answers if s is not survey)

        # The survey, answered by pressing 4: Telegram posts the callback_query to the webhook.
        four = survey.buttons()[0][3][1]
        pressed = {"update_id": j.telegram.next_update_id(), "callback_query": j.telegram.callback_query(survey, four)}
        assert await post_update(j.http, j.base, pressed) == 200
        await feedback(j, reference, "telegram", 4)
        assert [a.text for a in j.telegram.answered] == [texts.compose_feedback_thanks("de").short]
        await eventually(lambda: len(j.telegram.edited) == 1, "the NPS question")
        [nps] = j.telegram.edited
        assert (nps.chat_id, nps.message_id) == (CHAT, survey.message["message_id"])
        assert nps.text == texts.compose_survey_nps("de").short
        assert [label for row in keyboard(nps.reply_markup)[:2] for label, _ in row] == [str(n) for n in range(11)]

        message_ids = iter(range(50, 60))

        async def ask(text: str, stranger: bool) -> str:
            chat = STRANGER_CHAT if stranger else CHAT
            sender = user(chat, first_name="Jan", last_name="Fremd", language_code="de") if stranger else customer
            before = len(j.telegram.sent)
            asked = {"update_id": j.telegram.next_update_id(), "message": message(sender, next(message_ids), text=text)}
            assert await post_update(j.http, j.base, asked) == 200
            [answered] = (await j.telegram.wait_sent(before + 1))[before:]
            assert answered.chat_id == chat and answered.reply_parameters["message_id"] == asked["message"]["message_id"]
            return answered.text

        await status_told_only_to_its_holder(j, reference, "de", ask, short=True, channel="telegram")


# --- SMS and WhatsApp ------------------------------------------------------------------------------------------------

PHONE = "+48601234567"
STRANGER_PHONE = "+48512987654"
WA_ID = "4915112345678"
STRANGER_WA_ID = "4917698765432"


def twiml_text(twiml: str) -> str:
    [answer] = messages(twiml)
    return answer.text or ""


async def twilio_post(j: Journey, params: list[tuple[str, str]]) -> str:
    """Twilio calling the gateway's webhook, signed over the URL it calls; the TwiML it gets back."""
    status, twiml = await post_twilio(j.http, j.base, params, signed_url=f"{j.base}/twilio/messages")
    assert status == 200, twiml
    return twiml


async def test_an_sms_complaint_is_answered_once_by_sms_in_polish_surveyed_by_a_reply_and_only_its_number_told_its_status(
    tmp_path: Path, kafka, topic, relay: CapturingRelay
):
    async with journey(tmp_path, kafka, topic, relay) as j:
        twiml = await twilio_post(j, inbound_sms("Paczka przyszła rozbita, proszę o zwrot pieniędzy.", sender=PHONE))
        reference = (await j.complaint("sms")).key
        assert reference in twiml_text(twiml)  # the acknowledgement, in the webhook's own answer

        def texted() -> list[str]:
            assert all(s.from_ == OUR_NUMBER for s in j.twilio.sent if s.to == PHONE)  # from the number they wrote to
            return [s.body or "" for s in j.twilio.sent if s.to == PHONE]

        expected = {kind: text.short for kind, text in composed(reference, "pl", own="sms", via="sms").items()}
        await deliver_commands(j, reference, "pl", texted, expected, own="sms", via="sms")
        assert len(j.twilio.sent) == 4 and all(r.credentials == (ACCOUNT_SID, AUTH_TOKEN) for r in j.twilio.received)

        async def ask(text: str, stranger: bool) -> str:
            return twiml_text(await twilio_post(j, inbound_sms(text, sender=STRANGER_PHONE if stranger else PHONE)))

        await status_told_only_to_its_holder(j, reference, "pl", ask, short=True, channel="sms")

        # The survey, answered to the letter of its text: the score, then 0-10 and a comment.
        thanks = twiml_text(await twilio_post(j, inbound_sms("4 9 Szybko, dziękuję", sender=PHONE)))
        assert thanks == texts.compose_feedback_thanks("pl").short, "the score was not taken as the survey's answer"
        answer = await feedback(j, reference, "sms", 4)
        assert (answer.data["nps"], answer.data["comment"]) == (9, "Szybko, dziękuję")
        assert len(j.main.of(events.COMPLAINT_RECEIVED)) == 1


async def test_a_whatsapp_complaint_is_answered_once_in_german_surveyed_by_a_reply_and_only_its_number_told_its_status(
    tmp_path: Path, kafka, topic, relay: CapturingRelay
):
    async with journey(tmp_path, kafka, topic, relay) as j:
        complaint = inbound_whatsapp("Mein Paket kam beschädigt an, ich bitte um Erstattung.", wa_id=WA_ID, profile_name="Eva")
        twiml = await twilio_post(j, complaint)
        reference = (await j.complaint("whatsapp")).key
        assert reference in twiml_text(twiml)

        def on_whatsapp() -> list[str]:
            assert all(s.from_ == OUR_WHATSAPP for s in j.twilio.sent if s.to == f"whatsapp:+{WA_ID}")
            return [s.body or "" for s in j.twilio.sent if s.to == f"whatsapp:+{WA_ID}"]

        expected = {kind: text.short for kind, text in composed(reference, "de", own="whatsapp", via="whatsapp").items()}
        await deliver_commands(j, reference, "de", on_whatsapp, expected, own="whatsapp", via="whatsapp")
        assert len(j.twilio.sent) == 4

        async def ask(text: str, stranger: bool) -> str:
            wa_id = STRANGER_WA_ID if stranger else WA_ID
            name = "Jan" if stranger else "Eva"
            return twiml_text(await twilio_post(j, inbound_whatsapp(text, wa_id=wa_id, profile_name=name)))

        await status_told_only_to_its_holder(j, reference, "de", ask, short=True, channel="whatsapp")

        thanks = twiml_text(await twilio_post(j, inbound_whatsapp("5", wa_id=WA_ID, profile_name="Eva")))
        assert thanks == texts.compose_feedback_thanks("de").short, "the score was not taken as the survey's answer"
        await feedback(j, reference, "whatsapp", 5)
        assert len(j.main.of(events.COMPLAINT_RECEIVED)) == 1


# --- partner webhook -------------------------------------------------------------------------------------------------

CUSTOMER_ID = "cust-8841-ewa"


async def test_a_partners_complaint_is_answered_once_by_signed_callback_in_polish_surveyed_and_only_its_customer_told_its_status(
    tmp_path: Path, kafka, topic, relay: CapturingRelay
):
    async with journey(tmp_path, kafka, topic, relay) as j:
        customer = {"name": "Ewa Nowak", "customer_id": CUSTOMER_ID, "locale": "pl"}
        body = complaint_body("Paczka przyszła rozbita, proszę o zwrot pieniędzy.", complainant=customer)
        status, answer = await post_complaint(j.http, j.base, body, j.key())
        assert status == 202
        reference = (await j.complaint("webhook")).key
        assert answer["reference"] == reference

        expected = {kind: text.text for kind, text in composed(reference, "pl", own="webhook", via="webhook").items()}
        await deliver_commands(
            j, reference, "pl", lambda: [r["body"]["text"] for r in j.partner.received], expected, own="webhook", via="webhook"
        )
        calls = j.partner.received
        assert len(calls) == 4
        # Each signed with the partner's callback secret (verified as the partner verifies it), keyed by its command.
        assert all(call["verified"] and call["fresh"] for call in calls)
        assert sorted(call["key"] for call in calls) == sorted(IDS.values())
        for call in calls:
            sent = call["body"]
            assert (sent["reference"], sent["customer_id"], sent["locale"]) == (reference, CUSTOMER_ID, "pl")
            assert sent["command_id"] == call["key"]
        [survey] = [call["body"] for call in calls if call["body"]["kind"] == "survey"]
        assert survey["command_id"] == IDS["survey"]

        async def ask(text: str, stranger: bool) -> str:
            asker = {"customer_id": "cust-1207-jan", "locale": "pl"} if stranger else customer
            status, answer = await post_complaint(j.http, j.base, complaint_body(text, complainant=asker), j.key())
            assert status == 202
            return answer["acknowledgement"]["text"]

        await status_told_only_to_its_holder(j, reference, "pl", ask, short=False, channel="webhook")

        # The survey's answer: the partner posts its customer's score as a follow-up of the complaint.
        answer_body = complaint_body("5", follows_up=reference, complainant=customer)
        status, thanked = await post_complaint(j.http, j.base, answer_body, j.key())
        assert status == 202 and thanked["acknowledgement"]["text"] == texts.compose_feedback_thanks("pl").text
        await feedback(j, reference, "webhook", 5)


# --- web form ------------------------------------------------------------------------------------------------------

FORM_EMAIL = "eva.schmidt@example.com"


async def test_a_web_form_complaint_is_answered_once_by_email_in_german_surveyed_by_link_and_only_its_holder_shown_its_status(
    tmp_path: Path, kafka, topic, relay: CapturingRelay
):
    async with journey(tmp_path, kafka, topic, relay) as j, FormClient(j.base) as visitor:
        await visitor.open("?lang=de")
        fields = valid_fields(name="Eva Schmidt", email=FORM_EMAIL, description="Das Paket kam mit zerbrochenem Deckel an.")
        response, page = await visitor.send(fields, query="?lang=de")
        assert response.status == 200
        reference = (await j.complaint("web")).key
        assert page.by_id("reference").text == reference

        def to_them() -> list[Captured]:
            return [m for m in relay.messages if m.recipients == [FORM_EMAIL]]

        links = {score: "<link>" for score in range(1, 6)}
        expected = {kind: text.text for kind, text in composed(reference, "de", own="web", via="email", links=links).items()}
        await deliver_commands(j, reference, "de", lambda: [as_read(m) for m in to_them()], expected, own="web", via="email")
        answers = [m for m in to_them() if as_read(m) in expected.values()]
        assert len(answers) == 4
        for captured in answers:
            mail = captured.message
            assert f"[{reference}]" in mail["Subject"] and mail["Content-Language"] == "de"
            assert mail["In-Reply-To"] is None  # no mail of theirs to thread under
        [survey] = [m.message for m in answers if as_read(m) == expected["survey"]]

        await answer_by_link(j, survey, 4)
        await feedback(j, reference, "email", 4)

        async def look_up(typed: str, contact: str) -> tuple[int, str]:
            async with j.http.post(f"{j.base}/status?lang=de", data={"reference": typed, "contact": contact}) as answered:
                return answered.status, await answered.text()

        status, shown = await look_up(reference, FORM_EMAIL)
        latest = texts.compose_status(reference, "in_progress", "de", text=TEAM["de"]["status"])
        assert status == 200
        assert " ".join(latest.text.split()) in Page(shown).by_id("result").text
        not_theirs, missing = await look_up(reference, "jan@elsewhere.test"), await look_up(NOWHERE, "jan@elsewhere.test")
        assert not_theirs[0] == missing[0] == 200
        # The same page but for the reference typed, which it shows back.
        assert not_theirs[1].replace(reference, "REF") == missing[1].replace(NOWHERE, "REF")
        assert TEAM["de"]["status"] not in not_theirs[1]
