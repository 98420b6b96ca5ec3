"""Delivery of downstream's commands to complainants: from the spool, in order per complaint, with retries.

A component (``delivery``) like ``intake.replies``: it takes the first pending
command of each reference (the next of that reference waits until this one is
delivered or given up on), chooses where it goes, composes it in the
complainant's language (``intake.texts``) and hands it to the channel's
:class:`~intake.twoway.OutboundSender`. Where it goes:

1. the complaint's own channel, when a sender for it is registered and can
   carry it (a sender may say no with ``can_deliver(route)``; WhatsApp outside
   its 24-hour window only with a configured template, and never a survey);
2. else the complainant's preferred contact, then email, then phone by SMS.
   A web form complaint always goes by these.

When the sender returns, the command's outcome ``intake.reply.delivered.v1``,
the status the complainant now knows, the survey now open and a survey that a
status causes (``outbound.survey_on``) are written in one spool transaction.
A temporary failure is retried with exponential backoff, bounded by
``outbound.max_attempts``; then, or on a permanent failure,
``intake.reply.failed.v1`` says why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from intake import commands, events, texts
from intake.config import OutboundConfig
from intake.errors import Rejected, TemporaryFailure
from intake.metrics import Metrics
from intake.pause import pause
from intake.spool import CommandIntake, Spool, StoredCommand
from intake.twoway import (
    REPLYABLE,
    Conversations,
    Delivered,
    OutboundMessage,
    OutboundSender,
    Route,
    Survey,
    SurveyLinks,
    reply_address,
)

log = logging.getLogger("intake.delivery")

WHATSAPP_WINDOW_SECONDS = 24 * 3600  # Meta's customer-service window: free text only within it


class Undeliverable(Exception):
    """No channel can carry this command to its complainant: given up at once, with why."""


@dataclass(frozen=True)
class Target:
    via: str  # the sender's key, the channel it goes out on
    route: Route  # the complaint's own route, or one made from a contact
    note: str | None = None
    template: bool = False


class Delivery:
    def __init__(
        self,
        spool: Spool,
        metrics: Metrics,
        senders: Mapping[str, OutboundSender],
        config: OutboundConfig,
        *,
        topic: str,
        source: str,
        survey_links: SurveyLinks | None = None,
        poll_interval: float = 0.5,
        spool_retry: float = 2.0,
        clock: Callable[[], float] = time.time,
        conversations: Conversations | None = None,
    ) -> None:
        self._spool = spool
        # Where routes are looked up: the spool, or every worker's (intake.conversations).
        self._conversations: Conversations = conversations if conversations is not None else spool
        self._metrics = metrics
        # Kept by reference: channels register their senders after the gateway has built this.
        self._senders = senders
        self._config = config
        self._topic = topic
        self._source = source
        self.survey_links = survey_links
        self._poll_interval = poll_interval
        self._spool_retry = spool_retry
        self._clock = clock
        self._stopping = asyncio.Event()
        self.name = "delivery"
        self.spool_error: str | None = None

    def health(self) -> str | None:
        return None if self.spool_error is None else f"spool: {self.spool_error}"

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                due = await self._spool.due_commands(self._clock(), limit=self._config.concurrency)
                if due:
                    # One per reference by construction: side by side without breaking any complaint's order.
                    await asyncio.gather(*(self._deliver(command) for command in due))
            except TemporaryFailure as error:
                if self.spool_error is None:
                    log.error("the spool failed under delivery; retrying", extra={"event": "delivery_spool_error", "error": str(error)})
                self.spool_error = str(error)[:300]
                await pause(self._stopping, self._spool_retry)
                continue
            self.spool_error = None
            if not due:
                self._spool.commands_written.clear()
                # Woken by a new command at once; the interval brings retries that have become due.
                try:
                    await asyncio.wait_for(self._wake(), timeout=self._poll_interval)
                except asyncio.TimeoutError:
                    pass

    async def _wake(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        written = asyncio.ensure_future(self._spool.commands_written.wait())
        try:
            await asyncio.wait({stop, written}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            written.cancel()

    # --- one command ----------------------------------------------------------

    async def _deliver(self, stored: StoredCommand) -> None:
        command = commands.Command(ce_id=stored.ce_id, ce_type=stored.ce_type, reference=stored.reference, data=stored.data)
        kind = command.kind
        route = await self._conversations.route(command.reference)
        target: Target | None = None
        try:
            if route is None:
                raise Undeliverable("the complaint's route is no longer kept (past outbound.route_retention_days)")
            target = self._target(route, kind)
            message = self._compose(command, target, own=route.channel)
            sender = self._senders[target.via]
            delivered = await sender.deliver(message)
        except (Undeliverable, Rejected) as error:
            await self._give_up(stored, kind, route, target, str(error))
            return
        except TemporaryFailure as error:
            await self._retry(stored, kind, route, target, str(error), vars(error).get("retry_after", 0.0))
            return
        except Exception as error:  # a sender's bug: retried, bounded, and in no other command's way
            log.error(
                "command delivery failed unexpectedly",
                extra={"event": "delivery_error", "reference": command.reference, "command_id": command.ce_id, "error_type": type(error).__name__},
                exc_info=error,
            )
            await self._retry(stored, kind, route, target, type(error).__name__, 0.0)
            return
        await self._delivered(stored, command, route, target, message, delivered)

    def _target(self, route: Route, kind: str) -> Target:
        """Where the command goes: see the module docstring."""
        refusals: list[str] = []
        own = route.channel
        if own != "web":
            via = own if own in self._senders or own != "mms" else "sms"  # an MMS number takes SMS as well
            sender = self._senders.get(via)
            can = getattr(sender, "can_deliver", None)
            if sender is None:
                refusals.append(f"no sender for {own}")
            elif can is not None and not can(route):
                refusals.append(f"{own} cannot carry it")
            elif own == "whatsapp" and self._clock() - route.last_inbound_at > WHATSAPP_WINDOW_SECONDS:
                if kind == "survey":
                    # A survey the customer cannot answer is no survey: not sent anywhere else either.
                    raise Undeliverable("outside WhatsApp's 24-hour window: a survey cannot be sent as a template")
                if self._config.whatsapp_template_sid:
                    return Target(via, route, note="whatsapp template", template=True)
                refusals.append("outside WhatsApp's 24-hour window and no outbound.whatsapp_template_sid")
            else:
                return Target(via, route)
        for via, address in self._contacts(route):
            sender = self._senders.get(via)
            if sender is None:
                continue
            contact = Route(channel=via, address=address, locale=route.locale, last_inbound_at=route.last_inbound_at, contacts=route.contacts)
            can = getattr(sender, "can_deliver", None)
            if can is not None and not can(contact):
                continue
            note = f"fallback to {via}" + (f" ({refusals[0]})" if refusals else "") if own != "web" else None
            return Target(via, contact, note=note)
        why = "; ".join(refusals) or "no channel of the complaint"
        raise Undeliverable(f"{why}; and no contact of the complainant can be reached")

    @staticmethod
    def _contacts(route: Route) -> list[tuple[str, dict[str, Any]]]:
        """The complainant's contacts in the order to try them: the preferred first, then email, then phone by SMS."""
        email, phone = route.contacts.get("email"), route.contacts.get("phone")
        by = {"email": ("email", {"to": email}) if email else None, "sms": ("sms", {"to": phone}) if phone else None}
        preferred = {"email": "email", "phone": "sms", "sms": "sms", "whatsapp": "sms"}.get(route.contacts.get("preferred") or "")
        order = [preferred] if preferred else []
        order += [name for name in ("email", "sms") if name != preferred]
        return [choice for name in order if (choice := by[name]) is not None]

    def _compose(self, command: commands.Command, target: Target, *, own: str) -> OutboundMessage:
        data = command.data
        locale = data.get("locale") or target.route.locale
        survey = None
        status = None
        if command.kind == "message":
            # A reply reaches us where the complaint came in on a channel that carries replies and goes out on one.
            replyable = own in REPLYABLE and target.via in REPLYABLE
            text = texts.compose_message(command.reference, data["text"], locale, replyable=replyable)
            status = data.get("status")
        elif command.kind == "status":
            status = data["status"]
            text = texts.compose_status(command.reference, status, locale, text=data.get("text"))
        else:
            survey = Survey(survey_id=command.ce_id, nps=data.get("nps", True), comment=data.get("comment", True))
            if target.via == "email" and self.survey_links is not None:
                survey = replace(survey, links=self.survey_links(command.ce_id, command.reference, locale))
            text = texts.compose_survey(command.reference, survey, locale, channel=target.via)
        variables: dict[str, str] = {}
        if target.template:
            values = {"reference": command.reference, "status": status or "", "text": text.short}
            variables = {name: template.format_map(values) for name, template in self._config.whatsapp_template_variables.items()}
        return OutboundMessage(
            command_id=command.ce_id,
            reference=command.reference,
            kind=command.kind,
            via=target.via,
            route=target.route,
            locale=text.locale,
            direction=text.direction,
            subject=text.subject,
            text=text.text,
            short=text.short,
            attachment_urls=tuple(data.get("attachment_urls", ())),
            status=status,
            survey=survey,
            template_sid=self._config.whatsapp_template_sid if target.template else None,
            template_variables=variables,
            command={"type": command.ce_type, "id": command.ce_id, "data": data},
        )

    # --- outcomes -------------------------------------------------------------

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)

    async def _delivered(
        self, stored: StoredCommand, command: commands.Command, route: Route, target: Target, message: OutboundMessage, delivered: Delivered
    ) -> None:
        note = "; ".join(part for part in (target.note, delivered.note) if part) or None
        event = events.reply_outcome_event(
            command_id=command.ce_id, reference=command.reference, kind=command.kind, via=target.via, route_channel=route.channel,
            provider_id=delivered.provider_id, note=note, at=self._now(), topic=self._topic, source=self._source,
        )  # fmt: skip
        status = (message.status, command.data.get("text") if command.kind == "status" else None) if message.status else None
        then = None
        if command.kind == "status" and message.status in self._config.survey_on:
            then = CommandIntake(
                dedupe_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:intake:survey-after:{command.ce_id}")),
                reference=command.reference,
                ce_type=commands.SURVEY,
                data={"reference": command.reference, "nps": True, "comment": True},
            )
        await self._spool.command_done(
            stored.id, [event], status=status, survey=message.survey, survey_channel=target.via,
            survey_asked_of=_asked_of(target), then=then,
        )  # fmt: skip
        self._metrics.outbound_deliveries.labels(channel=target.via, kind=command.kind, outcome="delivered").inc()
        if message.survey is not None:
            self._metrics.surveys_sent.labels(channel=target.via).inc()
        log.info(
            "command delivered",
            extra={"event": "command_delivered", "reference": command.reference, "command_id": command.ce_id, "kind": command.kind, "channel": target.via},
        )

    async def _retry(self, stored: StoredCommand, kind: str, route: Route | None, target: Target | None, error: str, at_least: float) -> None:
        attempts = stored.attempts + 1
        if attempts >= self._config.max_attempts:
            await self._give_up(stored, kind, route, target, f"gave up after {attempts} attempts: {error}")
            return
        delay = max(min(self._config.retry_first_seconds * 2 ** (attempts - 1), self._config.retry_max_seconds), at_least)
        self._metrics.outbound_deliveries.labels(channel=target.via if target else "none", kind=kind, outcome="retried").inc()
        log.warning(
            "command not delivered; will retry",
            extra={"event": "delivery_retry", "reference": stored.reference, "command_id": stored.ce_id, "attempts": attempts, "error": error[:300]},
        )
        await self._spool.command_retry(stored.id, retry_at=self._clock() + delay, error=error)

    async def _give_up(self, stored: StoredCommand, kind: str, route: Route | None, target: Target | None, why: str) -> None:
        log.error(
            "command failed for good",
            extra={"event": "delivery_failed", "reference": stored.reference, "command_id": stored.ce_id, "kind": kind, "error": why[:300]},
        )
        event = events.reply_outcome_event(
            command_id=stored.ce_id, reference=stored.reference, kind=kind, via=target.via if target else None,
            route_channel=route.channel if route else None, note=target.note if target else None, at=self._now(),
            topic=self._topic, source=self._source, failed=why[:500],
        )  # fmt: skip
        await self._spool.command_done(stored.id, [event], failed=True)
        self._metrics.outbound_deliveries.labels(channel=target.via if target else "none", kind=kind, outcome="failed").inc()


def _asked_of(target: Target) -> str | None:
    """Whom a message sent to ``target`` reaches: a survey's answer that names no complaint is found by it."""
    address = target.route.address
    # What each sender writes to: the chat on Telegram, ``to`` elsewhere (a contact's route carries the contact there).
    return reply_address(target.via, address.get("chat_id") if target.via == "telegram" else address.get("to"))
