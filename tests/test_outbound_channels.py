"""Downstream's answers going out on email, Telegram and partner callbacks, and Telegram's survey buttons coming back.

Real parts: the capturing SMTP relay, the Bot API stand-in driven by python-telegram-bot,
and an aiohttp server of the test's own as the partner's callback endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from intake.channels.email import EmailLimitsConfig, RelayConfig
from intake.channels.email.reply import OutboundEmailSender
from intake.channels.telegram import SECRET_HEADER, TelegramChannel, TelegramConfig
from intake.channels.webhook import PartnerCallbackSender
from intake.attachments import AttachmentStore
from intake.config import AcknowledgementConfig, PartnerConfig, SpoolConfig, WebhookConfig
from intake.errors import Rejected, TemporaryFailure
from intake.metrics import Metrics
from intake.reception import Reception
from intake.spool import Event, Spool
from intake.i18n import translations
from intake.texts import compose_feedback_thanks, compose_message, compose_status, compose_survey, compose_survey_nps
from intake.twoway import Feedback, OutboundMessage, Route, StatusView, Survey
from intake.normalizer.email import reference_from_message_ids
from tests.support.gateway import free_port
from tests.support.smtp_relay import CapturingRelay
from tests.support.telegram_api import TOKEN, Sent, TelegramApi, keyboard, message, user

# RetryAfter's own constructor reads its deprecated int-valued retry_after (PTB 22.2+); nothing of ours to change.
pytestmark = pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:telegram.warnings.PTBDeprecationWarning")

REFERENCE = "C-7K3M-9QXA"
OTHER_REFERENCE = "C-4HQ2-W8NE"
COMMAND_ID = "5f0c7e52-3a1b-4d7e-9a51-0c2f9f3b6a11"
SURVEY_ID = "9b2d6a40-77e1-4c1e-8f4e-1d3c5a7b9e20"
CUSTOMER = "ewa.nowak@example.com"
THEIR_ID = "<CAF3kq=9xZ@mail.example.com>"
TG_SECRET = "tg-webhook-secret_0123456789"


# --- what downstream's commands become: built directly, as the delivery loop builds them ----------------------------


def email_route(**address: Any) -> Route:
    values: dict[str, Any] = {"to": CUSTOMER, "message_id": THEIR_ID, "references": ["<root-1@mail.example.com>"], "subject": "Broken parcel"}
    values.update(address)
    return Route(channel="email", address=values, locale="pl", last_inbound_at=time.time())


def telegram_route(chat_id: int, message_id: int = 41, *, locale: str = "pl") -> Route:
    return Route(channel="telegram", address={"chat_id": chat_id, "message_id": message_id}, locale=locale, last_inbound_at=time.time())


def partner_route(partner: str = "acme") -> Route:
    return Route(channel="webhook", address={"partner": partner, "customer_id": "cust-8841-ewa"}, locale="pl", last_inbound_at=time.time())


def team_message(route: Route, text: str = "We have sent a courier for the parcel.", *, via: str | None = None, **fields: Any) -> OutboundMessage:
    composed = compose_message(REFERENCE, text, route.locale)
    values: dict[str, Any] = {
        "command_id": COMMAND_ID,
        "reference": REFERENCE,
        "kind": "message",
        "via": via or route.channel,
        "route": route,
        "locale": composed.locale,
        "direction": composed.direction,
        "subject": composed.subject,
        "text": composed.text,
        "short": composed.short,
        "command": {"kind": "message", "reference": REFERENCE, "text": text},
    }
    values.update(fields)
    return OutboundMessage(**values)


def status_change(route: Route, *, via: str | None = None, command_id: str = "7d3e1f08-2b4c-4a6d-8e0f-a1b2c3d4e5f6") -> OutboundMessage:
    composed = compose_status(REFERENCE, "resolved", route.locale)
    return OutboundMessage(
        command_id=command_id, reference=REFERENCE, kind="status", via=via or route.channel, route=route, locale=composed.locale,
        direction=composed.direction, subject=composed.subject, text=composed.text, short=composed.short, status="resolved",
        command={"kind": "status", "reference": REFERENCE, "status": "resolved"},
    )  # fmt: skip


def survey_request(route: Route, survey: Survey, *, locale: str | None = None) -> OutboundMessage:
    composed = compose_survey(REFERENCE, survey, locale or route.locale, channel=route.channel)
    return OutboundMessage(
        command_id=survey.survey_id, reference=REFERENCE, kind="survey", via=route.channel, route=route, locale=composed.locale,
        direction=composed.direction, subject=composed.subject, text=composed.text, short=composed.short, survey=survey,
        command={"kind": "survey", "reference": REFERENCE},
    )  # fmt: skip


class MemoryConversations:
    """intake.twoway.Conversations kept in memory: routes and open surveys as a test sets them, answers as recorded.

    A survey stays open until its last question is answered: the CSAT answer, then the NPS one when it asks for it.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.surveys: dict[str, Survey] = {}
        self.answers: dict[tuple[str, str], tuple[Feedback, Event]] = {}

    async def route(self, reference: str) -> Route | None:
        return self.routes.get(reference)

    async def status(self, reference: str) -> StatusView | None:
        return None

    async def open_survey(self, reference: str) -> Survey | None:
        survey = self.surveys.get(reference)
        if survey is None:
            return None
        answered = {feedback.answer_id.rsplit(":", 1)[-1] for feedback, _ in self.answers.values() if feedback.survey_id == survey.survey_id}
        return None if "nps" in answered or ("csat" in answered and not survey.nps) else survey

    async def record_feedback(self, feedback: Feedback, event: Event) -> bool:
        key = (feedback.survey_id, feedback.answer_id)
        if key in self.answers:
            return False
        self.answers[key] = (feedback, event)
        return True

    @property
    def feedback(self) -> list[Feedback]:
        return [feedback for feedback, _ in self.answers.values()]


