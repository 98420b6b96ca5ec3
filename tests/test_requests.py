"""Status requests and survey answers among received messages, and the two-way texts in every language."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from intake import commands, texts
from intake.acknowledgement import gsm7_segments
from intake.config import AcknowledgementConfig, OutboundConfig
from intake.conversations import SharedConversations
from intake.delivery import Delivery
from intake.events import COMPLAINT_RECEIVED, FEEDBACK_RECEIVED
from intake.i18n import SUPPORTED
from intake.metrics import Metrics
from intake.reception import Outcome, Reception
from intake.requests import (
    MAX_COMMENT_CHARS,
    STATUS_REQUESTED,
    CustomerRequests,
    parse_status_request,
    parse_survey_answer,
)
from intake.spool import CommandIntake, Spool
from intake.twoway import STATUSES, Conversations, OutboundSender, Route, StatusView, Survey
from intake.normalizer import telegram as telegram_normalizer
from intake.normalizer import twilio as twilio_normalizer
from intake.normalizer import webhook as webhook_normalizer
from intake.normalizer.email import record as email_normalizer
from intake.normalizer.record import Complaint
from tests.support.conversations import MemoryConversations
from tests.support.gateway import complaint_body
from tests.support.telegram_api import BOT_ID, message, user
from tests.test_outbound import RecordingSender

REFERENCE = "C-7K3M-9QXA"
OTHER = "C-9QXA-7K3M"
LRI, PDI = "\u2066", "\u2069"
RECEIVED_AT = dt.datetime(2026, 12, 2, 9, 30, tzinfo=dt.timezone.utc)
CUSTOMER = "+48601234567"
STRANGER = "+48609876543"
OUR_NUMBER = "+15005550006"
SID = "SM0123456789abcdef0123456789abcdef"


def twilio_body(text: str, *, sender: str = CUSTOMER, sid: str = SID, whatsapp: bool = False) -> bytes:
    """An inbound SMS (or WhatsApp message) as Twilio posts it."""
    prefix = "whatsapp:" if whatsapp else ""
    params = {
        "MessageSid": sid,
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": prefix + sender,
        "To": prefix + OUR_NUMBER,
        "Body": text,
        "NumMedia": "0",
    }
    return urlencode(params).encode()


def sms(text: str, *, sender: str = CUSTOMER, sid: str = SID, whatsapp: bool = False) -> Complaint:
    """An inbound SMS (or WhatsApp message) through the real normaliser."""
    raw = twilio_body(text, sender=sender, sid=sid, whatsapp=whatsapp)
    return twilio_normalizer.to_complaint(raw, received_at=RECEIVED_AT, locales=SUPPORTED)


def telegram(text: str, *, user_id: int = 5550001, message_id: int = 77) -> Complaint:
    update = {"update_id": 900 + message_id, "message": message(user(user_id), message_id, text=text, date=1_700_000_000)}
    return telegram_normalizer.to_complaint(json.dumps(update).encode(), received_at=RECEIVED_AT, bot_id=BOT_ID)


def email(body: str, *, sender: str = "ewa@example.com", subject: str = f"Re: We have received your complaint [{REFERENCE}]",
          headers: str = "") -> Complaint:  # fmt: skip
    raw = (
        f"From: Ewa Nowak <{sender}>\r\nTo: complaints@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <reply-{abs(hash((body, sender, subject)))}@example.com>\r\nDate: Wed, 02 Dec 2026 09:30:00 +0000\r\n"
        f"{headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
    parsed = email_normalizer.parse(raw)
    return email_normalizer.to_complaint(parsed, raw, received_at=RECEIVED_AT, attachments=[], origin={})


def sms_route(locale: str = "pl", **contacts: str) -> Route:
    return Route(channel="sms", address={"to": CUSTOMER, "from": OUR_NUMBER}, locale=locale, last_inbound_at=time.time(), contacts=contacts)


def conversations(**routes: Route) -> MemoryConversations:
    return MemoryConversations(routes={REFERENCE: routes.get("route", sms_route())})


def requests(store: MemoryConversations) -> CustomerRequests:
    return CustomerRequests(store, topic="complaints", source="urn:intake:test", default_locale="en")


def event_data(interception) -> dict:
    [event] = interception.events
    return json.loads(event.value)


def header(event, name: str) -> str:
    return dict(event.headers)[name].decode()


# --- recognising a status request -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        (f"status {REFERENCE}", None),  # English, German and Polish alike
        (f"Status: {REFERENCE}", None),
        (f"STATUS {REFERENCE.lower()}", None),
        (f"estado {REFERENCE}", "es"),
        (f"¿Estado de {REFERENCE}?", "es"),
        (f"statut {REFERENCE}", "fr"),
        (f"État : {REFERENCE}", "fr"),
        (f"stan {REFERENCE}", "pl"),
        (f"Stan sprawy {REFERENCE}!", "pl"),
        (f"Sachstand {REFERENCE}", "de"),
        (f"وضعیت {REFERENCE}", "fa"),
        (f"وضعيت {LRI}{REFERENCE}{PDI}", "fa"),  # Arabic yeh, and the isolates of our own Persian text copied back
        (f"الحالة {REFERENCE}", "ar"),
        (f"状态 {REFERENCE}", "zh"),
        (f"状态：{REFERENCE}", "zh"),
        (f"狀態{REFERENCE}", "zh"),  # no space between Chinese and the reference
        (f"{REFERENCE} status", None),
        (f"  {REFERENCE}. ", None),  # the bare reference
        ("c-7k3m-9qxa", None),
    ],
)
def test_a_keyword_and_a_reference_in_every_language_is_a_status_request(text: str, language: str | None):
    request = parse_status_request(text)
    assert request is not None, text
    assert request.reference == REFERENCE
    assert request.language == language


@pytest.mark.parametrize("text", ["status", "Estado?", "وضعیت", "状态", "Stan."])
def test_the_bare_keyword_asks_about_no_reference_of_its_own(text: str):
    request = parse_status_request(text)
    assert request is not None and request.reference is None


@pytest.mark.parametrize(
    "text",
    [
        f"status of my refund {REFERENCE}",
        f"The parcel {REFERENCE} is still broken",
        f"status {REFERENCE} {OTHER}",
        "",
        "Where is my money?",
        "C-7K3M",
    ],
)
def test_anything_more_than_a_request_is_not_one(text: str):
    assert parse_status_request(text) is None


# --- answering it -------------------------------------------------------------------------------


async def test_the_holder_gets_the_status_in_the_language_of_the_complaint():
    store = conversations()
    store.statuses[REFERENCE] = StatusView(REFERENCE, "in_progress", "Kurier odbierze paczkę jutro.", updated_at=time.time())
    interception = await requests(store).intercept(sms(f"status {REFERENCE}"), None)
    assert interception is not None and interception.kind == "status" and interception.feedback is None
    assert interception.answer == texts.compose_status_answer(REFERENCE, store.statuses[REFERENCE], "pl")
    assert "jest w trakcie rozpatrywania" in interception.answer.short and "Kurier odbierze" in interception.answer.short
    assert event_data(interception)["known"] is True


async def test_a_complaint_without_a_status_command_is_received():
    interception = await requests(conversations()).intercept(sms(REFERENCE), None)
    assert interception is not None
    assert interception.answer == texts.compose_status_answer(REFERENCE, None, "pl")
    assert interception.answer.short.startswith("Otrzymaliśmy Państwa zgłoszenie")


async def test_someone_elses_reference_and_a_missing_one_get_the_same_words_after_the_same_lookups():
    store = conversations(route=sms_route(locale="de"))
    store.statuses[REFERENCE] = StatusView(REFERENCE, "resolved", None, updated_at=time.time())
    agent = requests(store)
    not_theirs = await agent.intercept(sms(f"status {REFERENCE}", sender=STRANGER), None)
    not_theirs_lookups, store.lookups = store.lookups, []
    missing = await agent.intercept(sms(f"status {OTHER}", sender=STRANGER), None)
    assert not_theirs is not None and missing is not None
    # Not even the language tells: the stranger's message (a Polish number) decides it, never the complaint's (German).
    assert not_theirs.answer == missing.answer == texts.compose_status_unknown("pl")
    assert not_theirs_lookups == store.lookups == ["route", "status"]
    assert event_data(not_theirs)["known"] is False and event_data(missing)["known"] is False


async def test_a_stranger_is_answered_in_the_language_of_their_keyword():
    interception = await requests(conversations()).intercept(sms(f"estado {REFERENCE}", sender=STRANGER), None)
    assert interception is not None and interception.answer == texts.compose_status_unknown("es")
    assert "No hemos encontrado" in interception.answer.short


async def test_a_contact_given_with_the_complaint_may_ask_too():
    store = conversations(route=sms_route(email="Ewa@Example.com"))
    interception = await requests(store).intercept(email(f"status {REFERENCE}", sender="ewa@example.COM", subject="Question"), None)
    assert interception is not None and event_data(interception)["known"] is True


async def test_telegram_holder_is_the_chat_the_complaint_came_from():
    route = Route(channel="telegram", address={"chat_id": 5550001, "message_id": 41}, locale="de", last_inbound_at=time.time())
    store = conversations(route=route)
    mine = await requests(store).intercept(telegram(f"Status {REFERENCE}"), None)
    theirs = await requests(store).intercept(telegram(f"Status {REFERENCE}", user_id=5550002), None)
    assert mine is not None and mine.answer == texts.compose_status_answer(REFERENCE, None, "de")
    assert theirs is not None and theirs.answer == texts.compose_status_unknown("pl")  # the stranger's Telegram language


async def test_whatsapp_holder_is_matched_without_the_prefix():
    route = Route(channel="whatsapp", address={"to": CUSTOMER, "from": OUR_NUMBER}, locale="fa", last_inbound_at=time.time())
    interception = await requests(conversations(route=route)).intercept(sms(f"وضعیت {REFERENCE}", whatsapp=True), None)
    assert interception is not None and event_data(interception)["known"] is True
    assert f"{LRI}{REFERENCE}{PDI}" in interception.answer.short


async def test_the_bare_keyword_in_a_reply_asks_about_the_complaint_it_answers():
    route = Route(channel="email", address={"to": "ewa@example.com", "message_id": "<a@x>", "references": [], "subject": "s"},
                  locale="en", last_inbound_at=time.time())  # fmt: skip
    complaint = email("Status?\n\n-- \nEwa Nowak\nSent from my phone")
    assert complaint.follows_up == REFERENCE  # found in the subject's tag
    interception = await requests(conversations(route=route)).intercept(complaint, route)
    assert interception is not None and interception.kind == "status"
    assert interception.answer.subject == f"Your complaint [{REFERENCE}]"
    assert event_data(interception)["reference"] == REFERENCE


async def test_the_bare_keyword_alone_in_a_new_message_is_a_complaint():
    assert await requests(conversations()).intercept(sms("status"), None) is None


async def test_an_ordinary_follow_up_is_not_intercepted():
    assert await requests(conversations()).intercept(sms(f"Still broken, see {REFERENCE}"), sms_route()) is None


async def test_a_robots_mail_is_never_a_request():
    complaint = email(f"status {REFERENCE}", headers="Auto-Submitted: auto-replied\r\n")
    assert complaint.flags.automated
    assert await requests(conversations()).intercept(complaint, None) is None


async def test_the_status_event_names_no_one_and_repeats_for_a_redelivery():
    agent = requests(conversations())
    first = await agent.intercept(sms(f"status {REFERENCE}"), None)
    again = await agent.intercept(sms(f"status {REFERENCE}"), None)
    other_message = await agent.intercept(sms(f"status {REFERENCE}", sid="SMffffffffffffffffffffffffffffffff"), None)
    assert first is not None and again is not None and other_message is not None
    [event] = first.events
    assert header(event, "ce_type") == STATUS_REQUESTED
    assert event.key == REFERENCE.encode()
    assert header(event, "ce_id") == header(again.events[0], "ce_id") != header(other_message.events[0], "ce_id")
    data = json.loads(event.value)
    assert data == {"reference": REFERENCE, "channel": "sms", "known": True, "received_at": "2026-12-02T09:30:00Z"}
    assert CUSTOMER.encode() not in event.value + b"".join(value for _, value in event.headers)


# --- survey answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score", "nps", "comment"),
    [
        ("4", 4, None, None),
        (" 5 ", 5, None, None),
        ("4 9", 4, 9, None),
        ("4 9 very quick, thanks", 4, 9, "very quick, thanks"),
        ("4, 10. Great service!", 4, 10, "Great service!"),
        ("4/5", 4, None, None),
        ("4/5 9/10 ok", 4, 9, "ok"),
        ("2 slow and unfriendly", 2, None, "slow and unfriendly"),
        ("٤", 4, None, None),  # Arabic-Indic digit
        ("۴", 4, None, None),  # Persian digit
        ("۵ ۱۰ عالی بود", 5, 10, "عالی بود"),
        ("٣ ٧", 3, 7, None),
        ("3 100 reasons to be annoyed", 3, None, "100 reasons to be annoyed"),  # 100 is no likelihood
    ],
)
def test_survey_answers_with_nps_and_comment(text: str, score: int, nps: int | None, comment: str | None):
    answer = parse_survey_answer(text)
    assert answer is not None, text
    assert (answer.score, answer.nps, answer.comment) == (score, nps, comment)


@pytest.mark.parametrize("text", ["0", "6", "10", "45", "4/10", "five", "Still no refund", "", "-4"])
def test_what_is_not_a_score_is_not_an_answer(text: str):
    assert parse_survey_answer(text) is None


def test_a_second_number_is_a_comment_when_nps_was_not_asked_and_comments_are_bounded():
    assert parse_survey_answer("4 9 fine", nps=False) == parse_survey_answer("4 9 fine", nps=False)
    answer = parse_survey_answer("4 9 fine", nps=False)
    assert answer is not None and (answer.nps, answer.comment) == (None, "9 fine")
    answer = parse_survey_answer("4 9 fine", comment=False)
    assert answer is not None and (answer.nps, answer.comment) == (9, None)
    answer = parse_survey_answer("5 " + "very good " * 500)
    assert answer is not None and answer.comment is not None and len(answer.comment) == MAX_COMMENT_CHARS


async def test_an_answer_to_an_open_survey_is_feedback_thanked_in_the_complaints_language():
    store = conversations()
    store.surveys[REFERENCE] = Survey(survey_id="cmd-survey-1")
    # A reply that names its complaint (an SMS quoting the reference, a mail in its thread): the whole answer counts.
    complaint = sms("4 9 very quick, thanks").model_copy(update={"follows_up": REFERENCE})
    interception = await requests(store).intercept(complaint, sms_route())
    assert interception is not None and interception.kind == "feedback"
    feedback = interception.feedback
    assert feedback is not None
    assert (feedback.reference, feedback.survey_id, feedback.channel) == (REFERENCE, "cmd-survey-1", "sms")
    assert (feedback.score, feedback.nps, feedback.comment) == (4, 9, "very quick, thanks")
    assert feedback.answer_id == str(complaint.id)
    [event] = interception.events
    assert header(event, "ce_type") == FEEDBACK_RECEIVED and event.key == REFERENCE.encode()
    assert json.loads(event.value)["score"] == 4
    assert interception.answer == texts.compose_feedback_thanks("pl")


async def test_a_score_from_someone_else_or_without_an_open_survey_is_a_message():
    store = conversations()
    stranger = sms("5", sender=STRANGER).model_copy(update={"follows_up": REFERENCE})
    holder = sms("5").model_copy(update={"follows_up": REFERENCE})
    assert await requests(store).intercept(holder, sms_route()) is None  # no survey asked
    store.surveys[REFERENCE] = Survey(survey_id="cmd-survey-2")
    assert await requests(store).intercept(stranger, None) is None
    assert await requests(store).intercept(holder.model_copy(update={"text": "Thanks, but it is still broken"}), sms_route()) is None


# --- a score that names no complaint: found by whom the survey was sent to --------------------------------------


@pytest.mark.parametrize(
    ("text", "nps", "comment", "expected"),
    [
        ("4", True, True, (4, None, None)),
        (" 5 \n", True, True, (5, None, None)),
        ("3.", False, False, (3, None, None)),
        ("5!", False, False, (5, None, None)),
        ("4/5", True, True, (4, None, None)),
        ("٤", True, True, (4, None, None)),
        ("۴", True, True, (4, None, None)),
        ("４", True, True, (4, None, None)),
        ("1 / 5", True, True, (1, None, None)),
        # What the survey's own text invites: "1-5, optionally followed by 0-10 ... and a comment".
        ("4 9", True, False, (4, 9, None)),
        ("4 9 very quick, thanks", True, True, (4, 9, "very quick, thanks")),
        ("2 the courier was rude", False, True, (2, None, "the courier was rude")),
    ],
)
async def test_a_reply_in_the_form_the_survey_asked_for_answers_it(text: str, nps: bool, comment: bool, expected: tuple):
    store = conversations(route=sms_route())
    store.surveys[REFERENCE] = Survey(survey_id="cmd-survey-5", nps=nps, comment=comment)
    store.asked_of[REFERENCE] = f"sms:{CUSTOMER}"
    interception = await requests(store).intercept(sms(text), None)
    assert interception is not None and interception.feedback is not None, text
    feedback = interception.feedback
    assert (feedback.score, feedback.nps, feedback.comment) == expected


@pytest.mark.parametrize(
    ("text", "nps", "comment"),
    [
        ("0", True, True), ("6", True, True), ("10", True, True), ("4?", True, True), ("4/10", True, True),
        ("-4", True, True), ("", True, True), ("five", True, True), ("4 stars", True, False),
        ("2 parcels still missing", True, False), ("4 9", False, False), ("4 9 quick", True, False),
    ],
)  # fmt: skip
async def test_more_than_the_survey_asked_for_is_a_message(text: str, nps: bool, comment: bool):
    store = conversations(route=sms_route())
    store.surveys[REFERENCE] = Survey(survey_id="cmd-survey-6", nps=nps, comment=comment)
    store.asked_of[REFERENCE] = f"sms:{CUSTOMER}"
    assert await requests(store).intercept(sms(text), None) is None, text


def telegram_route(chat_id: int = 5550001) -> Route:
    return Route(channel="telegram", address={"chat_id": chat_id, "message_id": 41}, locale="de", last_inbound_at=time.time())


def email_route() -> Route:
    address = {"to": "Ewa@Example.com", "message_id": "<c-1@example.com>"}
    return Route(channel="email", address=address, locale="fr", last_inbound_at=time.time())


@pytest.mark.parametrize(
    ("answer", "route", "asked_of", "locale"),
    [
        (lambda: sms("4"), sms_route(), f"sms:{CUSTOMER}", "pl"),
        (lambda: sms(" 4 ", whatsapp=True), sms_route("de"), f"whatsapp:{CUSTOMER}", "de"),
        (lambda: telegram("4"), telegram_route(), "telegram:5550001", "de"),  # typed instead of pressing a button
        (lambda: email("4", subject="Ankieta"), email_route(), "email:ewa@example.com", "fr"),  # a new mail, out of any thread
    ],
    ids=["sms", "whatsapp", "telegram", "email"],
)
async def test_a_bare_score_from_whom_the_survey_was_sent_to_is_its_answer(answer, route: Route, asked_of: str, locale: str):
    store = conversations(route=route)
    store.surveys[REFERENCE] = Survey(survey_id="cmd-survey-3")
    store.asked_of[REFERENCE] = asked_of
    complaint = answer()
    assert complaint.follows_up is None  # nothing in the message says which complaint it is about
    interception = await requests(store).intercept(complaint, None)
    assert interception is not None and interception.kind == "feedback", "the score was taken for a complaint"
    feedback = interception.feedback
    assert feedback is not None
    assert (feedback.reference, feedback.survey_id, feedback.channel) == (REFERENCE, "cmd-survey-3", complaint.channel)
    assert (feedback.score, feedback.nps, feedback.comment, feedback.answer_id) == (4, None, None, str(complaint.id))
    [event] = interception.events
    assert header(event, "ce_type") == FEEDBACK_RECEIVED and event.key == REFERENCE.encode()
    assert interception.answer == texts.compose_feedback_thanks(locale)


async def test_without_a_reference_more_than_a_score_or_a_score_from_elsewhere_is_a_message():
    store = conversations()
    store.surveys[REFERENCE] = Survey(survey_id="cmd-survey-4")
    store.asked_of[REFERENCE] = f"sms:{CUSTOMER}"
    assert await requests(store).intercept(sms("4"), None) is not None
    assert await requests(store).intercept(sms("4?"), None) is None
    assert await requests(store).intercept(sms("4", sender=STRANGER), None) is None
    assert await requests(store).intercept(sms("4", whatsapp=True), None) is None  # asked by SMS, not on WhatsApp
    store.asked_at[REFERENCE] = RECEIVED_AT.timestamp() - 31 * 24 * 3600
    assert await requests(store).intercept(sms("4"), None) is None  # asked more than 30 days ago: a "4" now is news
    store.asked_at[REFERENCE] = RECEIVED_AT.timestamp() - 29 * 24 * 3600
    assert await requests(store).intercept(sms("4"), None) is not None
    store.asked_of.clear()
    assert await requests(store).intercept(sms("4"), None) is None  # no survey sent to this number


# The gateway's reception on real spools, as one worker of ``intake serve --workers N`` runs it, without Kafka:
# what it publishes is read off its outbox.


@dataclass
class Worker:
    spool: Spool
    reception: Reception
    conversations: Conversations

    async def events(self, ce_type: str) -> list[dict]:
        stored = await self.spool.pending_events(0, 1000)
        return [json.loads(e.value) for e in stored if header(e, "ce_type") == ce_type]

    async def text(
        self, body: str, *, sid: str, sender: str = CUSTOMER, whatsapp: bool = False, at: dt.datetime | None = None
    ) -> Outcome:
        """An SMS (or WhatsApp message) taken in as the Twilio channel takes it in; now, unless ``at`` says when.

        Now by default: a WhatsApp survey is sent only within 24 hours of the customer's last message, by the clock."""
        at = at or dt.datetime.now(dt.timezone.utc)
        raw = twilio_body(body, sender=sender, sid=sid, whatsapp=whatsapp)
        return await self.reception.receive(
            channel="whatsapp" if whatsapp else "sms",
            channel_message_id=sid,
            raw=raw,
            normalize=lambda: twilio_normalizer.to_complaint(raw, received_at=at, locales=SUPPORTED),
            received_at=at,
            ack="inline",
            dead_letter_invalid=True,
            route={"to": sender, "from": OUR_NUMBER},
        )

    async def survey(self, reference: str, ce_id: str, senders: Mapping[str, OutboundSender]) -> None:
        """Downstream asks for a survey of ``reference``; delivered by this worker, which consumes the commands."""
        route = await self.conversations.route(reference)
        data = {"reference": reference, "nps": True, "comment": True}
        await self.spool.store_commands([CommandIntake(ce_id, reference, commands.SURVEY, data, route=route)])
        delivery = Delivery(
            self.spool, Metrics(), senders, OutboundConfig(), topic="complaints", source="urn:intake:test",
            conversations=self.conversations,
        )  # fmt: skip
        running = asyncio.create_task(delivery.run())
        try:
            for _ in range(200):
                if not await self.spool.due_commands(time.time()):
                    break
                await asyncio.sleep(0.02)
            else:
                raise TimeoutError("the survey was not delivered")
        finally:
            await delivery.stop()
            await running


