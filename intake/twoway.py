"""The way back to the complainant: the types every part of two-way delivery shares.

Downstream (case management) writes commands to the outbound topic, keyed by
the complaint's reference: a message to the complainant, a status change, a
request for a satisfaction survey. The gateway stores each command in its
spool before it commits the offset, then delivers it on the complaint's own
channel (the *route* it recorded when the complaint came in), or on another
contact the complainant gave when that channel cannot carry it, and writes
``intake.reply.delivered.v1`` / ``intake.reply.failed.v1`` to the main topic.

A channel that can send takes part through :class:`OutboundSender`; the
delivery loop (``intake.delivery``) chooses the sender, composes the text in
the complainant's language and records the outcome. A customer's answer to
a survey, and a request for the status, come back in through the channels
and end up at :class:`Conversations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from intake.acknowledgement import Acknowledgement
    from intake.spool import Event
    from intake.normalizer.record import Complaint

# The statuses a complaint moves through (ISO 10002: received, assessed, responded, closed).
Status = Literal["received", "in_progress", "responded", "resolved", "closed"]
STATUSES: tuple[Status, ...] = ("received", "in_progress", "responded", "resolved", "closed")

# What a command asks for.
CommandKind = Literal["message", "status", "survey"]

# The channels a complaint can be answered on; a complaint's own channel, or a contact's.
Via = Literal["email", "sms", "mms", "whatsapp", "telegram", "webhook"]

# The channels on which a customer's reply to what we send reaches us (not a web page, not a partner's screen).
REPLYABLE = frozenset({"email", "sms", "mms", "whatsapp", "telegram"})


@dataclass(frozen=True)
class Route:
    """How to reach a complainant on the channel their complaint came in on, recorded at reception.

    ``address`` is channel-specific and holds personal data; it never leaves the spool:
    - email: ``{"to": addr, "message_id": "<id@host>", "references": [...], "subject": "..."}``
    - telegram: ``{"chat_id": int, "message_id": int}``
    - sms / mms / whatsapp: ``{"to": "+48...", "from": "+1..."}`` (the customer's number, the number they wrote to;
      WhatsApp numbers without the ``whatsapp:`` prefix)
    - webhook: ``{"partner": "name", "customer_id": "..."}``
    - web: ``{}`` (a web form cannot be written to; its complainant's contacts are used)
    """

    channel: str
    address: dict[str, Any]
    locale: str  # the locale the acknowledgement was written in
    last_inbound_at: float  # when the complainant last wrote on it (WhatsApp's 24-hour window)
    # Other ways the complainant gave: {"email": ..., "phone": ..., "preferred": "email"|"sms"|...}.
    contacts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Survey:
    """A satisfaction survey to ask: CSAT on a 1-5 scale, then optionally NPS (0-10) and a comment."""

    survey_id: str  # the command's ce_id: answers name it
    nps: bool = True
    comment: bool = True
    # Email only: the links that answer it, score -> URL (signed, one per score).
    links: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AskedSurvey:
    """A survey found by whom it asked, for an answer that names no complaint (a bare score by SMS)."""

    reference: str
    survey: Survey
    answered: bool = False  # the answer looking it up was recorded before: a redelivery, thanked again, not counted again
    asked_at: float = 0.0  # when it was sent (Unix seconds)


def reply_address(channel: str, to: object) -> str | None:
    """Whom a message on ``channel`` comes from, or goes to, as the survey index keys it: ``sms:+48601234567`` (SMS and
    MMS being one number), ``whatsapp:+48601234567``, ``email:ewa@example.com``, ``telegram:5550001`` (the chat).

    ``to`` is the number, address or chat id as a route or a record holds it (a WhatsApp number with or without its
    ``whatsapp:`` prefix). None on a channel whose replies do not come back as messages, or for what is not an address.
    """
    if channel in ("sms", "mms", "whatsapp"):
        digits = "".join(char for char in to.removeprefix("whatsapp:") if char.isdigit()) if isinstance(to, str) else ""
        return f"{'whatsapp' if channel == 'whatsapp' else 'sms'}:+{digits}" if digits else None
    if channel == "email":
        return f"email:{to.strip().casefold()}" if isinstance(to, str) and "@" in to else None
    if channel == "telegram":
        chat = str(to).strip() if type(to) is int or isinstance(to, str) else ""
        return f"telegram:{int(chat)}" if chat.removeprefix("-").isascii() and chat.removeprefix("-").isdigit() else None
    return None


@dataclass(frozen=True)
class OutboundMessage:
    """One thing to tell one complainant, composed and in their language, for one sender."""

    command_id: str  # the command's ce_id; senders may use it as an idempotency key
    reference: str
    kind: CommandKind
    via: str  # the channel it goes out on; may differ from route.channel on a fallback
    route: Route
    locale: str
    direction: str  # "ltr" / "rtl"
    subject: str  # email subject, with the reference tag "[C-....-....]"
    text: str  # the whole text (email body)
    short: str  # the text for SMS, WhatsApp, Telegram
    attachment_urls: tuple[str, ...] = ()
    status: Status | None = None
    survey: Survey | None = None
    # WhatsApp outside the 24-hour window: the approved template (Content SID) and its variables.
    template_sid: str | None = None
    template_variables: dict[str, str] = field(default_factory=dict)
    # A partner callback carries the command itself, not a composed text.
    command: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivered:
    """What a sender reports once the channel took the message."""

    provider_id: str | None = None  # Twilio's Message SID, Telegram's message_id, the email's Message-ID
    note: str | None = None  # e.g. "whatsapp template", "fallback to email": goes into the outcome event


class OutboundSender(Protocol):
    async def deliver(self, message: OutboundMessage) -> Delivered:
        """Send it; raise intake.errors.TemporaryFailure to retry later, intake.errors.Rejected to give up."""


@dataclass(frozen=True)
class Feedback:
    """A complainant's answer to a survey, as a channel received it."""

    reference: str
    survey_id: str
    channel: str
    score: int | None = None  # CSAT 1-5
    nps: int | None = None  # 0-10
    comment: str | None = None
    answer_id: str = ""  # the channel's own id of the answer (idempotency: a redelivered answer counts once)


@dataclass(frozen=True)
class StatusView:
    """The latest status of a complaint as intake has seen it from commands."""

    reference: str
    status: Status
    text: str | None  # the text given with the status, if any
    updated_at: float


class Conversations(Protocol):
    """What the spool knows of each complaint's conversation; implemented by ``intake.spool.Spool``."""

    async def route(self, reference: str) -> Route | None:
        """The route recorded for a complaint, or None for a reference this gateway never received."""

    async def group(self, name: str) -> str | None:
        """What the first stored message of a group sent as one (a Telegram album) became: the reference its
        others follow up; None while none of them is stored."""

    async def status(self, reference: str) -> StatusView | None:
        """The latest status seen in commands; None if no status command has come (the complaint is then "received")."""

    async def open_survey(self, reference: str) -> Survey | None:
        """The survey asked and not yet answered for this complaint, if any."""

    async def survey_asked_of(self, asked_of: str, answer_id: str) -> AskedSurvey | None:
        """The newest survey asked of ``asked_of`` (see :func:`reply_address`) whose score is still to be given, or
        was given by the answer ``answer_id`` itself (a redelivery); None if there is none."""

    async def record_feedback(self, feedback: Feedback, event: Event) -> bool:
        """Store an answer that came outside a message (a Telegram button, the survey page) and its
        ``intake.feedback.received.v1`` event in one transaction; False if ``answer_id`` was recorded before."""


@dataclass(frozen=True)
class Interception:
    """A received message that is not a complaint but a request: a status question or a survey answer.

    Reception stores the message as usual (its key keeps a redelivery from counting twice), but
    publishes ``events`` instead of the complaint event, answers with ``answer`` instead of the
    acknowledgement (inline or as the reply, as the channel answers), and records ``feedback``
    with the message in the same transaction.
    """

    kind: Literal["status", "feedback"]
    events: list[Event]
    answer: Acknowledgement
    feedback: Feedback | None = None


class CustomerRequests(Protocol):
    async def intercept(self, complaint: Complaint, route: Route | None) -> Interception | None:
        """``complaint`` as normalised, ``route`` the route recorded for ``complaint.follows_up`` (if any); None: a complaint."""


# Email surveys: (survey_id, reference, locale) -> {score: signed URL}; given to the delivery loop by the gateway.
SurveyLinks = Callable[[str, str, str], dict[int, str]]