async def eventually(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


# --- email --------------------------------------------------------------------------------------------------------


def email_sender(relay: CapturingRelay, **limits: Any) -> OutboundEmailSender:
    return OutboundEmailSender(RelayConfig(**relay.config()), EmailLimitsConfig(**limits), organisation="ACME Water")


def html_part(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html",))
    assert part is not None, "no HTML alternative"
    return part.get_content()


async def test_a_team_message_is_threaded_under_the_complainants_mail(relay: CapturingRelay):
    sender = email_sender(relay)
    delivered = await sender.deliver(team_message(email_route(), attachment_urls=("https://files.example.com/label.pdf",)))
    [captured] = relay.messages
    mail = captured.message
    assert captured.recipients == [CUSTOMER]
    assert mail["To"] == CUSTOMER
    assert mail["In-Reply-To"] == THEIR_ID
    assert mail["References"].split() == ["<root-1@mail.example.com>", THEIR_ID]
    assert f"[{REFERENCE}]" in mail["Subject"]
    assert mail["Content-Language"] == "pl"
    # RFC 3834: a person's words carried by us, not an automatic reply; a bounce comes back to our mailbox.
    assert mail["Auto-Submitted"] == "no" and mail["X-Auto-Response-Suppress"] is None
    assert captured.mail_from == "complaints@example.test"
    body = mail.get_body(preferencelist=("plain",)).get_content()
    assert "We have sent a courier for the parcel." in body and "https://files.example.com/label.pdf" in body
    # Our Message-ID: what Delivered names, and what a reply to it is matched to its complaint by.
    assert delivered.provider_id == mail["Message-ID"]
    assert reference_from_message_ids([mail["Message-ID"]]) == REFERENCE


async def test_a_resend_of_a_command_carries_the_same_message_id(relay: CapturingRelay):
    sender = email_sender(relay)
    first = await sender.deliver(team_message(email_route()))
    again = await sender.deliver(team_message(email_route()))
    other = await sender.deliver(team_message(email_route(), command_id="0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b"))
    assert first.provider_id == again.provider_id != other.provider_id
    assert [m.message["Message-ID"] for m in relay.messages] == [first.provider_id, again.provider_id, other.provider_id]


async def test_a_long_thread_keeps_its_root_and_latest_references(relay: CapturingRelay):
    chain = [f"<m{n}@mail.example.com>" for n in range(30)]
    await email_sender(relay).deliver(team_message(email_route(references=chain)))
    references = relay.messages[0].message["References"].split()
    assert len(references) == 20
    assert references[0] == chain[0] and references[-1] == THEIR_ID and references[-2] == chain[-1]


async def test_a_status_for_a_web_form_complaint_goes_to_the_address_given_as_an_automatic_message(relay: CapturingRelay):
    route = Route(channel="web", address={}, locale="de", last_inbound_at=time.time(), contacts={"email": CUSTOMER, "preferred": "email"})
    sender = email_sender(relay)
    assert sender.can_deliver(route)
    await sender.deliver(status_change(route, via="email"))
    [captured] = relay.messages
    mail = captured.message
    assert captured.recipients == [CUSTOMER]
    assert mail["In-Reply-To"] is None and mail["References"] is None  # no mail of theirs to thread under
    assert f"[{REFERENCE}]" in mail["Subject"] and mail["Content-Language"] == "de"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["X-Auto-Response-Suppress"] == "All"
    assert captured.mail_from == ""  # the null sender of automatic mail (RFC 3834 §3.3)


async def test_a_survey_email_has_its_links_in_the_text_and_as_buttons_right_to_left(relay: CapturingRelay):
    links = {score: f"https://complaints.example.com/survey/{SURVEY_ID}/{score}?sig=ab{score}" for score in range(1, 6)}
    survey = Survey(survey_id=SURVEY_ID, links=links)
    await email_sender(relay).deliver(survey_request(email_route(), survey, locale="fa"))
    mail = relay.messages[0].message
    assert mail["Content-Language"] == "fa" and mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_body(preferencelist=("plain",)).get_content()
    page = html_part(mail)
    for score, url in links.items():
        assert url in text
        assert f'href="{url}"' in page and f">{score}</a>" in page
    assert 'lang="fa" dir="rtl"' in page and 'role="list"' in page


async def test_no_address_a_robot_address_or_a_refused_one_is_rejected(relay: CapturingRelay):
    sender = email_sender(relay)
    web_only = Route(channel="web", address={}, locale="en", last_inbound_at=time.time(), contacts={"phone": "+48601234567"})
    assert not sender.can_deliver(web_only)
    with pytest.raises(Rejected, match="no email address"):
        await sender.deliver(team_message(web_only, via="email"))
    with pytest.raises(Rejected, match="robot"):
        await sender.deliver(team_message(email_route(to="mailer-daemon@example.com")))
    relay.refuse.add(CUSTOMER)
    with pytest.raises(Rejected, match="550") as refused:
        await sender.deliver(team_message(email_route()))
    assert CUSTOMER not in str(refused.value)
    assert relay.messages == []


async def test_answers_are_not_held_back_by_the_acknowledgement_limits_but_by_a_ceiling_that_defers(relay: CapturingRelay):
    sender = email_sender(relay, acknowledgements_per_recipient=1, acknowledgements_per_domain=1, acknowledgements_total=1, outbound_total=3)
    for n in range(3):
        await sender.deliver(team_message(email_route(), command_id=f"command-{n}"))
    with pytest.raises(TemporaryFailure) as deferred:
        await sender.deliver(team_message(email_route(), command_id="command-3"))
    assert 0 < vars(deferred.value)["retry_after"] <= 600
    assert len(relay.messages) == 3


async def test_a_relay_outage_is_a_temporary_failure_and_frees_its_place(relay: CapturingRelay):
    sender = email_sender(relay, outbound_total=1)
    relay.stop()
    with pytest.raises(TemporaryFailure):
        await sender.deliver(team_message(email_route()))
    relay.start()
    await sender.deliver(team_message(email_route()))  # the failed attempt did not use up the window's one place
    assert len(relay.messages) == 1


# --- Telegram -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bot:
    api: TelegramApi
    channel: TelegramChannel
    conversations: MemoryConversations
    metrics: Metrics
    base: str | None  # the webhook's URL in webhook mode


@contextlib.asynccontextmanager
async def telegram_bot(tmp_path: Path, *, mode: str = "polling") -> AsyncIterator[Bot]:
    """The Telegram channel on a real spool, talking to the stand-in, recording answers in memory."""
    metrics = Metrics()
    conversations = MemoryConversations()
    spool = Spool.from_config(SpoolConfig(path=tmp_path / "spool.sqlite3"))
    await spool.open()
    reception = Reception(spool, metrics, topic="complaints", dead_letter_topic="complaints.dlq", source="urn:intake", acknowledgement=AcknowledgementConfig())
    async with TelegramApi() as api:
        config = TelegramConfig(
            enabled=True, token=TOKEN, api_url=api.url, mode=mode, webhook_secret=TG_SECRET, poll_timeout_seconds=1,
            retry_initial_seconds=0.2, request_timeout_seconds=5,
        )  # fmt: skip
        channel = TelegramChannel(
            config, reception, AttachmentStore(tmp_path / "attachments", max_bytes=1 << 20, max_count=5),
            conversations=conversations, metrics=metrics, topic="complaints", source="urn:intake",
        )  # fmt: skip
        runner = None
        base = None
        if mode == "webhook":
            app = web.Application()
            app.add_routes(channel.routes())
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            base = f"http://127.0.0.1:{port}"
        life = asyncio.create_task(channel.run())
        try:
            await eventually(lambda: channel.health() is None)
            yield Bot(api, channel, conversations, metrics, base)
        finally:
            await channel.stop()
            await asyncio.wait_for(life, 10)
            if runner is not None:
                await runner.cleanup()
            await spool.close()


async def survey_sent(bot: Bot, chat_id: int, *, nps: bool = True) -> Sent:
    """A complaint from ``chat_id`` the gateway knows, and its survey delivered there."""
    route = telegram_route(chat_id)
    bot.api._messages[(chat_id, 41)] = message(user(chat_id), 41, text="Paczka przyszła rozbita.")
    survey = Survey(survey_id=SURVEY_ID, nps=nps)
    bot.conversations.routes[REFERENCE] = route
    bot.conversations.surveys[REFERENCE] = survey
    await bot.channel.deliver(survey_request(route, survey))
    return bot.api.sent[-1]


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_message_is_a_reply_in_the_complainants_chat_with_its_attachments_as_links(tmp_path: Path):
    async with telegram_bot(tmp_path) as bot:
        route = telegram_route(5550101)  # the customer deleted their message: sent all the same
        delivered = await bot.channel.deliver(team_message(route, attachment_urls=("https://files.example.com/label.pdf",)))
    [sent] = bot.api.sent
    assert sent.chat_id == 5550101
    assert sent.reply_parameters == {"message_id": 41, "allow_sending_without_reply": True}
    assert sent.text.startswith("We have sent a courier for the parcel.") and REFERENCE in sent.text
    assert sent.text.endswith("\n\nhttps://files.example.com/label.pdf")
    assert sent.reply_markup is None
    assert delivered.provider_id == str(sent.message["message_id"])


async def test_a_survey_is_an_inline_keyboard_of_one_to_five_within_telegrams_limits(tmp_path: Path):
    async with telegram_bot(tmp_path) as bot:
        sent = await survey_sent(bot, 5550102)
    [row] = sent.buttons()
    assert [label for label, _ in row] == ["1", "2", "3", "4", "5"]
    datas = [data for _, data in row]
    assert len(set(datas)) == 5 and all(len(data.encode()) <= 64 for data in datas)
    assert all(REFERENCE in data for data in datas)
    assert REFERENCE in sent.text and "5" in sent.text  # the question in the complainant's language (pl), 1 to 5


async def test_a_press_is_answered_and_recorded_once_then_asks_for_nps(tmp_path: Path):
    async with telegram_bot(tmp_path) as bot:
        sent = await survey_sent(bot, 5550103)
        four = sent.buttons()[0][3][1]
        await bot.api.press(sent, four)
        await bot.api.press(sent, four)  # pressed twice before the keyboard changed
        await eventually(lambda: len(bot.api.answered) == 2)
        await eventually(lambda: bot.api.pending == 0)
        assert bot.api.allowed_updates is not None and "callback_query" in bot.api.allowed_updates
    [feedback] = bot.conversations.feedback
    assert (feedback.reference, feedback.survey_id, feedback.channel, feedback.score, feedback.nps) == (REFERENCE, SURVEY_ID, "telegram", 4, None)
    [(_, event)] = bot.conversations.answers.values()
    assert dict(event.headers)["ce_type"] == b"intake.feedback.received.v1"
    assert json.loads(event.value)["score"] == 4
    thanks = compose_feedback_thanks("pl").short
    assert [answer.text for answer in bot.api.answered] == [thanks, thanks]  # every press answered, so no spinner is left
    # The message became the NPS question, in the complainant's language, with 0 to 10 and "skip", once.
    [edit] = bot.api.edited
    assert (edit.chat_id, edit.message_id) == (5550103, sent.message["message_id"])
    assert edit.text == compose_survey_nps("pl").short
    rows = keyboard(edit.reply_markup)
    assert [label for row in rows[:2] for label, _ in row] == [str(n) for n in range(11)]
    assert len(rows[2]) == 1 and rows[2][0][1].endswith(":-")
    assert rows[2][0][0] == translations("pl").gettext("Skip") != "Skip"
    assert metric(bot.metrics, "intake_surveys_answered_total", channel="telegram") == 1
    assert metric(bot.metrics, "intake_csat_score_count", channel="telegram") == 1


async def test_the_nps_press_is_a_second_answer_and_closes_the_keyboard(tmp_path: Path):
    async with telegram_bot(tmp_path) as bot:
        sent = await survey_sent(bot, 5550104)
        await bot.api.press(sent, sent.buttons()[0][4][1])
        await eventually(lambda: len(bot.api.edited) == 1)
        nine = dict(keyboard(bot.api.edited[0].reply_markup)[1])["9"]
        await bot.api.press(sent, nine)
        await eventually(lambda: len(bot.api.edited) == 2)
    csat, nps = sorted(bot.conversations.feedback, key=lambda f: f.nps is not None)
    assert (csat.score, csat.nps, nps.score, nps.nps) == (5, None, None, 9)
    assert csat.answer_id != nps.answer_id and csat.survey_id == nps.survey_id == SURVEY_ID
    events = [event for _, event in bot.conversations.answers.values()]
    assert len({dict(event.headers)["ce_id"] for event in events}) == 2
    assert bot.api.edited[1].reply_markup is None  # nothing left to ask
    assert metric(bot.metrics, "intake_surveys_answered_total", channel="telegram") == 1
    assert metric(bot.metrics, "intake_nps_score_sum", channel="telegram") == 9


async def test_forged_stale_and_foreign_presses_are_answered_and_ignored(tmp_path: Path):
    async with telegram_bot(tmp_path) as bot:
        sent = await survey_sent(bot, 5550105)
        good = sent.buttons()[0][2][1]
        question, reference, tag, _ = good.split(":")
        bot.conversations.routes[OTHER_REFERENCE] = telegram_route(5550999)
        forged = [
            "give me a refund",  # not ours at all
            f"c:{reference}:{tag}:9",  # a score the question does not have
            f"c:{reference}:AAAAAAAAAAA:3",  # a survey that was never asked
            f"c:{OTHER_REFERENCE}:{tag}:3",  # someone else's complaint
            f"c:C-0000-0000:{tag}:3",  # a reference this gateway never received
        ]
        for data in forged:
            await bot.api.press(sent, data)
        await bot.api.press(sent, good, chat_id=5550106)  # the keyboard seen in another chat
        await eventually(lambda: len(bot.api.answered) == len(forged) + 1)
        await eventually(lambda: bot.api.pending == 0)
        assert bot.conversations.feedback == [] and bot.api.edited == []
        assert all(answer.text is None for answer in bot.api.answered)
        # The survey is answered later by its own chat, once; after that the same button is stale.
        await bot.api.press(sent, good)
        await eventually(lambda: len(bot.conversations.feedback) == 1)
        bot.conversations.surveys[REFERENCE] = Survey(survey_id=SURVEY_ID, nps=False)
        await bot.api.press(sent, f"n:{reference}:{tag}:7")  # an NPS press for a survey that does not ask it
        await eventually(lambda: bot.api.pending == 0)
    assert [f.score for f in bot.conversations.feedback] == [3]


async def test_a_press_through_the_webhook_is_recorded(tmp_path: Path):
    import aiohttp

    async with telegram_bot(tmp_path, mode="webhook") as bot, aiohttp.ClientSession() as http:
        sent = await survey_sent(bot, 5550107)
        update = {"update_id": bot.api.next_update_id(), "callback_query": bot.api.callback_query(sent, sent.buttons()[0][0][1])}
        for _ in range(2):  # Telegram delivering it again
            async with http.post(f"{bot.base}/telegram/webhook", json=update, headers={SECRET_HEADER: TG_SECRET}) as response:
                assert response.status == 200
    assert [f.score for f in bot.conversations.feedback] == [1]
    assert len(bot.api.answered) == 1  # the second answer of the same query is refused by Telegram, and that is fine


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ({"status": 403, "description": "Forbidden: bot was blocked by the user"}, Rejected),
        ({"status": 400, "description": "Bad Request: chat not found"}, Rejected),
        ({"status": 429, "description": "Too Many Requests: retry after 17", "retry_after": 17}, TemporaryFailure),
        ({"status": 500, "description": "Internal Server Error"}, TemporaryFailure),
        ({"status": 502, "description": "Bad Gateway"}, TemporaryFailure),
    ],
)
async def test_bot_api_errors_become_retry_or_give_up(tmp_path: Path, failure: dict[str, Any], expected: type[Exception]):
    async with telegram_bot(tmp_path) as bot:
        bot.api.fail("sendMessage", **failure)
        with pytest.raises(expected) as raised:
            await bot.channel.deliver(team_message(telegram_route(5550108)))
    if failure["status"] == 429:
        assert vars(raised.value)["retry_after"] == 17
    assert str(TOKEN) not in str(raised.value)