@contextlib.asynccontextmanager
async def workers(tmp_path: Path, count: int = 1) -> AsyncIterator[list[Worker]]:
    spools = [Spool(tmp_path / f"spool-{index}.sqlite3") for index in range(count)]
    for spool in spools:
        await spool.open()
    made = []
    try:
        for spool in spools:
            others = [other.path for other in spools if other is not spool]
            shared: Conversations = SharedConversations(spool, others) if others else spool
            reception = Reception(
                spool, Metrics(), topic="complaints", dead_letter_topic="complaints.dlq", source="urn:intake:test",
                acknowledgement=AcknowledgementConfig(),
            )  # fmt: skip
            reception.conversations = shared
            reception.requests = CustomerRequests(shared, topic="complaints", source="urn:intake:test")
            made.append(Worker(spool, reception, shared))
        yield made
    finally:
        for worker in made:
            if isinstance(worker.conversations, SharedConversations):
                worker.conversations.close()
        for spool in spools:
            await spool.close()


THANKS_PL = texts.compose_feedback_thanks("pl").short


async def test_a_bare_sms_score_is_recorded_once_and_thanked_and_the_next_is_a_message_again(tmp_path: Path):
    sender = RecordingSender()
    async with workers(tmp_path) as [worker]:
        complaint = await worker.text("Paczka przyszła rozbita, proszę o zwrot pieniędzy.", sid="SM" + "1" * 32)
        reference = complaint.reference
        await worker.survey(reference, "cmd-sms-survey", {"sms": sender})
        assert [m.kind for m in sender.delivered] == ["survey"]

        answered_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
        answer = await worker.text("4", sid="SM" + "2" * 32, at=answered_at)
        assert answer.acknowledgement is not None and answer.acknowledgement["short"] == THANKS_PL
        route = await worker.spool.route(reference)
        assert route is not None and route.last_inbound_at == answered_at.timestamp()  # their latest message, as a reply's is
        again = await worker.text("4", sid="SM" + "2" * 32)  # Twilio's retry of the same message
        assert again.duplicate and again.acknowledgement == answer.acknowledgement
        [feedback] = await worker.events(FEEDBACK_RECEIVED)
        assert (feedback["reference"], feedback["survey_id"], feedback["channel"]) == (reference, "cmd-sms-survey", "sms")
        assert feedback["score"] == 4
        assert len(await worker.events(COMPLAINT_RECEIVED)) == 1

        # Its score given, the survey waits for no other: a later "5" is a message like any other.
        later = await worker.text("5", sid="SM" + "3" * 32)
        assert later.acknowledgement is not None and later.acknowledgement["short"] != THANKS_PL
        assert len(await worker.events(FEEDBACK_RECEIVED)) == 1


