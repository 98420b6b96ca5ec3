"""Customers' requests that come in as messages: "status C-7K3M-9QXA", and answers to a satisfaction survey.

Reception hands every normalised message to :meth:`CustomerRequests.intercept`
before treating it as a complaint or a follow-up. A message that is only a
status keyword and a reference (or the bare reference, or the bare keyword in
reply to our message) is a status request; a message that starts with a score
from 1 to 5, from the complainant of a complaint with an open survey, is the
survey's answer. A message that names no complaint (an SMS or WhatsApp reply,
a Telegram message typed instead of a button, a mail out of its thread) is an
answer only when it is the score alone, from the number, chat or address the
survey was sent to: the newest survey there still waiting for its score.
Anything else is a complaint, as before.

The status goes only to whoever holds the complaint: a sender whose address is
the one the complaint came from, or one of the contacts the complainant gave.
Anyone else gets the words a reference that does not exist gets, in the
asker's own language, so that a reference cannot be probed for existence.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from intake import texts
from intake.feedback import DEFAULT_MAX_AGE
from intake.events import _event, feedback_event
from intake.i18n import negotiate
from intake.spool import Event
from intake.twoway import Conversations, Feedback, Interception, Route, Survey, reply_address
from intake.normalizer.reference import REFERENCE_IN_TEXT, parse_reference
from intake.normalizer.record import Complaint

__all__ = [
    "MAX_COMMENT_CHARS",
    "STATUS_KEYWORDS",
    "STATUS_REQUESTED",
    "CustomerRequests",
    "SurveyAnswer",
    "holds",
    "parse_survey_answer",
    "parse_status_request",
    "status_requested_event",
]

STATUS_REQUESTED = "intake.status.requested.v1"
STATUS_REQUEST_SCHEMA_ID = "urn:intake:schema:status-request:v1"

# What customers type to ask for the status, one tuple per language, as they type it: these are
# input, not texts we write, so they live here and not in the catalogs. Matching ignores case,
# accents, punctuation, Arabic/Persian letter variants and bidi marks (see _fold), so "État",
# "etat" and "état :" are one keyword. A phrase may have several words ("estado de").
STATUS_KEYWORDS: dict[str, tuple[str, ...]] = {
    "en": ("status", "status of", "state", "progress"),
    "de": ("status", "stand", "sachstand", "bearbeitungsstand"),
    "pl": ("status", "stan", "stan sprawy", "status sprawy"),
    "es": ("estado", "estado de", "situación"),
    "fr": ("statut", "statut de", "état", "suivi"),
    "ar": ("الحالة", "حالة", "حالة الشكوى"),
    "fa": ("وضعیت", "وضعیت شکایت", "پیگیری"),
    "zh": ("状态", "狀態", "进度", "進度", "查询状态", "查詢狀態"),
}

# A survey comment is a remark, not a second complaint; the message itself keeps every word.
MAX_COMMENT_CHARS = 1000

_REFERENCE = re.compile(REFERENCE_IN_TEXT)
# Arabic letters Persian writes differently, and the tatweel that only stretches a word.
_LETTERS = str.maketrans({"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9", "\u0640": None})
# Where a quoted signature starts ("-- " on its own line, RFC 3676): what follows is not the request.
_SIGNATURE = re.compile(r"\n-- ?\n")
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|fw|fwd|wg|odp|rv|tr|回复|回覆|رد|پاسخ)\s*[:：]\s*)+", re.IGNORECASE)


def _fold(text: str) -> str:
    """Text reduced to what tells words apart: compatibility forms, case, accents, punctuation and symbols go."""
    text = unicodedata.normalize("NFKD", text).translate(_LETTERS).casefold()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Mn" or category == "Cf":  # accents, harakat; bidi isolates and marks copied from our texts
            continue
        kept.append(" " if category[0] in "PSZC" else char)
    return " ".join(unicodedata.normalize("NFC", "".join(kept)).split())


_FOLDED_KEYWORDS: dict[str, set[str]] = {}
for _language, _words in STATUS_KEYWORDS.items():
    for _word in _words:
        _FOLDED_KEYWORDS.setdefault(_fold(_word), set()).add(_language)


# Longer than any keyword with a reference, spaces and punctuation around it: not a status request.
_MAX_REQUEST_CHARS = 4 * (max(len(word) for words in STATUS_KEYWORDS.values() for word in words) + 11)


@dataclass(frozen=True)
class StatusRequest:
    """What a status request asks: the reference, if the message names one, and the language its keyword is in."""

    reference: str | None  # None: the bare keyword, asking about the complaint the message follows up
    language: str | None  # the keyword's language when only one language has it


def parse_status_request(text: str) -> StatusRequest | None:
    """A status request in ``text`` (the message's own words), or None when it says anything else.

    ``"status C-7K3M-9QXA"``, ``"Estado: c-7k3m-9qxa"``, ``"状态C-7K3M-9QXA"``, the bare reference,
    and the bare keyword are requests; anything more ("status of my refund?") is not.
    """
    if len(text) > _MAX_REQUEST_CHARS:
        return None  # a complaint's worth of text: folding it all (per character) only to find it is not a keyword
    found = [(match, parse_reference(match.group())) for match in _REFERENCE.finditer(text)]
    references = {reference for _, reference in found if reference}
    if len(references) > 1 or len(references) != len(found) and references:
        return None  # two complaints named, or something shaped like a reference that is not one
    rest = _REFERENCE.sub(" ", text)
    words = _fold(rest)
    reference = references.pop() if references else None
    if not words:
        return StatusRequest(reference, None) if reference else None
    languages = _FOLDED_KEYWORDS.get(words)
    if languages is None:
        return None
    return StatusRequest(reference, next(iter(languages)) if len(languages) == 1 else None)


@dataclass(frozen=True)
class SurveyAnswer:
    score: int  # 1-5
    nps: int | None  # 0-10
    comment: str | None


# "4", "4/5", "٤", "۴ ۹ خیلی سریع", "4 9/10 very quick, thanks": \d is every script's decimal digits.
_ANSWER = re.compile(
    r"\s*(?P<score>\d)(?:\s*/\s*(?P<of>\d))?"
    r"(?:(?:\s*[,;]\s*|\s+)(?P<nps>\d{1,2})(?:\s*/\s*(?P<nps_of>\d{1,2}))?)?"
    r"(?P<rest>(?:[\s,;.:!\-–—]+|$).*)",
    re.DOTALL,
)


# How long a survey sent by SMS, WhatsApp, Telegram or mail takes a reply that names no complaint: as long as the links
# of a mailed survey stay valid.
ANSWER_WINDOW_SECONDS = DEFAULT_MAX_AGE


def _number(digits: str) -> int:
    return int("".join(str(unicodedata.decimal(char)) for char in digits))


def parse_survey_answer(text: str, *, nps: bool = True, comment: bool = True) -> SurveyAnswer | None:
    """A survey answer: a score 1-5 first, then optionally NPS 0-10 and a comment; None for anything else.

    With ``nps`` False a second number is part of the comment; with ``comment`` False the rest is dropped.
    """
    match = _ANSWER.fullmatch(text.strip())
    if match is None:
        return None
    score = _number(match["score"])
    if not 1 <= score <= 5 or (match["of"] is not None and _number(match["of"]) != 5):
        return None
    rest = match["rest"]
    likely: int | None = None
    if match["nps"] is not None:
        value = _number(match["nps"])
        out_of_ten = match["nps_of"] is None or _number(match["nps_of"]) == 10
        if nps and value <= 10 and out_of_ten:
            likely = value
        else:
            rest = text.strip()[match.end("of") if match["of"] else match.end("score") :]
    remark = rest.lstrip(" \t\r\n,;.:!-–—").strip() if comment else ""
    return SurveyAnswer(score, likely, remark[:MAX_COMMENT_CHARS] or None)


# --- who holds a complaint ------------------------------------------------------------------


def _email(value: object) -> str | None:
    return value.strip().casefold() if isinstance(value, str) and "@" in value else None


def _phone(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    digits = "".join(char for char in value.removeprefix("whatsapp:") if char.isdigit())
    return f"+{digits}" if digits else None


def sender_identities(complaint: Complaint) -> set[tuple[str, str]]:
    """How the channel identified the sender of ``complaint``: (kind, normalised value) pairs."""
    who = complaint.complainant
    found: set[tuple[str, str]] = set()
    if complaint.channel == "email":
        if email := _email(who.email):
            found.add(("email", email))
    elif complaint.channel in ("sms", "mms", "whatsapp"):
        if phone := _phone(who.phone or who.handle):
            found.add(("phone", phone))
    elif complaint.channel == "telegram":
        # The chat is where we answer, and only its members write in it; its id leads the message id.
        chat, _, _message = complaint.channel_message_id.partition(":")
        found.add(("telegram", chat.strip()))
    elif complaint.channel == "web":
        # A form's sender is whoever typed these: as much proof as an email's From, and no less.
        if email := _email(who.email):
            found.add(("email", email))
        if phone := _phone(who.phone):
            found.add(("phone", phone))
    elif complaint.channel == "webhook":
        partner = complaint.origin.get("partner")
        if partner and who.handle:
            found.add(("webhook", json.dumps([partner, who.handle])))
    return found


def sender_address(complaint: Complaint) -> str | None:
    """The sender of ``complaint`` as a survey's recipient is kept (``intake.twoway.reply_address``), on channels with replies."""
    who = complaint.complainant
    if complaint.channel in ("sms", "mms", "whatsapp"):
        return reply_address(complaint.channel, who.phone or who.handle)
    if complaint.channel == "email":
        return reply_address("email", who.email)
    if complaint.channel == "telegram":
        return reply_address("telegram", complaint.channel_message_id.partition(":")[0])
    return None


def route_identities(route: Route) -> set[tuple[str, str]]:
    """Whoever may ask about a complaint: its route's own address and the contacts its complainant gave."""
    address = route.address
    found: set[tuple[str, str]] = set()
    if route.channel == "email" and (email := _email(address.get("to"))):
        found.add(("email", email))
    elif route.channel in ("sms", "mms", "whatsapp") and (phone := _phone(address.get("to"))):
        found.add(("phone", phone))
    elif route.channel == "telegram" and address.get("chat_id") is not None:
        found.add(("telegram", str(address["chat_id"]).strip()))
    elif route.channel == "webhook" and address.get("partner") and address.get("customer_id"):
        found.add(("webhook", json.dumps([address["partner"], address["customer_id"]])))
    if email := _email(route.contacts.get("email")):
        found.add(("email", email))
    if phone := _phone(route.contacts.get("phone")):
        found.add(("phone", phone))
    return found


# Compared against when there is no route, so that a reference that does not exist costs what one that is not yours costs.
_NOBODY = frozenset({("email", "\x00"), ("phone", "\x00")})


def holds(asker: Iterable[tuple[str, str]], route: Route | None) -> bool:
    """Whether the asker is the complainant of ``route``; every pair compared in constant time, none skipped."""
    theirs = route_identities(route) if route is not None else set(_NOBODY)
    found = False
    for kind, value in asker:
        for their_kind, their_value in theirs:
            same = hmac.compare_digest(value.encode(), their_value.encode())
            found |= same and kind == their_kind
    return found and route is not None


# --- the events -------------------------------------------------------------------------------


def status_requested_event(
    complaint: Complaint, *, reference: str, known: bool, topic: str, source: str
) -> Event:
    """A status request came in; ``known``: answered with the status. No text, no address: who asked is the message's own record."""
    data = {
        "reference": reference,
        "channel": complaint.channel,
        "known": known,
        "received_at": complaint.received_at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    return _event(
        topic=topic,
        key=reference,
        # From the message's id: a redelivered request is the same event.
        ce_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:intake:status-request:{complaint.id}")),
        ce_type=STATUS_REQUESTED,
        source=f"{source}/{complaint.channel}",
        subject=reference,
        time=complaint.received_at,
        dataschema=STATUS_REQUEST_SCHEMA_ID,
        data=json.dumps(data).encode(),
    )


# --- the interceptor ------------------------------------------------------------------------


class CustomerRequests:
    """Recognises status requests and survey answers among received messages (``intake.twoway.CustomerRequests``)."""

    def __init__(self, conversations: Conversations, *, topic: str, source: str, default_locale: str = "en") -> None:
        self._conversations = conversations
        self._topic = topic
        self._source = source
        self._default_locale = negotiate(default_locale)

    async def intercept(self, complaint: Complaint, route: Route | None) -> Interception | None:
        if complaint.flags.automated:
            return None  # a robot's message is never answered, so it is never a request either
        words = _own_words(complaint)
        request = parse_status_request(words)
        if request is not None:
            asked = request.reference or complaint.follows_up
            if asked is not None:
                return await self._status(complaint, asked, request.language)
        if complaint.follows_up is None:
            return await self._bare_score(complaint, words)
        survey = await self._conversations.open_survey(complaint.follows_up)
        if survey is None:
            return None
        answer = parse_survey_answer(words, nps=survey.nps, comment=survey.comment)
        if answer is None:
            return None
        if route is None:
            route = await self._conversations.route(complaint.follows_up)
        if not holds(sender_identities(complaint), route):
            return None  # someone else quoting the reference: their message is a complaint like any other
        assert route is not None  # holds() is never true without one
        return self._feedback(complaint, complaint.follows_up, survey, answer, route)

    async def _bare_score(self, complaint: Complaint, words: str) -> Interception | None:
        """A reply in the form the survey asked for, from whom it was sent to: its answer; the newest survey, if several wait.

        The survey's text asks for "1-5, optionally followed by 0-10 and a comment" (as the survey was configured), and
        a customer who follows it to the letter is answering, not complaining. Anything beyond what the survey asked
        for ("2 parcels still missing" to a survey without a comment, "4?") stays a message like any other."""
        if _ANSWER.fullmatch(words.strip()) is None:
            return None  # not even shaped like an answer: no lookup
        sender = sender_address(complaint)
        if sender is None:
            return None
        asked = await self._conversations.survey_asked_of(sender, str(complaint.id))
        if asked is None:
            return None  # no survey waits for this sender's score: a message like any other
        if complaint.received_at.timestamp() - asked.asked_at > ANSWER_WINDOW_SECONDS:
            return None  # asked too long ago: a "1" now answers something else, as the survey's mailed links expire too
        route = await self._conversations.route(asked.reference)
        if route is None:
            return None
        answer = parse_survey_answer(words, nps=asked.survey.nps, comment=True)
        if answer is None or (answer.comment is not None and not asked.survey.comment):
            return None
        if asked.answered:
            # Recorded already, through another worker: thanked again, counted once.
            return Interception(kind="feedback", events=[], answer=texts.compose_feedback_thanks(route.locale))
        return self._feedback(complaint, asked.reference, asked.survey, answer, route)

    async def _status(self, complaint: Complaint, reference: str, language: str | None) -> Interception:
        # Both lookups whatever the first says: a reference that is not the asker's costs what a missing one costs.
        route = await self._conversations.route(reference)
        view = await self._conversations.status(reference)
        known = holds(sender_identities(complaint), route)
        if known:
            assert route is not None
            answer = texts.compose_status_answer(reference, view, route.locale)
        else:
            # Only what the asker told us decides the language: the complaint's own would tell them it exists.
            answer = texts.compose_status_unknown(self._asker_locale(complaint, language))
        event = status_requested_event(complaint, reference=reference, known=known, topic=self._topic, source=self._source)
        return Interception(kind="status", events=[event], answer=answer)

    def _feedback(self, complaint: Complaint, reference: str, survey: Survey, answer: SurveyAnswer, route: Route) -> Interception:
        feedback = Feedback(
            reference=reference,
            survey_id=survey.survey_id,
            channel=complaint.channel,
            score=answer.score,
            nps=answer.nps,
            comment=answer.comment,
            answer_id=str(complaint.id),
        )
        event = feedback_event(feedback, received_at=complaint.received_at, topic=self._topic, source=self._source)
        return Interception(kind="feedback", events=[event], answer=texts.compose_feedback_thanks(route.locale), feedback=feedback)

    def _asker_locale(self, complaint: Complaint, language: str | None) -> str:
        # The keyword's language first: it is what they wrote in, where a channel's locale may be a guess (a number's country).
        for candidate in (language, complaint.complainant.locale, complaint.language):
            if candidate:
                return negotiate(candidate, default=self._default_locale)
        return self._default_locale


def _own_words(complaint: Complaint) -> str:
    """The message's text without a signature; an email with an empty body speaks through its subject."""
    text = _SIGNATURE.split("\n" + complaint.text, maxsplit=1)[0]
    if not text.strip() and complaint.channel == "email" and complaint.subject:
        text = _REPLY_PREFIX.sub("", complaint.subject)
    return text.strip()
