"""Status requests and survey answers among received messages, and the two-way texts in every language."""

from __future__ import annotations

import datetime as dt
import json
import time
from urllib.parse import urlencode

import pytest

from intake import texts
from intake.acknowledgement import gsm7_segments
from intake.events import FEEDBACK_RECEIVED
from intake.i18n import SUPPORTED
from intake.requests import (
    MAX_COMMENT_CHARS,
    STATUS_REQUESTED,
    CustomerRequests,
    parse_status_request,
    parse_survey_answer,
)
from intake.twoway import STATUSES, Route, StatusView, Survey
from intake.normalizer import telegram as telegram_normalizer
from intake.normalizer import twilio as twilio_normalizer
from intake.normalizer.email import record as email_normalizer
from intake.normalizer.record import Complaint
from tests.support.conversations import MemoryConversations
from tests.support.telegram_api import BOT_ID, message, user

REFERENCE = "C-7K3M-9QXA"
OTHER = "C-9QXA-7K3M"
LRI, PDI = "\u2066", "\u2069"
RECEIVED_AT = dt.datetime(2026, 12, 2, 9, 30, tzinfo=dt.timezone.utc)
CUSTOMER = "+48601234567"
STRANGER = "+48609876543"
OUR_NUMBER = "+15005550006"


def sms(text: str, *, sender: str = CUSTOMER, sid: str = "SM0123456789abcdef0123456789abcdef", whatsapp: bool = False) -> Complaint:
    """An inbound SMS (or WhatsApp message) as Twilio posts it, through the real normaliser."""
    prefix = "whatsapp:" if whatsapp else ""
    params = {
        "MessageSid": sid,
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": prefix + sender,
        "To": prefix + OUR_NUMBER,
        "Body": text,
        "NumMedia": "0",
    }
    return twilio_normalizer.to_complaint(urlencode(params).encode(), received_at=RECEIVED_AT, locales=SUPPORTED)


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
    # An SMS reply carries no thread of its own: Reception finds the complaint it follows up (the last one asked).
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