async def test_of_several_surveys_sent_to_one_number_the_newest_still_waiting_is_answered(tmp_path: Path):
    sender = RecordingSender()
    async with workers(tmp_path) as [worker]:
        first = (await worker.text("Paczka przyszła rozbita.", sid="SM" + "a" * 32)).reference
        second = (await worker.text("Druga paczka też nie dotarła.", sid="SM" + "b" * 32)).reference
        await worker.survey(first, "cmd-first", {"sms": sender})
        await worker.survey(second, "cmd-second", {"sms": sender})
        assert (await worker.text("5", sid="SM" + "c" * 32)).acknowledgement["short"] == THANKS_PL
        assert (await worker.text("2", sid="SM" + "d" * 32)).acknowledgement["short"] == THANKS_PL
        answers = [(f["reference"], f["survey_id"], f["score"]) for f in await worker.events(FEEDBACK_RECEIVED)]
    assert answers == [(second, "cmd-second", 5), (first, "cmd-first", 2)]


async def test_a_survey_sent_to_a_contact_is_answered_by_a_bare_score_from_that_contact(tmp_path: Path):
    # A partner's complaint, with no way back through the partner: the survey goes by SMS to the phone the complainant gave.
    sender = RecordingSender()
    async with workers(tmp_path) as [worker]:
        customer = {"customer_id": "c-1", "phone": "+48 601 234 567", "locale": "pl"}
        body = complaint_body("Paczka przyszła rozbita.", complainant=customer)
        at = RECEIVED_AT
        made = await worker.reception.receive(
            channel="webhook", channel_message_id="acme/k-1", raw=body, received_at=at, ack="inline",
            normalize=lambda: webhook_normalizer.to_complaint(body, partner="acme", idempotency_key="k-1", received_at=at),
            route={"partner": "acme"},
        )  # fmt: skip
        await worker.survey(made.reference, "cmd-contact", {"sms": sender})
        [asked] = sender.delivered
        assert (asked.via, asked.route.address) == ("sms", {"to": CUSTOMER})
        assert (await worker.text("3", sid="SM" + "e" * 32)).acknowledgement["short"] == THANKS_PL
        [feedback] = await worker.events(FEEDBACK_RECEIVED)
    assert (feedback["reference"], feedback["score"], feedback["channel"]) == (made.reference, 3, "sms")


