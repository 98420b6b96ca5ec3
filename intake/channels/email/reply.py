"""Email out through the configured relay: acknowledgements, and the team's messages, statuses and surveys.

The payload is written to the spool with the complaint (``acknowledgement_payload``)
and handed to ``AcknowledgementSender.send_reply`` by ``intake.replies`` until it
goes out: a relay outage delays acknowledgements, it loses none.

Loops with auto-responders and backscatter die out here. Within a window at
most ``acknowledgements_per_recipient`` go to one address, at most
``acknowledgements_per_domain`` to the addresses of one domain and at most
``acknowledgements_total`` in all: twelve mails forging twelve victims' addresses
do not make twelve acknowledgements. None goes to a role or robot address
(no-reply, a list's -request, mailer-daemon; ``intake.normalizer.email.is_role_address``),
whichever channel asks: the web form's copy to a typed address comes through
here too. To: carries the address alone, never a display name a forger chose.
One beyond a limit is suppressed: the sender raises Rejected, so
``intake.replies`` records an ``acknowledgement_failed`` event saying why
instead of retrying it. A retried acknowledgement would still feed the loop
(only later), and one dropped without an event would leave downstream believing
the customer had been answered or that the acknowledgement was still on its
way; the failed event lets a case worker see the complaint was never
acknowledged, and why. Suppressions are counted by limit in
``intake_acknowledgements_suppressed``.

What downstream tells a complainant later (``intake.twoway``) goes out through
:class:`OutboundEmailSender`, over the same :class:`RelayConnection`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import html
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import Policy
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import aiosmtplib

from intake.channels.email import wire
from intake.channels.email.oauth import AccessTokens, TokenRefused, sasl_response
from intake.acknowledgement import Acknowledgement
from intake.errors import Rejected, Suppressed, TemporaryFailure
from intake.metrics import Metrics
from intake.twoway import Delivered, OutboundMessage, Route
from intake.normalizer import email as mail
from intake.normalizer.record import Complaint

if TYPE_CHECKING:
    from intake.channels.email import EmailLimitsConfig, RelayConfig


class _Headers(HeaderRegistry):
    """The email package's header registry, with each header's class made once.

    The standard registry builds a new class (``type(...)``, through ABCMeta) for every header set on every
    message: a sixth of the CPU of sending an acknowledgement. The classes depend on the header's name only."""

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one registry for the process, never changed after it is made
    def __getitem__(self, name: str) -> type:
        return super().__getitem__(name)


SMTP_POLICY = SMTP.clone(header_factory=_Headers())

log = logging.getLogger("intake.email.reply")

_MESSAGE_ID = re.compile(r"<[^<>\s]{1,900}>")
# RFC 5322 §3.6.4 lets References be trimmed; keep the thread's root and its latest messages.
_MAX_REFERENCES = 20
# The namespace of the ids our outbound Message-IDs are derived from (uuid5 of the command's id).
_OUTBOUND_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:intake:outbound-email")


def _message_ids(values: Iterable[str | None]) -> list[str]:
    """Well-formed msg-ids only: these come from the customer's mail and end up in our headers."""
    found: list[str] = []
    for value in values:
        for message_id in _MESSAGE_ID.findall(value or ""):
            if message_id not in found:
                found.append(message_id)
    return found


class _MessageIds(str):
    """In-Reply-To or References as RFC 5322 §3.6.4 writes them: msg-ids, folded between ids, never encoded.

    The email package folds a field it does not know at 78 columns by turning a
    longer word into RFC 2047 encoded-words, and Outlook's and Gmail's ids are
    longer: RFC 2047 §5 forbids encoded-words in a msg-id, and the customer's
    mail client would no longer thread our acknowledgement under their mail.
    The policy folds a value that has a ``name`` with the value's own ``fold``.
    An id is at most 900 characters (``_MESSAGE_ID``), so a line stays within
    RFC 5322's 998 with one id on it.
    """

    name: str

    def __new__(cls, name: str, ids: list[str]) -> _MessageIds:
        value = super().__new__(cls, " ".join(ids))
        value.name = name
        return value

    def fold(self, *, policy: Policy) -> str:
        lines = [f"{self.name}:"]
        for index, message_id in enumerate(self.split()):
            if index and len(lines[-1]) + 1 + len(message_id) > (policy.max_line_length or 998):
                lines.append("")
            lines[-1] += " " + message_id
        return policy.linesep.join(lines) + policy.linesep