async def test_a_blocked_bot_and_an_unknown_chat_are_rejected_as_telegram_answers_them(tmp_path: Path):
    async with telegram_bot(tmp_path) as bot:
        bot.api.blocked.add(5550109)
        bot.api.unknown_chats.add(5550110)
        with pytest.raises(Rejected, match="blocked"):
            await bot.channel.deliver(team_message(telegram_route(5550109)))
        with pytest.raises(Rejected, match="(?i)chat not found"):
            await bot.channel.deliver(team_message(telegram_route(5550110)))
        with pytest.raises(Rejected, match="no Telegram chat"):
            await bot.channel.deliver(team_message(email_route(), via="telegram"))
    assert bot.api.sent == []


# --- partner callbacks ----------------------------------------------------------------------------------------------

CALLBACK_SECRET = "acme-callback-secret-0123456789"
PARTNER_SECRET = "s3cret-for-tests-only-0123456789"


@dataclasses.dataclass
class PartnerEndpoint:
    """The partner's side: verifies each callback with the callback secret as a partner would, answers as told."""

    answers: list[tuple[int, dict[str, str]]] = dataclasses.field(default_factory=list)
    received: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        stamp, key = request.headers["Intake-Timestamp"], request.headers["Idempotency-Key"]
        expected = "v2=" + hmac.new(CALLBACK_SECRET.encode(), f"{stamp}.{key}.".encode() + body, hashlib.sha256).hexdigest()
        self.received.append(
            {
                "verified": hmac.compare_digest(expected, request.headers["Intake-Signature"]),
                "fresh": abs(time.time() - int(stamp)) < 300,
                "key": key,
                "content_type": request.content_type,
                "body": json.loads(body),
            }
        )
        status, headers = self.answers.pop(0) if self.answers else (204, {})
        return web.Response(status=status, headers=headers)