async def test_a_survey_worker_0_asked_is_answered_through_worker_1_and_counted_once_when_redelivered_to_worker_0(tmp_path: Path):
    sender = RecordingSender()
    async with workers(tmp_path, 2) as [zero, one]:
        reference = (await one.text("Mein Paket kam beschädigt an.", sid="SM" + "f" * 32, whatsapp=True)).reference
        await zero.survey(reference, "cmd-across", {"whatsapp": sender})  # the commands are worker 0's
        assert await one.spool.route(reference) is not None and await zero.spool.route(reference) is not None

        answer = await one.text("5", sid="SM" + "9" * 32, whatsapp=True)
        thanks = texts.compose_feedback_thanks("de").short
        assert answer.acknowledgement is not None and answer.acknowledgement["short"] == thanks
        # Twilio retries on a timeout, and the kernel may hand the retry to the other worker.
        again = await zero.text("5", sid="SM" + "9" * 32, whatsapp=True)
        assert again.acknowledgement is not None and again.acknowledgement["short"] == thanks
        [feedback] = [*await one.events(FEEDBACK_RECEIVED), *await zero.events(FEEDBACK_RECEIVED)]
        assert (feedback["reference"], feedback["survey_id"], feedback["score"]) == (reference, "cmd-across", 5)
        assert len(await one.events(COMPLAINT_RECEIVED)) == 1 and await zero.events(COMPLAINT_RECEIVED) == []
        # Answered on worker 1, closed for a bare score on both.
        later = await zero.text("4", sid="SM" + "8" * 32, whatsapp=True)
        assert later.acknowledgement is not None and later.acknowledgement["short"] != thanks