def acknowledgement_payload(
    complaint: Complaint,
    acknowledgement: Acknowledgement,
    *,
    to: str,
    in_reply_to: str | None = None,
    references: Iterable[str] = (),
    domain: str,
) -> dict[str, Any]:
    """What an email acknowledgement needs, as JSON for the spool (also for channels that acknowledge by email).

    Our Message-ID encodes the complaint's key (the complaint a follow-up
    follows), so a reply to any acknowledgement finds its complaint again
    without shared state; it is fixed here, so a resend after a relay outage
    carries the same one.
    """
    theirs, chain = _thread(in_reply_to, references)
    return {
        "to": to,
        "subject": acknowledgement.subject,
        "text": acknowledgement.text,
        "direction": acknowledgement.direction,
        "message_id": mail.our_message_id(complaint.key, complaint.id, domain),
        "in_reply_to": theirs,
        "references": chain,
    }


def _thread(in_reply_to: str | None, references: Iterable[str]) -> tuple[str | None, list[str]]:
    """In-Reply-To and References of our answer to the mail ``in_reply_to`` names (RFC 5322 §3.6.4), bounded."""
    theirs = _message_ids([in_reply_to])
    chain = _message_ids(references) + [m for m in theirs if m not in _message_ids(references)]
    if len(chain) > _MAX_REFERENCES:
        chain = chain[:1] + chain[-(_MAX_REFERENCES - 1) :]
    return (theirs[0] if theirs else None), chain


def _threading(in_reply_to: str | None, references: Iterable[str]) -> list[_MessageIds]:
    fields = []
    for name, ids in (("In-Reply-To", [in_reply_to]), ("References", list(references))):
        if _message_ids(ids):
            fields.append(_MessageIds(name, _message_ids(ids)))
    return fields


def _threading_headers(message: EmailMessage, in_reply_to: str | None, references: Iterable[str]) -> None:
    for field in _threading(in_reply_to, references):
        message[field.name] = field


def _threading_lines(in_reply_to: str | None, references: Iterable[str]) -> list[str]:
    return [field.fold(policy=SMTP_POLICY) for field in _threading(in_reply_to, references)]


# RFC 3834 §5: an automatic answer says so; Exchange's own header keeps Outlook's out-of-office from answering it.
_AUTOMATIC = (("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All"))


def _html(body: str, locale: str, direction: str) -> str:
    """An HTML alternative: plain text has no direction, and mail clients that show this part lay it out as ``direction``."""
    lang = html.escape(locale, quote=True)
    align = "right" if direction == "rtl" else "left"
    return (
        f'<!DOCTYPE html><html lang="{lang}" dir="{direction}"><head><meta charset="utf-8"></head>'
        f'<body dir="{direction}" style="direction:{direction};text-align:{align}">{body}</body></html>'
    )


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(part)}</p>" for part in text.split("\n\n"))


def _recent(sent: dict[str, collections.deque[float]], since: float) -> collections.defaultdict[str, collections.deque[float]]:
    return collections.defaultdict(collections.deque, {key: times for key, times in sent.items() if times and times[-1] > since})