@contextlib.asynccontextmanager
async def partner_endpoint() -> AsyncIterator[PartnerEndpoint]:
    endpoint = PartnerEndpoint()
    app = web.Application()
    app.router.add_post("/intake/callback", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    endpoint.url = f"http://127.0.0.1:{port}/intake/callback"
    try:
        yield endpoint
    finally:
        await runner.cleanup()


def callback_sender(url: str) -> PartnerCallbackSender:
    partners = {
        "acme": PartnerConfig(secrets=[PARTNER_SECRET], callback_url=url, callback_secrets=[CALLBACK_SECRET, "an-older-callback-secret-42"]),
        "quiet": PartnerConfig(secrets=[PARTNER_SECRET]),
    }
    return PartnerCallbackSender(WebhookConfig(partners=partners))


async def test_a_partner_callback_is_signed_with_its_own_secret_and_verifiable():
    async with partner_endpoint() as endpoint:
        sender = callback_sender(endpoint.url)
        assert sender.can_deliver(partner_route())
        message = team_message(partner_route(), status="in_progress")
        await sender.deliver(message)
    [received] = endpoint.received
    assert received["verified"] and received["fresh"]
    assert received["key"] == COMMAND_ID and received["content_type"] == "application/json"
    body = received["body"]
    assert body["command"] == message.command  # the command as downstream wrote it
    assert (body["reference"], body["kind"], body["status"], body["locale"], body["command_id"]) == (REFERENCE, "message", "in_progress", "pl", COMMAND_ID)
    assert body["text"] == message.text and body["customer_id"] == "cust-8841-ewa"


async def test_a_partner_without_a_callback_cannot_be_delivered_to():
    sender = callback_sender("https://partner.example.com/callback")
    assert not sender.can_deliver(partner_route("quiet"))
    assert not sender.can_deliver(partner_route("nobody"))
    with pytest.raises(Rejected, match="no callback_url"):
        await sender.deliver(team_message(partner_route("quiet")))


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (503, {"Retry-After": "120"}, TemporaryFailure, 120.0),
        (429, {}, TemporaryFailure, None),
        (408, {}, TemporaryFailure, None),
        (500, {}, TemporaryFailure, None),
        (400, {}, Rejected, None),
        (404, {}, Rejected, None),
        (302, {"Location": "https://elsewhere.example.com/"}, Rejected, None),
    ],
)
async def test_a_partners_answer_decides_between_retry_and_give_up(status: int, headers: dict[str, str], expected: type[Exception], retry_after: float | None):
    async with partner_endpoint() as endpoint:
        endpoint.answers.append((status, headers))
        with pytest.raises(expected, match=str(status)) as raised:
            await callback_sender(endpoint.url).deliver(team_message(partner_route()))
    assert len(endpoint.received) == 1
    if retry_after is not None:
        assert vars(raised.value)["retry_after"] == retry_after