# --- the texts ----------------------------------------------------------------------------------

SHORT_TEAM_TEXT = "Refund sent today."


def _all_texts(locale: str) -> list[tuple[str, texts.Acknowledgement]]:
    composed = [(f"status {status}", texts.compose_status(REFERENCE, status, locale, text=SHORT_TEAM_TEXT)) for status in STATUSES]
    composed += [
        ("message", texts.compose_message(REFERENCE, SHORT_TEAM_TEXT, locale)),
        ("unknown", texts.compose_status_unknown(locale)),
        ("thanks", texts.compose_feedback_thanks(locale)),
        ("nps", texts.compose_survey_nps(locale)),
        ("comment", texts.compose_survey_comment(locale)),
    ]
    links = {score: f"https://complaints.example.com/survey/token?score={score}" for score in range(1, 6)}
    for nps in (True, False):
        for comment in (True, False):
            for channel in ("sms", "whatsapp", "telegram", "email"):
                survey = Survey("s", nps=nps, comment=comment, links=links if channel == "email" else {})
                composed.append((f"survey {channel} {nps} {comment}", texts.compose_survey(REFERENCE, survey, locale, channel=channel)))
    return composed


@pytest.mark.parametrize("locale", SUPPORTED)
def test_every_short_text_fits_two_sms_segments(locale: str):
    for name, composed in _all_texts(locale):
        assert gsm7_segments(composed.short) <= 2, (locale, name, len(composed.short), composed.short)