class AcknowledgementSender:
    """``gateway.reply_senders["email"]``: sends one acknowledgement per call, rate-limited per address, domain and in all."""

    def __init__(
        self,
        relay: RelayConfig,
        limits: EmailLimitsConfig,
        metrics: Metrics,
        *,
        organisation: str = "",
        clock: Callable[[], float] = time.monotonic,
        connection: RelayConnection | None = None,
    ) -> None:
        self._relay = relay
        self._limits = limits
        self._metrics = metrics
        self._from_name = relay.from_name or organisation
        self._clock = clock
        # Per process: after a restart a loop gets one more window's worth, then stops again.
        # Times of the acknowledgements sent (or on their way) within the window, by address, by domain, in all.
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._sent_to_domain: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._sent_in_all: collections.deque[float] = collections.deque()
        self._swept_at = clock()
        # When each limit last said so in the log: a loop meets a limit thousands of times a window, and each is counted
        # in intake_acknowledgements_suppressed_total; the log says it once per limit and window.
        self._logged_at: dict[str, float] = {}
        self.connection = connection or RelayConnection(relay)

    def _limit_reached(self, recipient: str) -> str | None:
        """Which limit another acknowledgement to ``recipient`` would break now ("recipient", "domain", "total"), None if none."""
        window = self._limits.acknowledgement_window_seconds
        now = self._clock()
        if now - self._swept_at >= window:
            # Once per window, forget every address and domain whose last acknowledgement is out of it: the maps
            # stay as small as the number of people acknowledged recently.
            self._sent = _recent(self._sent, now - window)
            self._sent_to_domain = _recent(self._sent_to_domain, now - window)
            self._swept_at = now
        domain = recipient.rpartition("@")[2]
        for limit, times, cap in (
            ("recipient", self._sent.get(recipient), self._limits.acknowledgements_per_recipient),
            ("domain", self._sent_to_domain.get(domain), self._limits.acknowledgements_per_domain),
            ("total", self._sent_in_all, self._limits.acknowledgements_total),
        ):
            while times and times[0] <= now - window:
                times.popleft()
            if times is not None and len(times) >= cap:
                return limit
        return None

    def _reserve(self, recipient: str) -> float:
        """Count an acknowledgement against the limits before it is sent: concurrent sends cannot overshoot them."""
        sent_at = self._clock()
        self._sent[recipient].append(sent_at)
        self._sent_to_domain[recipient.rpartition("@")[2]].append(sent_at)
        self._sent_in_all.append(sent_at)
        return sent_at

    def _release(self, recipient: str, sent_at: float) -> None:
        """An acknowledgement that did not go out does not count."""
        for times in (self._sent.get(recipient), self._sent_to_domain.get(recipient.rpartition("@")[2]), self._sent_in_all):
            if times is not None and sent_at in times:
                times.remove(sent_at)

    def _suppress(self, limit: str, reason: str, payload: dict[str, Any]) -> Suppressed:
        self._metrics.acknowledgements.labels(channel="email", outcome="suppressed").inc()
        self._metrics.acknowledgements_suppressed.labels(channel="email", limit=limit).inc()
        now = self._clock()
        last = self._logged_at.get(limit)
        quiet = last is not None and now - last < self._limits.acknowledgement_window_seconds
        if not quiet:
            self._logged_at[limit] = now
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "acknowledgement suppressed: %s%s",
            reason,
            "" if quiet else "; more within this window are counted in intake_acknowledgements_suppressed_total, not logged",
            extra={"event": "acknowledgement_suppressed", "limit": limit, "reference": payload.get("reference")},
        )
        return Suppressed(f"suppressed: {reason}")

    def compose(self, payload: dict[str, Any]) -> EmailMessage:
        """The acknowledgement as a message: localised, threaded, and marked as an automatic reply (RFC 3834)."""
        message = EmailMessage(policy=SMTP_POLICY)
        try:
            message["From"] = Address(display_name=self._from_name, addr_spec=self._relay.from_address)
            # The address alone: a display name comes from the mail we answer, and a forger writes it.
            message["To"] = Address(addr_spec=payload["to"])
        except (ValueError, IndexError) as error:  # IndexError: the email package on some malformed addresses
            raise Rejected(f"not an address we can write to: {type(error).__name__}") from None
        message["Subject"] = payload["subject"]
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = payload["message_id"]
        _threading_headers(message, payload.get("in_reply_to"), payload.get("references") or [])
        for name, value in _AUTOMATIC:
            message[name] = value
        message.set_content(payload["text"], charset="utf-8")
        if payload.get("direction") == "rtl":
            message.add_alternative(_html(_paragraphs(payload["text"]), payload["locale"], "rtl"), subtype="html", charset="utf-8")
        # After the content: setting the content clears every Content-* header.
        message["Content-Language"] = payload["locale"]
        return message

    async def send_reply(self, payload: dict[str, Any]) -> None:
        """Send it; TemporaryFailure: try again later; Rejected: never (refused recipient, rate limit)."""
        recipient = payload["to"].strip().lower()
        if mail.is_role_address(recipient):
            raise self._suppress("role_address", "a role or robot address (no-reply, list manager, mailer daemon)", payload)
        limit = self._limit_reached(recipient)
        if limit is not None:
            caps = {
                "recipient": f"{self._limits.acknowledgements_per_recipient} acknowledgements to this address",
                "domain": f"{self._limits.acknowledgements_per_domain} acknowledgements to this address's domain",
                "total": f"{self._limits.acknowledgements_total} acknowledgements in all",
            }
            window = self._limits.acknowledgement_window_seconds
            raise self._suppress(
                limit, f"{caps[limit]} within {window:g} s (auto-responder loop and backscatter protection)", payload
            )
        sent_at = self._reserve(recipient)
        try:
            await self._deliver(payload)
        except BaseException:
            self._release(recipient, sent_at)
            raise

    async def _deliver(self, payload: dict[str, Any]) -> None:
        """One acknowledgement through the relay; TemporaryFailure or Rejected as ``send_reply`` says."""
        message = self.plain(payload) or self.compose(payload)
        await self.connection.send(message, sender=self._relay.envelope_sender, recipient=payload["to"])

    def plain(self, payload: dict[str, Any]) -> bytes | None:
        """What ``compose`` makes, written straight as bytes (``intake.channels.email.wire``) when the acknowledgement
        is plain text to a plain address, as nearly all are; None for the rest, which ``compose`` makes."""
        if payload.get("direction") == "rtl" or self._from_header is None:
            return None
        return wire.plain_message(
            from_header=self._from_header,
            to=payload["to"],
            subject=payload["subject"],
            date=formatdate(usegmt=True),
            message_id=payload["message_id"],
            threading=_threading_lines(payload.get("in_reply_to"), payload.get("references") or []),
            headers=_AUTOMATIC,
            locale=payload["locale"],
            text=payload["text"],
        )

    @functools.cached_property
    def _from_header(self) -> str | None:
        """Our From: line as the email package folds it (once: it is the same on every acknowledgement); None when the
        configured address cannot be written, which ``compose`` then says for each acknowledgement."""
        message = EmailMessage(policy=SMTP_POLICY)
        try:
            message["From"] = Address(display_name=self._from_name, addr_spec=self._relay.from_address)
            line = SMTP_POLICY.fold("From", message["From"])
        except (ValueError, IndexError):
            return None
        return line if line.isascii() else None


