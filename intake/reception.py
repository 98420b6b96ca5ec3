"""Reception: the one path from a channel's raw message to the spool, shared by every channel.

A channel hands over the raw bytes, its own message id and a pure function
that normalizes them. Reception derives the key, id and reference, composes
the acknowledgement, and writes the raw message, its events and the reply to
send in one spool transaction. Only when that has committed does the channel
say yes to its sender.

A channel with no answer to compose (SMTP) may instead hand over only the raw
bytes (``receive_later``): they are stored in the spool's inbox, the channel
says yes once that has committed, and the channel's own function, registered
with ``normalize_later``, is called from the inbox (``intake.inbox``) to do
what ``receive`` does, the inbox message going in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import hashlib
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from intake import events
from intake.acknowledgement import Acknowledgement, compose
from intake.config import AcknowledgementConfig
from intake.errors import TemporaryFailure
from intake.feedback import observe as observe_feedback
from intake.i18n import negotiate
from intake.metrics import Metrics
from intake.spool import Event, FollowUp, Reply, Spool, Submission
from intake.twoway import REPLYABLE, Conversations, CustomerRequests, Interception, Route
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Channel, Complaint
from intake.normalizer.reference import complaint_id, reference_for, spool_key

log = logging.getLogger("intake.reception")

# inline: the channel returns the acknowledgement in its own answer (webhook, TwiML, form page);
# reply: it is sent later from the spool, with retries (email, Telegram);
# none: the channel cannot or must not answer.
# ``reply_via`` adds a later reply on another channel to any of these.
AckMode = Literal["inline", "reply", "none"]
# Channels on which a reply to our acknowledgement reaches us again; elsewhere (a web page, a partner's screen) the
# acknowledgement must not invite one.
# Channels whose replies thread under one message: a follow-up there is the newest message to answer under.
_THREADED = frozenset({"email", "telegram"})
ReplyPayload = Callable[[Complaint, Acknowledgement], dict[str, Any]]
# What a channel does with a message from the inbox: (raw, received_at, context, inbox_id) to ``receive(..., inbox_id=...)``.
LaterNormalizer = Callable[[bytes, dt.datetime, dict[str, Any], int], Awaitable["Outcome"]]
# How a channel takes a dead letter in again: (raw, received_at, the context it was kept with, its channel message id),
# on the channel's own receiving path; ``receive`` knows from the replay in progress that it replaces the dead letter.
Replayer = Callable[[bytes, dt.datetime, dict[str, Any], str], Awaitable["Outcome"]]

# The replay in progress in this task: the dead letter's key and the inbox message that carries it.
_replaying: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("replaying", default=None)


@dataclass(frozen=True)
class Outcome:
    """What a channel tells its sender."""

    reference: str  # the complaint's reference; for a follow-up, the complaint it follows
    complaint_id: str
    duplicate: bool
    same_content: bool
    acknowledgement: dict[str, str] | None  # locale, direction, subject, text, short; None when not acknowledged
    dead_lettered: bool = False
    automated: bool = False


_ALONE = contextlib.nullcontext()


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Reception:
    def __init__(
        self,
        spool: Spool,
        metrics: Metrics,
        *,
        topic: str,
        dead_letter_topic: str,
        source: str,
        acknowledgement: AcknowledgementConfig,
    ) -> None:
        self.spool = spool
        self._metrics = metrics
        self._topic = topic
        self._dead_letter_topic = dead_letter_topic
        self._source = source
        self._ack = acknowledgement
        # Negotiating a locale parses every tag against the catalogs: the same few pairs of tags
        # come again and again, so each pair is negotiated once.
        self._locale = functools.lru_cache(maxsize=1024)(self._negotiate)
        self.later: dict[str, LaterNormalizer] = {}
        self.replayers: dict[str, Replayer] = {}
        # Status questions and survey answers, told apart from complaints (intake.twoway); wired by the gateway's owner.
        self.requests: CustomerRequests | None = None
        # Where the route of a complaint followed up is looked up: the spool, or every worker's (intake.conversations).
        self.conversations: Conversations = spool
        self._turns: dict[str, _Turn] = {}  # the groups of messages being taken in (see ``receive``)

    def normalize_later(self, channel: str, normalizer: LaterNormalizer) -> None:
        """How ``channel``'s messages taken in by ``receive_later`` are normalised from the inbox."""
        self.later[channel] = normalizer

    def replayable(self, channel: str, replayer: Replayer) -> None:
        """How ``channel``'s dead letters are taken in again (``intake spool dead-letters replay``)."""
        self.replayers[channel] = replayer

    async def replay(self, raw: bytes, received_at: dt.datetime, stored: dict[str, Any], inbox_id: int) -> Outcome:
        """Take in again a dead letter queued in the inbox by ``intake.replay``, on its channel's path.

        Raises TemporaryFailure while its channel is not configured here: it waits in the inbox."""
        key = stored["replay"]
        channel, _, channel_message_id = key.partition(":")
        replayer = self.replayers.get(channel)
        if replayer is None:
            raise TemporaryFailure(f"no {channel} channel here to replay it")
        token = _replaying.set((key, inbox_id))
        try:
            outcome = await replayer(raw, received_at, stored.get("context") or {}, channel_message_id)
        finally:
            _replaying.reset(token)
        log.info(
            "dead letter replayed",
            extra={"event": "replayed", "channel": channel, "reference": outcome.reference, "dead_lettered": outcome.dead_lettered},
        )
        return outcome

    async def receive_later(self, *, channel: Channel, raw: bytes, received_at: dt.datetime, context: dict[str, Any]) -> int:
        """Store the raw bytes to be normalised after the sender has been told yes; the inbox id.

        Raises SpoolFull or TemporaryFailure when they could not be stored: then the sender must hear "try again"."""
        assert channel in self.later, f"{channel} takes messages in raw but registered no normalize_later"
        return await self.spool.take_in(channel, raw, context=context, received_at=received_at.timestamp())
    def _negotiate(self, preferences: tuple[str, ...]) -> str:
        # In order; a language without a catalog falls through to the operator's default, not to English.
        return negotiate([*preferences, self._ack.default_locale], default=self._ack.default_locale)

    def acknowledgement_for(self, complaint: Complaint) -> Acknowledgement:
        preferences = tuple(tag for tag in (complaint.complainant.locale, complaint.language) if tag)
        return compose(
            complaint.key,
            self._locale(preferences),
            response_days=self._ack.response_days,
            organisation=self._ack.organisation,
            follow_up=complaint.follows_up is not None,
            replyable=complaint.channel in REPLYABLE,
        )

    def acknowledged_event(self, *, complaint: Complaint | None = None, payload: dict[str, Any] | None = None, sent_at: dt.datetime, failed: str | None = None) -> Event:
        """The event that records an acknowledgement going out; from a record, or from a reply's payload."""
        if complaint is not None:
            ident, reference, key, channel = complaint.id, complaint.reference, complaint.key, complaint.channel
            locale = (payload or {}).get("locale") or self.acknowledgement_for(complaint).locale
        else:
            assert payload is not None
            ident, reference, key = uuid.UUID(payload["complaint_id"]), payload["reference"], payload["key"]
            channel, locale = payload["channel"], payload["locale"]
        return events.acknowledgement_event(
            complaint_id=ident,
            reference=reference,
            key=key,
            channel=channel,
            locale=locale,
            sent_at=sent_at,
            topic=self._topic,
            source=self._source,
            failed=failed,
        )

    async def receive(
        self,
        *,
        channel: Channel,
        channel_message_id: str,
        raw: bytes,
        normalize: Callable[[], Complaint],
        received_at: dt.datetime,
        ack: AckMode,
        reply_payload: ReplyPayload | None = None,
        reply_via: str | None = None,
        context: dict[str, Any] | None = None,
        cursor: tuple[str, str] | None = None,
        dead_letter_invalid: bool = False,
        inbox_id: int | None = None,
        route: dict[str, Any] | None = None,
        group: str | None = None,
    ) -> Outcome:
        """Store one received message; raises InvalidMessage (unless dead-lettering), TemporaryFailure, SpoolFull.

        ``inbox_id``: the message comes from the inbox, and leaves it in the same transaction.
        ``route``: how to write to the sender on this channel later (``intake.twoway.Route.address``); kept with a
        new complaint for the commands that will answer it, or, for a follow-up, as the newest message to thread under.
        ``group``: the name of the messages the customer sent as one (a Telegram album, one update per photo). The
        first of them to be stored is the complaint, acknowledged; each other one is published as its follow-up,
        unacknowledged, so one album is one complaint and one answer. A worker takes a group's messages one at a
        time; the gateway's other workers' spools are read for the group too."""
        # Every message comes this way: one sent alone (all but an album's) takes no turn, at no cost.
        async with self._in_turn(group) if group is not None else _ALONE:
            opened = await self.conversations.group(group) if group is not None else None
            key = spool_key(channel, channel_message_id)
            replaying = _replaying.get()
            if replaying is not None:  # a dead letter taken in again: it leaves the inbox with this write, whatever its key now
                replaces, inbox_id = replaying
            else:
                replaces = None
            submission = Submission(
                key=key,
                channel=channel,
                reference="",
                raw=raw,
                raw_digest="",
                answer={},
                context=context or {},
                cursor=cursor,
                received_at=received_at.timestamp(),
                inbox_id=inbox_id,
                replaces=replaces,
            )
            try:
                complaint = normalize()
                if opened is not None and opened != complaint.reference:  # a later message of a group: it follows the first
                    complaint = complaint.model_copy(update={"follows_up": opened})
                # Serialised here, inside the guard: a record the normalizer built but JSON cannot carry is a dead letter too.
                complaint_event = events.complaint_event(complaint, topic=self._topic, source=self._source)
            except InvalidMessage as error:
                if not dead_letter_invalid and replaces is None:  # a replay has nobody to refuse it to
                    self._metrics.received.labels(channel=channel, outcome="rejected").inc()
                    raise
                return await self._dead_letter(submission, channel_message_id, str(error), received_at)
            except Exception as error:  # the normalizer's bug: the message is kept for a replay after the fix, never refused
                frame = traceback.extract_tb(error.__traceback__)[-1]
                # The type and the place only: an exception's text may quote the customer's message.
                log.error(
                    "normalizer failed; message dead-lettered",
                    extra={"event": "normalizer_failed", "channel": channel, "error_type": type(error).__name__, "at": f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"},
                )
                return await self._dead_letter(submission, channel_message_id, f"the normalizer failed: {type(error).__name__}", received_at)

            if complaint.raw.spool_key == key:  # derived from the same message: its ids need not be derived again
                submission.reference, submission.raw_digest = complaint.reference, complaint.raw.sha256
            else:
                submission.reference, submission.raw_digest = reference_for(channel, channel_message_id), hashlib.sha256(raw).hexdigest()
            interception = None
            if self.requests is not None and not complaint.flags.automated and opened is None:
                followed = await self.conversations.route(complaint.follows_up) if complaint.follows_up else None
                interception = await self.requests.intercept(complaint, followed)
            if interception is not None:
                acknowledgement = None if ack == "none" else interception.answer
            else:
                grouped = opened is not None  # answered once, for the first of the group
                acknowledgement = None if complaint.flags.automated or ack == "none" or grouped else self.acknowledgement_for(complaint)
            if not complaint.flags.automated:
                self._converse(submission, complaint, route, acknowledgement, received_at, interception)
            submission.answer = {
                "reference": complaint.key,
                "complaint_id": str(complaint.id),
                "automated": complaint.flags.automated,
                "acknowledgement": None if acknowledgement is None else _ack_dict(acknowledgement),
            }
            if group is not None and opened is None and interception is None:  # a status question opens no complaint
                submission.group = group
            submission.events = list(interception.events) if interception is not None else [complaint_event]
            if acknowledgement is not None and ack == "inline" and interception is None:
                submission.events.append(
                    self.acknowledged_event(complaint=complaint, payload={"locale": acknowledgement.locale}, sent_at=received_at)
                )
            if acknowledgement is not None and (ack == "reply" or reply_via):
                # reply_via: another channel also sends it later (a web form complaint acknowledged by email too).
                assert reply_payload is not None, "a channel that replies later must say how"
                via = reply_via or complaint.channel
                payload = {
                    "complaint_id": str(complaint.id),
                    "reference": complaint.reference,
                    "key": complaint.key,
                    "channel": via,
                    "locale": acknowledgement.locale,
                    "received_at": received_at.timestamp(),
                    **reply_payload(complaint, acknowledgement),
                }
                submission.replies = [Reply(channel=via, payload=payload)]
            receipt = await self.spool.accept(submission)
            if submission.feedback is not None and not receipt.duplicate:
                # Counted once stored: a redelivered answer is a duplicate and counts nothing.
                observe_feedback(self._metrics, submission.feedback)
            if acknowledgement is not None and ack == "inline" and not receipt.duplicate and interception is None:
                # Answered in the channel's own reply (TwiML, the webhook's 202, the form's page), once it is stored.
                sent, latency = self._inline_metrics(complaint.channel)
                sent.inc()
                latency.observe(max(0.0, time.time() - submission.received_at))
            return self._outcome(receipt, channel)

    @contextlib.asynccontextmanager
    async def _in_turn(self, group: str) -> AsyncIterator[None]:
        """One message of ``group`` at a time in this worker, so that exactly one of them opens it."""
        turn = self._turns.setdefault(group, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[group]

    def _converse(
        self,
        submission: Submission,
        complaint: Complaint,
        address: dict[str, Any] | None,
        acknowledgement: Acknowledgement | None,
        received_at: dt.datetime,
        interception: Interception | None,
    ) -> None:
        """What the message tells the conversation: a new complaint's route, a follow-up's newer message, an answer."""
        at = received_at.timestamp()
        if interception is not None:
            submission.feedback = interception.feedback
        followed = _followed(complaint, interception)
        if followed:
            # Threaded under the newest message on channels that thread; elsewhere the address stays as it was.
            newest = address if complaint.channel in _THREADED and address else None
            submission.follows_up = FollowUp(reference=followed, channel=complaint.channel, at=at, address=newest)
            return
        if interception is not None:
            return
        person = complaint.complainant
        contacts = {"email": person.email, "phone": person.phone, "preferred": person.preferred_contact}
        locale = acknowledgement.locale if acknowledgement is not None else self._locale(
            tuple(tag for tag in (person.locale, complaint.language) if tag)
        )
        address = dict(address or {})
        if complaint.channel == "webhook" and person.handle:
            address.setdefault("customer_id", person.handle)  # the partner's own id of its customer, for its callback
        submission.route = Route(
            channel=complaint.channel,
            address=address,
            locale=locale,
            last_inbound_at=at,
            contacts={name: value for name, value in contacts.items() if value},
        )

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a few channels per gateway, and the gateway lives as long as the process
    def _inline_metrics(self, channel: str) -> tuple[Any, Any]:
        """The labelled children, looked up once per channel rather than under a lock per message."""
        return self._metrics.acknowledgements.labels(channel=channel, outcome="sent"), self._metrics.acknowledgement_latency.labels(channel=channel)

    async def _dead_letter(self, submission: Submission, channel_message_id: str, error: str, received_at: dt.datetime) -> Outcome:
        """Keep the raw message and tell the dead-letter topic why it is not a record."""
        channel = submission.channel
        ident = complaint_id(channel, channel_message_id)  # type: ignore[arg-type]
        submission.reference = reference_for(channel, channel_message_id)  # type: ignore[arg-type]
        submission.raw_digest = hashlib.sha256(submission.raw).hexdigest()
        submission.dead_letter = True
        # The reason is kept with the message too: `intake spool dead-letters` shows it long after the event was published.
        submission.answer = {"reference": submission.reference, "complaint_id": str(ident), "dead_lettered": True, "error": error[:500]}
        submission.events = [
            events.dead_letter_event(
                spool_key=submission.key,
                complaint_id=ident,
                reference=submission.reference,
                channel=submission.channel,
                error=error[:2000].encode("utf-8", "replace").decode(),  # a lone surrogate quoted from the input
                raw_sha256=submission.raw_digest,
                raw_size=len(submission.raw),
                received_at=received_at,
                topic=self._dead_letter_topic,
                source=self._source,
            )
        ]
        return self._outcome(await self.spool.accept(submission), submission.channel)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - as _inline_metrics
    def _received(self, channel: str, outcome: str) -> Any:
        return self._metrics.received.labels(channel=channel, outcome=outcome)

    def _outcome(self, receipt: Any, channel: str) -> Outcome:
        answer = receipt.answer
        label = "duplicate" if receipt.duplicate else "dead_lettered" if answer.get("dead_lettered") else "automated" if answer.get("automated") else "accepted"
        self._received(channel, label).inc()
        # One line per message taken in, on every channel: ids and outcome, never what the customer wrote or who they are.
        log.info(
            "message received",
            extra={"event": "received", "channel": channel, "reference": answer["reference"], "complaint_id": answer["complaint_id"], "outcome": label},
        )
        return Outcome(
            reference=answer["reference"],
            complaint_id=answer["complaint_id"],
            duplicate=receipt.duplicate,
            same_content=receipt.same_content,
            acknowledgement=answer.get("acknowledgement"),
            dead_lettered=bool(answer.get("dead_lettered")),
            automated=bool(answer.get("automated")),
        )


def _followed(complaint: Complaint, interception: Interception | None) -> str | None:
    """The complaint a message continues: the one it names, else the one whose survey it answers (a bare score by SMS)."""
    if complaint.follows_up:
        return complaint.follows_up
    return interception.feedback.reference if interception is not None and interception.feedback is not None else None


def _ack_dict(acknowledgement: Acknowledgement) -> dict[str, str]:
    return {
        "locale": acknowledgement.locale,
        "direction": acknowledgement.direction,
        "subject": acknowledgement.subject,
        "text": acknowledgement.text,
        "short": acknowledgement.short,
    }