@pytest.mark.parametrize("locale", SUPPORTED)
def test_texts_are_translated_with_the_reference_verbatim_and_isolated_in_rtl(locale: str):
    english = dict(_all_texts("en"))
    for name, composed in _all_texts(locale):
        assert composed.locale == locale and "{" not in composed.text + composed.subject
        if locale != "en":
            assert composed.text != english[name].text, (locale, name)
        if REFERENCE in composed.subject:
            shown = f"{LRI}{REFERENCE}{PDI}" if composed.direction == "rtl" else REFERENCE
            assert f"[{shown}]" in composed.subject, (locale, name)
    for status in STATUSES:
        composed = texts.compose_status(REFERENCE, status, locale)
        shown = f"{LRI}{REFERENCE}{PDI}" if composed.direction == "rtl" else REFERENCE
        assert shown in composed.short and shown in composed.text
    sentences = {texts.compose_status(REFERENCE, status, locale).text for status in STATUSES}
    assert len(sentences) == len(STATUSES)  # five statuses, five different sentences


def test_an_email_survey_links_every_score_and_the_others_say_how_to_answer():
    links = {score: f"https://complaints.example.com/survey/t?score={score}" for score in range(1, 6)}
    by_mail = texts.compose_survey(REFERENCE, Survey("s", links=links), "fa", channel="email")
    lines = by_mail.text.split("\n")
    for url in links.values():
        assert url in lines  # alone on its line: no isolate glued to the link
    assert "۵ – بسیار راضی" in by_mail.text and by_mail.subject.endswith(f"[{LRI}{REFERENCE}{PDI}]")
    by_sms = texts.compose_survey(REFERENCE, Survey("s"), "en", channel="sms")
    assert "Reply 1-5" in by_sms.short and "recommend" in by_sms.short and "comment" in by_sms.short
    by_telegram = texts.compose_survey(REFERENCE, Survey("s"), "en", channel="telegram")
    assert "Reply" not in by_telegram.short and len(by_telegram.short) < len(by_sms.short)