async def test_an_unreachable_partner_is_a_temporary_failure():
    with pytest.raises(TemporaryFailure, match="unreachable"):
        await callback_sender(f"http://127.0.0.1:{free_port()}/intake/callback").deliver(team_message(partner_route()))


def test_a_callback_needs_its_own_long_secret_and_https():
    from pydantic import ValidationError

    for bad in (
        {"callback_url": "https://partner.example.com/cb"},  # no secret to sign with
        {"callback_url": "https://partner.example.com/cb", "callback_secrets": ["short"]},
        {"callback_url": "https://partner.example.com/cb", "callback_secrets": [PARTNER_SECRET]},  # the partner's own
        {"callback_url": "http://partner.example.com/cb", "callback_secrets": [CALLBACK_SECRET]},  # in clear
    ):
        with pytest.raises(ValidationError):
            PartnerConfig(secrets=[PARTNER_SECRET], **bad)
    assert PartnerConfig(secrets=[PARTNER_SECRET], callback_url="https://partner.example.com/cb", callback_secrets=[CALLBACK_SECRET])


async def test_no_address_chat_or_text_reaches_the_logs(tmp_path: Path, relay: CapturingRelay, caplog: pytest.LogCaptureFixture):
    import logging

    words = "Die Sendung wurde beschädigt zugestellt"
    with caplog.at_level(logging.DEBUG):
        await email_sender(relay).deliver(team_message(email_route(), words))
        async with telegram_bot(tmp_path) as bot:
            await bot.channel.deliver(team_message(telegram_route(5550111), words))
            sent = await survey_sent(bot, 5550112)
            await bot.api.press(sent, sent.buttons()[0][1][1])
            await eventually(lambda: len(bot.conversations.feedback) == 1)
        async with partner_endpoint() as endpoint:
            await callback_sender(endpoint.url).deliver(team_message(partner_route(), words))
    # mail.log is aiosmtpd in the test's own relay, the partner's side of the wire; everything else is the gateway's.
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records if record.name != "mail.log")
    assert caplog.records  # the deliveries and the answer were logged, by reference
    for secret in (CUSTOMER, words, "5550111", "5550112", CALLBACK_SECRET, TOKEN, "cust-8841-ewa"):
        assert secret not in logged