class OutboundEmailSender:
    """``gateway.outbound_senders["email"]``: what the team, a status change or a survey tells a complainant by email.

    Threaded under the complainant's own mail when the complaint came by email
    (In-Reply-To their Message-ID, References their chain plus it, bounded as
    acknowledgements bound it); by the address they gave when it came on a
    channel that cannot carry it (a web form, a partner), then unthreaded: the
    subject's reference tag is what a reply is matched by. Our Message-ID
    carries the reference like an acknowledgement's, so a reply to it is a
    follow-up of the right complaint, and is derived from the command's id, so a
    resend after an unknown outcome (the relay took it, the answer was lost) is
    the same message to the customer's mail client and the relay's duplicate
    checks.

    None of the acknowledgements' per-recipient and per-domain limits apply:
    those stop loops and backscatter started by mail from strangers, and nobody
    outside can make downstream write a command; an answer a person asked for,
    held back because the same provider's customers were answered a hundred
    times that hour, would be a complaint lost on its way back. What remains is
    one ceiling of its own, ``limits.outbound_total`` per window, against a
    runaway producer downstream (the relay's and the domain's reputation): beyond
    it a message waits (TemporaryFailure until the window has room), it is never
    dropped. It counts apart from the acknowledgements, so a burst of surveys
    does not hold back the answer to a new complaint.
    """

    def __init__(
        self,
        relay: RelayConfig,
        limits: EmailLimitsConfig,
        *,
        organisation: str = "",
        connection: RelayConnection | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._relay = relay
        self._limits = limits
        self._from_name = relay.from_name or organisation
        self._clock = clock
        self._sent: collections.deque[float] = collections.deque()
        self.connection = connection or RelayConnection(relay)

    def can_deliver(self, route: Route) -> bool:
        return bool(_recipient(route, route.channel))

    def message_id(self, message: OutboundMessage) -> str:
        """Our Message-ID for ``message``: the reference (a reply finds its complaint) and a digest of the command's id."""
        return mail.our_message_id(message.reference, uuid.uuid5(_OUTBOUND_IDS, message.command_id), self._relay.domain)

    def compose(self, message: OutboundMessage) -> EmailMessage:
        recipient = _recipient(message.route, message.via)
        if not recipient:
            raise Rejected("no email address for this complainant")
        email = EmailMessage(policy=SMTP_POLICY)
        try:
            email["From"] = Address(display_name=self._from_name, addr_spec=self._relay.from_address)
            email["To"] = Address(addr_spec=recipient)
        except (ValueError, IndexError) as error:  # IndexError: the email package on some malformed addresses
            raise Rejected(f"not an address we can write to: {type(error).__name__}") from None
        email["Subject"] = message.subject
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = self.message_id(message)
        address = message.route.address
        if message.route.channel == "email" and message.via == "email":
            in_reply_to, references = _thread(address.get("message_id"), address.get("references") or [])
            _threading_headers(email, in_reply_to, references)
        if message.kind == "message":
            # RFC 3834 §5: a person on the team wrote it; we only carry it. Marked auto-generated, the customer's
            # own auto-responder would stay silent (fine) but so would filters that file automatic mail away
            # from the inbox, where a decision on their complaint must not end up.
            email["Auto-Submitted"] = "no"
        else:
            # A status notice or a survey is made by a program from a command, answering no mail of theirs:
            # "auto-generated", not "auto-replied". Out-of-office answers to it would only come back as noise.
            email["Auto-Submitted"] = "auto-generated"
            email["X-Auto-Response-Suppress"] = "All"
        text = message.text
        if message.attachment_urls:
            # Listed, not fetched: the files stay where downstream keeps them, and the mail stays small.
            text += "\n\n" + "\n".join(message.attachment_urls)
        email.set_content(text, charset="utf-8")
        links = message.survey.links if message.kind == "survey" and message.survey else {}
        if links:
            email.add_alternative(_html(_survey_html(message.text, links), message.locale, message.direction), subtype="html", charset="utf-8")
        elif message.direction == "rtl":
            email.add_alternative(_html(_paragraphs(text), message.locale, "rtl"), subtype="html", charset="utf-8")
        email["Content-Language"] = message.locale  # after the content, which clears every Content-* header
        return email

    async def deliver(self, message: OutboundMessage) -> Delivered:
        composed = self.compose(message)
        recipient = composed["To"].addresses[0].addr_spec
        if mail.is_role_address(recipient):
            # A no-reply or mailer-daemon address reads nothing, and one of them answering is how loops start.
            raise Rejected("a role or robot address (no-reply, list manager, mailer daemon)")
        self._make_room()
        sent_at = self._clock()
        self._sent.append(sent_at)
        # A person's message goes out with our address as the envelope sender, so a bounce comes back to the
        # mailbox and is recorded (flagged, never acknowledged) with the complaint; automatic ones keep the
        # null sender RFC 3834 recommends (or the configured one).
        sender = self._relay.envelope_sender if message.kind != "message" else self._relay.envelope_sender or self._relay.from_address
        try:
            await self.connection.send(composed, sender=sender, recipient=recipient)
        except BaseException:
            self._sent.remove(sent_at)
            raise
        return Delivered(provider_id=composed["Message-ID"])

    def _make_room(self) -> None:
        window = self._limits.acknowledgement_window_seconds
        now = self._clock()
        while self._sent and self._sent[0] <= now - window:
            self._sent.popleft()
        if len(self._sent) >= self._limits.outbound_total:
            failure = TemporaryFailure(f"{self._limits.outbound_total} outbound emails within {window:g} s: waiting for room")
            failure.retry_after = max(1.0, self._sent[0] + window - now)
            raise failure


def _recipient(route: Route, via: str) -> str:
    """The address a message on ``via`` goes to: the one the complaint came from, else the one the complainant gave."""
    if via == route.channel == "email":
        return str(route.address.get("to") or "")
    return str(route.contacts.get("email") or "")


def _survey_html(text: str, links: dict[int, str]) -> str:
    """The question, then one link per score as a button: real links (they work without images or scripts), each
    labelled with its score for screen readers, in a list so that they are read as one group of choices."""
    question = text.split("\n\n", 1)[0]
    buttons = "".join(
        f'<li style="display:inline-block;margin:0 4px 8px 0"><a href="{html.escape(url, quote=True)}" '
        f'style="display:inline-block;min-width:44px;padding:12px 0;text-align:center;border:2px solid #1a4d8f;'
        f'border-radius:6px;color:#1a4d8f;font-size:18px;font-weight:bold;text-decoration:none">{score}</a></li>'
        for score, url in sorted(links.items())
    )
    return f'<p>{html.escape(question)}</p><ul role="list" style="list-style:none;padding:0">{buttons}</ul>'


@dataclass
class _Session:
    """An open, signed-in session with the relay, between messages."""

    client: aiosmtplib.SMTP
    opened_at: float
    token: str | None = None  # the access token it signed in with (XOAUTH2, OAUTHBEARER)
    messages: int = 0
    idle_since: float = 0.0


class RelayConnection:
    """The way to the relay, shared by every email the gateway sends: TLS, and AUTH with a password or an access token.

    Sessions are kept open between messages, as Postfix's SMTP client caches them: a burst of acknowledgements
    pays for one connection, STARTTLS and AUTH per concurrent send rather than per mail (a third of each
    acknowledgement's cost with a local relay; more with TLS to a remote one, and relays such as Microsoft 365 and
    Gmail limit how fast a sender may open connections). A session is reused for at most ``REUSE_SECONDS`` after it
    was opened and ``REUSE_MESSAGES`` messages, closed after ``IDLE_SECONDS`` unused, and checked with NOOP before
    each reuse, so one the relay has closed meanwhile is replaced before a message is put on it. Any failure closes
    the session it happened on.
    """

    REUSE_SECONDS = 60.0
    REUSE_MESSAGES = 100
    IDLE_SECONDS = 10.0

    def __init__(self, relay: RelayConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._relay = relay
        self._tls = self._tls_context()
        # Access tokens for XOAUTH2 / OAUTHBEARER, where the relay has basic authentication off (Microsoft 365, Gmail).
        self._tokens = AccessTokens(relay.oauth, name="relay") if relay.auth != "password" and relay.oauth else None
        self._clock = clock
        self._idle: list[_Session] = []
        self._sweep: asyncio.TimerHandle | None = None
        self.opened = 0  # sessions opened so far, for the tests and the benchmark to see reuse

    async def _session(self) -> _Session:
        """An idle session still good to use, or a new one (connected, through TLS, signed in)."""
        # Before connecting: no session sits idle at the relay while the token endpoint answers.
        token = await self._tokens.get() if self._tokens is not None else None
        while self._idle:
            session = self._idle.pop()
            # A session signed in with a token due for replacement goes with it: the next signs in with the new one.
            if self._usable(session) and session.token == token:
                try:
                    await session.client.noop()
                    return session
                except Exception:  # noqa: BLE001 - closed by the relay while idle, or its loop gone: a new one below
                    pass
            self._close(session)
        relay = self._relay
        password = relay.password.get_secret_value() if relay.password and self._tokens is None else None
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            username=relay.username if self._tokens is None else None,
            password=password,
            use_tls=relay.security == "tls",
            start_tls={"auto": None, "starttls": True, "tls": False, "none": False}[relay.security],
            tls_context=self._tls,
            validate_certs=relay.validate_certs,
            timeout=relay.timeout_seconds,
        )
        await client.connect()  # STARTTLS, AUTH with a password
        try:
            if token is not None:
                await self._sign_in(client, token)
        except BaseException:
            client.close()
            raise
        self.opened += 1
        return _Session(client, opened_at=self._clock(), token=token)

    def _usable(self, session: _Session) -> bool:
        now = self._clock()
        return (
            session.client.is_connected
            and now - session.opened_at < self.REUSE_SECONDS
            and session.messages < self.REUSE_MESSAGES
            and now - session.idle_since < self.IDLE_SECONDS
        )

    def _keep(self, session: _Session) -> None:
        session.messages += 1
        session.idle_since = self._clock()
        if not self._usable(session):
            self._close(session, polite=True)
            return
        self._idle.append(session)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.IDLE_SECONDS, self._close_idle)

    def _close_idle(self) -> None:
        self._sweep = None
        keep = [session for session in self._idle if self._usable(session)]
        for session in self._idle:
            if session not in keep:
                self._close(session, polite=True)
        self._idle = keep
        if keep:
            self._sweep = asyncio.get_running_loop().call_later(self.IDLE_SECONDS, self._close_idle)

    def _close(self, session: _Session, *, polite: bool = False) -> None:
        if polite and session.client.is_connected:
            # QUIT, without waiting for the answer in the sender's way.
            task = asyncio.get_running_loop().create_task(_quit(session.client))
            _QUITTING.add(task)
            task.add_done_callback(_QUITTING.discard)
            return
        try:
            session.client.close()
        except Exception:  # noqa: BLE001 - a transport already gone (its loop closed)
            pass

    async def close(self) -> None:
        """Close every idle session (the gateway stopping)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(session.client) for session in idle))

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._relay.security == "none":
            return None
        context = ssl.create_default_context(cafile=str(self._relay.ca_file) if self._relay.ca_file else None)
        if not self._relay.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def send(self, message: EmailMessage | bytes, *, sender: str, recipient: str) -> None:
        """One message (composed, or already the bytes to send) to one recipient, in a session of its own;
        TemporaryFailure to try again later, Rejected never."""
        try:
            session = await self._session()
            try:
                if isinstance(message, bytes):
                    await session.client.sendmail(sender, [recipient], message)
                else:
                    await session.client.send_message(message, sender=sender, recipients=[recipient])
            except BaseException:
                self._close(session)
                raise
            self._keep(session)
        except TokenRefused as error:
            # Our configuration (or the provider's), not the customer's address: retried while an operator fixes it.
            raise TemporaryFailure(f"no access token for the relay: {error}") from None
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refusal.code for refusal in error.recipients]
            if codes and all(500 <= code < 600 for code in codes):
                raise Rejected(f"the relay refused the recipient ({codes[0]})") from None
            raise TemporaryFailure(f"the relay deferred the recipient ({codes[0] if codes else '?'})") from None
        except aiosmtplib.SMTPDataError as error:
            if 500 <= error.code < 600:
                raise Rejected(f"the relay refused the message ({error.code})") from None
            raise TemporaryFailure(f"the relay deferred the message ({error.code})") from None
        except aiosmtplib.SMTPNotSupported as error:
            if not recipient.isascii():
                # An internationalised address the relay cannot carry (no SMTPUTF8): retrying will not change that.
                raise Rejected("the relay cannot deliver to this address (no SMTPUTF8)") from None
            # STARTTLS or AUTH configured but not offered: our configuration, retried while it is fixed.
            raise TemporaryFailure(f"the relay does not support what is configured: {error}") from None
        except ValueError as error:  # aiosmtplib's refusal of an address it cannot put on the wire
            raise Rejected(f"not an address we can send to: {type(error).__name__}") from None
        except aiosmtplib.SMTPResponseException as error:
            # Refused sender, failed AUTH, an unwelcoming greeting: our configuration, not the customer's address;
            # retried so an operator has the retry schedule's hours to fix it.
            raise TemporaryFailure(f"the relay answered {error.code} ({type(error).__name__})") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise TemporaryFailure(f"the relay is unreachable ({type(error).__name__})") from None

    async def _sign_in(self, client: aiosmtplib.SMTP, token: str) -> None:
        """AUTH XOAUTH2 or OAUTHBEARER with an access token.

        As Microsoft documents it for SMTP: the mechanism alone, then the response
        to the server's empty challenge, so no server's limit on the length of a
        command line meets a token of a few kilobytes.
        """
        relay = self._relay
        mechanism = relay.auth
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        if mechanism not in client.server_auth_methods:
            offered = " ".join(client.server_auth_methods).upper() or "nothing"
            raise TemporaryFailure(f"the relay does not offer AUTH {mechanism.upper()} (it offers {offered})")
        response = await client.execute_command(b"AUTH", mechanism.upper().encode())
        if response.code == 334:
            response = await client.execute_command(
                sasl_response(mechanism, relay.username or "", token, host=relay.host, port=relay.port)
            )
            if response.code == 334:
                # A challenge after the token is the server's error report (JSON, base64); the exchange ends with an
                # empty answer for XOAUTH2, a lone ^A for OAUTHBEARER (RFC 7628 §3.2.3), and the server's final no.
                response = await client.execute_command(b"" if mechanism == "xoauth2" else base64.b64encode(b"\x01"))
            if response.code >= 500 and self._tokens is not None:
                # The token was refused for good: revoked, or expired sooner than announced. The next attempt gets a new one.
                self._tokens.forget(token)
        if response.code != 235:
            raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)


# QUITs under way, held so that they are not collected before they finish.
_QUITTING: set[asyncio.Task[None]] = set()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(client.quit(), timeout=2)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()