def test_texts_refuse_what_they_cannot_say():
    with pytest.raises(ValueError):
        texts.compose_status(REFERENCE, "lost", "en")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        texts.compose_message(" ", "Hello", "en")
    with pytest.raises(ValueError):
        texts.score_label(6, "en")
    assert texts.score_label(1, "de") == "Sehr unzufrieden"


async def test_an_album_split_between_two_workers_is_one_complaint_answered_once(tmp_path: Path):
    """Telegram's webhook may bring an album's photos to two workers; the second reads the first's spool."""
    async with workers(tmp_path, 2) as [first, second]:
        opened = await take_album_part(first, 70, caption="Paczka przyszła rozbita", photo=[PHOTO_A])
        part = await take_album_part(second, 71, photo=[PHOTO_B])
        again = await take_album_part(second, 71, photo=[PHOTO_B])
        [received] = await first.events(COMPLAINT_RECEIVED)
        [followed] = await second.events("intake.complaint.followed_up.v1")
    assert opened.acknowledgement is not None and part.acknowledgement is None
    assert again.duplicate and part.reference == opened.reference == received["reference"] == followed["follows_up"]
    assert followed["attachments"][0]["location"] == "tg-file:b"


async def test_an_album_whose_caption_asks_a_status_is_not_followed_up_under_the_question(tmp_path: Path):
    """A status question is no complaint: the album's next photo opens one instead of following up the question."""
    async with workers(tmp_path) as [worker]:
        question = await take_album_part(worker, 80, caption=f"status {REFERENCE}", photo=[PHOTO_A])
        part = await take_album_part(worker, 81, photo=[PHOTO_B])
        [received] = await worker.events(COMPLAINT_RECEIVED)
        followed = await worker.events("intake.complaint.followed_up.v1")
    assert question.reference != part.reference == received["reference"]
    assert part.acknowledgement is not None and followed == []


ALBUM_SENDER = user(5627001, language_code="pl")
PHOTO_A = {"file_id": "a", "file_unique_id": "ua", "width": 9, "height": 9}
PHOTO_B = {"file_id": "b", "file_unique_id": "ub", "width": 9, "height": 9}


async def take_album_part(worker: Worker, message_id: int, **fields: object) -> Outcome:
    """One photo of an album (one media_group_id) taken in as the Telegram channel takes it in."""
    update = {"update_id": 900_000 + message_id, "message": message(ALBUM_SENDER, message_id, media_group_id="13601234567890009", **fields)}
    raw = json.dumps(update).encode()
    parsed = telegram_normalizer.parse(raw).message
    assert parsed is not None
    chat = ALBUM_SENDER["id"]
    return await worker.reception.receive(
        channel="telegram",
        channel_message_id=f"{chat}:{message_id}",
        raw=raw,
        normalize=lambda: telegram_normalizer.to_complaint(raw, received_at=RECEIVED_AT, bot_id=BOT_ID),
        received_at=RECEIVED_AT,
        ack="reply",
        reply_payload=lambda complaint, acknowledgement: {"chat_id": chat, "message_id": message_id},
        route={"chat_id": chat, "message_id": message_id},
        group=telegram_normalizer.group(parsed, BOT_ID),
    )
