"""Telegram bot channel: updates in by webhook or by our own long polling, answers out by sendMessage.

Both ways in end in the same place: an update becomes a complaint only once
the spool has it, and only then is Telegram told so.

* Webhook: Telegram POSTs each update with ``X-Telegram-Bot-Api-Secret-Token``;
  the answer is 200 after the spool write, 5xx if it failed (Telegram retries).
* Long polling: our own getUpdates loop. The offset (last update_id + 1) lives
  in the spool's cursor table and is written in the same transaction as the
  message, so a crash re-fetches exactly what was not yet stored. PTB's
  ``Updater.start_polling`` is not used: it confirms updates before they are
  handled, and a crash loses them.

Acknowledgements go through the spool (``ack="reply"``) and are sent as a
reply to the customer's message by :meth:`TelegramChannel.send_reply`; what
downstream tells the complainant later (``intake.twoway``) by
:meth:`TelegramChannel.deliver`, the same way.

A survey is asked natively: an inline keyboard of 1 to 5 under the question,
then, once pressed, 0 to 10 (would you recommend us) and "skip". A press is a
``callback_query`` update. It is answered at once (answerCallbackQuery: the
customer's app shows a spinner until then) and recorded as the complainant's
answer with its ``intake.feedback.received.v1`` event, once however often it is
pressed or delivered, and only from the chat the survey went to: a client can
put any data into a callback, so the data names the complaint and the survey
and both are checked against what the spool knows.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from intake.attachments import AttachmentStore
from intake.errors import Rejected, TemporaryFailure
from intake.feedback import record as record_feedback
from intake.http import BodyTooLarge, BodyTooSlow, BodyUnreadable, read_body
from intake.i18n import translations
from intake.problems import problem
from intake.pause import pause
from intake.texts import compose_feedback_thanks, compose_survey_nps
from intake.twoway import Delivered, Feedback, OutboundMessage, Route, Survey
from intake.normalizer import telegram as normalize
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Attachment

if TYPE_CHECKING:  # intake.config imports this module for TelegramConfig
    from intake.acknowledgement import Acknowledgement
    from intake.metrics import Metrics
    from intake.reception import Outcome, Reception
    from intake.twoway import Conversations
    from intake.normalizer.record import Complaint

log = logging.getLogger("intake.telegram")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# edited_message is asked for so that an edit is seen and skipped on purpose, not silently missed;
# callback_query carries the presses of a survey's buttons.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")
_TOKEN = r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,}$"
_SECRET = r"^[A-Za-z0-9_-]{1,256}$"  # what setWebhook accepts as secret_token
# Telegram's update ids are positive and sequential; the bound keeps the cursor (update_id + 1) a 64-bit integer.
_MAX_UPDATE_ID = 2**63 - 2
# A survey button's callback_data (at most 64 bytes): question (c: 1-5, n: 0-10), reference, survey tag, score or "-" (skip).
_PRESS = re.compile(r"^([cn]):(C-[0-9A-Z]{4}-[0-9A-Z]{4}):([A-Za-z0-9_-]{11}):(10|[0-9]|-)$")


class TelegramConfig(BaseModel):
    """The Telegram bot channel; off unless ``enabled`` and a ``token`` are given."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Take complaints from a Telegram bot.")
    token: SecretStr | None = Field(None, description="The bot's token from @BotFather, e.g. 123456:ABC-…; required when enabled.")
    mode: Literal["polling", "webhook"] = Field(
        "polling",
        description="polling: our own getUpdates loop (works behind NAT, one gateway per bot); "
        "webhook: Telegram POSTs to webhook_path (needs a public HTTPS URL; any number of replicas).",
    )
    api_url: str = Field(
        "https://api.telegram.org",
        description="Bot API server; methods are called at <api_url>/bot<token>/, files fetched from <api_url>/file/bot<token>/. "
        "Change for a self-hosted Bot API server (or a test stand-in).",
    )
    webhook_path: str = Field("/telegram/webhook", pattern=r"^/[A-Za-z0-9/_-]*$", description="Path of the webhook on this gateway.")
    webhook_secret: SecretStr | None = Field(
        None,
        description="secret_token given to setWebhook; Telegram sends it in X-Telegram-Bot-Api-Secret-Token. "
        "Required in webhook mode: 1-256 characters A-Z a-z 0-9 _ -.",
    )
    set_webhook: bool = Field(
        False,
        description="In webhook mode, call setWebhook at start with http.public_base_url + webhook_path and webhook_secret. "
        "Off: register the webhook yourself.",
    )
    poll_timeout_seconds: int = Field(25, ge=0, le=50, description="Long-polling wait of one getUpdates call (Telegram allows up to 50).")
    poll_limit: int = Field(100, ge=1, le=100, description="Most updates fetched per getUpdates call.")
    request_timeout_seconds: float = Field(10.0, gt=0, le=120, description="Bound on connecting to and hearing back from the Bot API (on top of the long-poll wait).")
    retry_initial_seconds: float = Field(1.0, gt=0, description="First wait after a failed getUpdates; doubles on each further failure.")
    retry_max_seconds: float = Field(60.0, gt=0, description="Longest wait between failed getUpdates calls.")
    download_files: bool = Field(
        False,
        description="Fetch photos and documents (getFile + file URL) into the attachment store before the message is spooled. "
        "Off: attachments carry their metadata and a tg-file:<file_id> location.",
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest webhook body accepted (an Update is a few kB).")

    @model_validator(mode="after")
    def _complete(self) -> "TelegramConfig":
        if not self.enabled:
            return self
        if self.token is None or not re.fullmatch(_TOKEN, self.token.get_secret_value()):
            raise ValueError("telegram.token is required when enabled and looks like 123456:ABC-DEF…")
        if self.mode == "webhook":
            if self.webhook_secret is None or not re.fullmatch(_SECRET, self.webhook_secret.get_secret_value()):
                raise ValueError("telegram.webhook_secret is required in webhook mode: 1-256 characters A-Z a-z 0-9 _ -")
        return self

    @property
    def bot_id(self) -> int:
        """The bot's own user id: the token's first part, public and known without asking Telegram."""
        assert self.token is not None
        return int(self.token.get_secret_value().split(":", 1)[0])


class IntakeBot(Bot):
    """PTB's Bot, plus a getUpdates that hands back each update's JSON as Telegram sent it.

    ``Bot.get_updates`` parses the whole batch into Update objects: one update
    PTB cannot parse would fail every call and stop the channel for good, and
    ``Update.to_json`` is not what was received. Going through ``_post`` (the
    call ``get_updates`` makes, on the same getUpdates connection, with the same
    error mapping) keeps the raw JSON and lets a bad update be dead-lettered alone.
    """

    async def get_raw_updates(self, *, offset: int | None, timeout: int, limit: int, allowed_updates: list[str], read_timeout: float) -> list[dict[str, Any]]:
        data = {"offset": offset, "timeout": timeout, "limit": limit, "allowed_updates": allowed_updates}
        result = await self._post("getUpdates", data, read_timeout=read_timeout)
        if not isinstance(result, list):
            raise TelegramError("getUpdates did not return a list")
        return result


def help_text(language_code: str | None) -> str:
    """How to complain here, in the customer's language (the answer to /start and /help)."""
    _ = translations(language_code).gettext
    return "\n\n".join(
        (
            _("Hello! This chat takes complaints."),
            _(
                "Write what happened in your own words; you can add photos or documents."
                " We will answer at once with a reference number."
            ),
            _("To add to a complaint you have made, reply to our message or quote its reference."),
        )
    )


class TelegramChannel:
    """The receiving side (webhook handler, polling loop) and the replying side (sendMessage) of one bot."""

    def __init__(
        self,
        config: TelegramConfig,
        reception: Reception,
        attachments: AttachmentStore,
        *,
        public_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        conversations: Conversations | None = None,
        metrics: Metrics | None = None,
        topic: str = "complaints",
        source: str = "urn:intake",
    ) -> None:
        """``conversations`` (the spool), ``metrics``, ``topic`` and ``source``: where survey answers are recorded;
        without ``conversations`` a press is answered and ignored."""
        assert config.token is not None, "TelegramConfig validates the token when enabled"
        if config.mode == "webhook" and config.set_webhook and not public_base_url:
            raise ValueError("telegram.set_webhook needs http.public_base_url: the URL Telegram is to call")
        self._config = config
        self._token = config.token.get_secret_value()
        self._reception = reception
        reception.replayable("telegram", self._replay)
        self._attachments = attachments
        self._clock = clock
        self._conversations = conversations
        self._metrics = metrics
        self._topic = topic
        self._source = source
        self._webhook_url = (public_base_url or "").rstrip("/") + config.webhook_path
        self.bot_id = config.bot_id
        self.cursor_name = f"telegram:{self.bot_id}"
        # Every Bot API URL carries the token: httpx logs each request URL at INFO, PTB its calls
        # (with message texts) at DEBUG. Neither may reach our logs, whatever the gateway's log level.
        for name in ("httpx", "telegram"):
            logging.getLogger(name).setLevel(logging.WARNING)
        timeout = config.request_timeout_seconds
        self.bot = IntakeBot(
            self._token,
            base_url=f"{config.api_url.rstrip('/')}/bot",
            base_file_url=f"{config.api_url.rstrip('/')}/file/bot",
            request=HTTPXRequest(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout, pool_timeout=timeout),
            get_updates_request=HTTPXRequest(connection_pool_size=1, connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout, pool_timeout=timeout),
        )
        self._stopping = asyncio.Event()
        self._trouble: str | None = "connecting to the Bot API"  # why the bot is not working now, for /readyz

    def _plain(self, error: BaseException) -> str:
        """An error's text fit for logs and the spool: PTB puts the token into some messages (InvalidToken at initialize)."""
        return str(error).replace(self._token, "<token>")

    def routes(self) -> list[web.RouteDef]:
        # In polling mode there is no webhook: Telegram refuses getUpdates while one is set.
        return [web.post(self._config.webhook_path, self.receive_webhook)] if self._config.mode == "webhook" else []

    # --- life -------------------------------------------------------------------

    name = "telegram"

    async def run(self) -> None:
        """The bot's life under the supervisor: an unreachable Bot API is retried here and never stops the gateway."""
        try:
            await self._until_ready()
            if self._config.mode == "polling" and not self._stopping.is_set():
                await self._poll()
            else:
                await self._stopping.wait()  # webhook mode: updates arrive through receive_webhook
        finally:
            if self._stopping.is_set():
                await self.bot.shutdown()

    async def stop(self) -> None:
        """Stop fetching at once (an open long poll is abandoned) and let the update in hand reach the spool."""
        self._stopping.set()

    def health(self) -> str | None:
        return self._trouble

    async def _until_ready(self) -> None:
        """getMe (checks the token), then register or remove the webhook; retried with backoff until it works or we stop."""
        delay = self._config.retry_initial_seconds
        while not self._stopping.is_set():
            try:
                await self.bot.initialize()
                if self._config.mode == "polling":
                    # A webhook left behind makes every getUpdates fail with 409; pending updates are kept.
                    await self.bot.delete_webhook(drop_pending_updates=False)
                elif self._config.set_webhook:
                    assert self._config.webhook_secret is not None
                    await self.bot.set_webhook(
                        url=self._webhook_url,
                        secret_token=self._config.webhook_secret.get_secret_value(),
                        allowed_updates=list(ALLOWED_UPDATES),
                    )
                log.info("telegram bot ready", extra={"event": "telegram_ready", "mode": self._config.mode, "bot": self.bot_id})
                self._trouble = None
                return
            except RetryAfter as error:
                delay = max(delay, _seconds(error))
                log.warning("telegram asks us to wait", extra={"event": "telegram_retry_after", "seconds": delay})
            except InvalidToken:
                self._trouble = "the Bot API rejected the token"
                log.error("telegram rejected the bot token; check telegram.token", extra={"event": "telegram_bad_token", "retry_in": delay})
            except TelegramError as error:
                self._trouble = f"Bot API not reachable: {type(error).__name__}"
                log.warning("telegram bot not ready; will retry", extra={"event": "telegram_not_ready", "error": self._plain(error), "retry_in": delay})
            await self._pause(delay)
            delay = min(delay * 2, self._config.retry_max_seconds)

    async def _pause(self, seconds: float) -> None:
        await pause(self._stopping, seconds)

    # --- long polling -------------------------------------------------------------

    async def _poll(self) -> None:
        stored = await self._reception.spool.cursor(self.cursor_name)
        offset = int(stored) if stored is not None else None
        delay = self._config.retry_initial_seconds
        while not self._stopping.is_set():
            try:
                updates = await self._fetch(offset)
            except RetryAfter as error:
                await self._pause(_seconds(error))
                continue
            except (Conflict, InvalidToken, TelegramError) as error:
                # Conflict: a webhook is set or another gateway polls this bot; InvalidToken: the token was revoked;
                # NetworkError / TimedOut: the Bot API is out of reach. All pass; none is worth stopping for.
                self._trouble = f"getUpdates failing: {type(error).__name__}"
                log.warning("getUpdates failed; will retry", extra={"event": "telegram_poll_failed", "error": self._plain(error), "retry_in": delay})
                await self._pause(delay)
                delay = min(delay * 2, self._config.retry_max_seconds)
                continue
            if updates is None:  # stopping
                return
            self._trouble = None
            delay = self._config.retry_initial_seconds
            for update in updates:
                update_id = _update_id(update)
                if update_id is None:
                    log.error("update without update_id skipped", extra={"event": "telegram_bad_update"})
                    continue
                if offset is not None and update_id < offset:
                    continue  # already stored: a server that re-sent it
                raw = json.dumps(update, ensure_ascii=False, separators=(",", ":")).encode()
                try:
                    await self._take(raw, update_id=update_id, cursor=(self.cursor_name, str(update_id + 1)))
                except TemporaryFailure as error:
                    # Not stored, so not confirmed: the next getUpdates from the same offset brings it again.
                    log.warning("update not stored; will fetch it again", extra={"event": "telegram_retry", "update_id": update_id, "error": str(error)})
                    await self._pause(min(max(delay, error.retry_after), self._config.retry_max_seconds))
                    delay = min(delay * 2, self._config.retry_max_seconds)
                    break
                offset = update_id + 1

    async def _fetch(self, offset: int | None) -> list[dict[str, Any]] | None:
        """One getUpdates call, abandoned as soon as the gateway stops (None then)."""
        fetch = asyncio.ensure_future(
            self.bot.get_raw_updates(
                offset=offset,
                timeout=self._config.poll_timeout_seconds,
                limit=self._config.poll_limit,
                allowed_updates=list(ALLOWED_UPDATES),
                read_timeout=self._config.poll_timeout_seconds + self._config.request_timeout_seconds,
            )
        )
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not fetch.done():
            # Nothing fetched is lost: whatever this call would have returned is not confirmed until the next offset.
            fetch.cancel()
            return None
        return fetch.result()

    # --- the webhook ----------------------------------------------------------------

    def _authentic(self, request: web.Request) -> bool:
        assert self._config.webhook_secret is not None
        offered = request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(offered, self._config.webhook_secret.get_secret_value().encode())

    async def receive_webhook(self, request: web.Request) -> web.Response:
        if not self._authentic(request):
            return problem(403, "Forbidden", f"{SECRET_HEADER} is missing or wrong")
        try:
            raw = await read_body(request, self._config.max_body_bytes)
        except BodyTooLarge as error:
            return problem(413, "Body too large", str(error))
        except BodyTooSlow as error:
            return problem(408, "Request timeout", f"the body was {error}; send it again")
        except BodyUnreadable:
            return problem(400, "Body unreadable", "the body ended early or its framing or compression is broken")
        try:
            update_id = _update_id(json.loads(raw))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # ValueError: not JSON (JSONDecodeError), or an integer past Python's 4300-digit limit; RecursionError:
            # nesting deeper than the parser goes. Content, all of it: a 400, never a 500.
            update_id = None
        if update_id is None:
            # Without an update_id it cannot have come from Telegram, and there is nothing to name it by.
            return problem(400, "Not a Telegram Update", "expected a JSON object with an integer update_id")
        try:
            await self._take(raw, update_id=update_id, cursor=None)
        except TemporaryFailure as error:
            # 503: Telegram delivers the update again later.
            return problem(503, "Try again later", str(error), retry_after=error.retry_after)
        # Empty on purpose: a JSON answer with a "method" field would be executed by Telegram.
        return web.Response(status=200)

    # --- one update -------------------------------------------------------------------

    async def _replay(self, raw: bytes, received_at: dt.datetime, context: dict[str, Any], channel_message_id: str) -> Outcome:
        """A dead letter taken in again; a message that reads now is acknowledged in its chat, as it was not before."""
        try:
            message = normalize.parse(raw).message
        except InvalidMessage:
            message = None
        reply_to = (message.chat.id, message.message_id) if message is not None else None
        return await self._store(raw, channel_message_id, received_at, cursor=None, stored={}, reply_to=reply_to)

    async def _take(self, raw: bytes, *, update_id: int, cursor: tuple[str, str] | None) -> None:
        """Store a complaint, answer a command, or skip; the cursor (polling) moves only once that is durable.

        Raises TemporaryFailure when nothing was stored and the update must come again.
        """
        received_at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        press = _callback_query(raw)
        if press is not None:
            # An answer, not a complaint: recorded (idempotently) in the spool by the survey's own transaction.
            await self._answer_press(press, received_at)
            if cursor is not None:
                await self._reception.spool.set_cursor(*cursor)
            return
        try:
            update = normalize.parse(raw)
        except InvalidMessage:
            await self._store(raw, f"update:{update_id}", received_at, cursor=cursor, stored={}, reply_to=None)
            return
        classified = normalize.classify(update)
        message = update.message
        if classified.kind == "ignored" or message is None:
            log.info("update skipped", extra={"event": "telegram_skipped", "update_id": update_id, "reason": classified.reason})
        elif classified.kind == "command":
            language = message.from_user.language_code if message.from_user else None
            try:
                await self._send(message.chat.id, help_text(language), reply_to=None)
            except Rejected as error:  # the customer blocked the bot: nobody to tell
                log.info("help not sent", extra={"event": "telegram_help_rejected", "update_id": update_id, "error": str(error)})
            else:
                log.info("help sent", extra={"event": "telegram_help", "update_id": update_id, "command": classified.command})
        else:
            stored = await self._download(message) if self._config.download_files else {}
            await self._store(
                raw,
                normalize.channel_message_id(message),
                received_at,
                cursor=cursor,
                stored=stored,
                reply_to=(message.chat.id, message.message_id),
                group=normalize.group(message, self.bot_id),
            )
            return
        if cursor is not None:
            await self._reception.spool.set_cursor(*cursor)

    async def _store(
        self,
        raw: bytes,
        channel_message_id: str,
        received_at: dt.datetime,
        *,
        cursor: tuple[str, str] | None,
        stored: dict[str, Attachment],
        reply_to: tuple[int, int] | None,
        group: str | None = None,
    ) -> Outcome:
        def reply_payload(complaint: Complaint, acknowledgement: Acknowledgement) -> dict[str, Any]:
            assert reply_to is not None
            return {"chat_id": reply_to[0], "message_id": reply_to[1], "text": acknowledgement.short}

        outcome = await self._reception.receive(
            channel="telegram",
            channel_message_id=channel_message_id,
            raw=raw,
            normalize=lambda: normalize.to_complaint(raw, received_at=received_at, bot_id=self.bot_id, stored=stored),
            received_at=received_at,
            # A message we cannot read still reaches the dead-letter topic; nobody can be acknowledged then.
            ack="reply" if reply_to is not None else "none",
            reply_payload=reply_payload,
            context={"mode": self._config.mode},
            route={"chat_id": reply_to[0], "message_id": reply_to[1]} if reply_to is not None else None,
            cursor=cursor,
            # Telegram cannot be told "this update is bad": refusing it would only bring it back, so keep it for replay.
            dead_letter_invalid=True,
            group=group,
        )
        log.info(
            "telegram message stored",
            extra={"event": "telegram_stored", "reference": outcome.reference, "duplicate": outcome.duplicate, "dead_lettered": outcome.dead_lettered},
        )
        return outcome

    async def _download(self, message: Message) -> dict[str, Attachment]:
        """Keep the message's files in the attachment store; a file Telegram will not hand out keeps its tg-file location."""
        kept: dict[str, Attachment] = {}
        for item in normalize.files(message):
            if item.size is not None and item.size > self._attachments.max_bytes:
                continue
            try:
                file = await self.bot.get_file(item.file_id)
                if file.file_size is not None and file.file_size > self._attachments.max_bytes:
                    continue
                data = bytes(await file.download_as_bytearray())
            except BadRequest as error:  # "file is too big" (over 20 MB) or gone: described, not stored
                log.info("file not downloaded", extra={"event": "telegram_file_kept_remote", "error": self._plain(error)})
                continue
            except (NetworkError, InvalidToken, RetryAfter, TelegramError) as error:
                raise TemporaryFailure(f"telegram file download: {self._plain(error)}") from None
            try:
                kept[item.file_unique_id] = await self._attachments.put(data, filename=item.filename, content_type=item.content_type)
            except Rejected:  # larger than the store takes: keep the metadata and the remote location
                continue
        return kept

    # --- the replying side ------------------------------------------------------------

    async def send_reply(self, payload: dict[str, Any]) -> None:
        """Send a spooled acknowledgement as a reply to the customer's message."""
        if self._stopping.is_set():
            raise TemporaryFailure("the telegram channel is stopping")
        await self._send(int(payload["chat_id"]), str(payload["text"]), reply_to=payload.get("message_id"))

    def can_deliver(self, route: Route) -> bool:
        """Only a complaint made in a Telegram chat can be answered here: a bot cannot start a chat with anyone."""
        return route.channel == "telegram" and type(route.address.get("chat_id")) is int

    async def deliver(self, message: OutboundMessage) -> Delivered:
        """``gateway.outbound_senders["telegram"]``: a reply to the complainant's message in their chat; a survey with its buttons."""
        if self._stopping.is_set():
            raise TemporaryFailure("the telegram channel is stopping")
        if message.via != "telegram" or not self.can_deliver(message.route):
            raise Rejected("no Telegram chat for this complainant")
        text = message.short
        if message.attachment_urls:
            # Links, not uploads: the files stay where downstream keeps them; Telegram shows a preview of the first.
            text += "\n\n" + "\n".join(message.attachment_urls)
        markup = None
        if message.kind == "survey" and message.survey is not None:
            markup = _csat_keyboard(message.reference, message.survey)
        reply_to = message.route.address.get("message_id")
        sent = await self._send(message.route.address["chat_id"], text, reply_to=reply_to if type(reply_to) is int else None, markup=markup)
        return Delivered(provider_id=str(sent.message_id))

    # --- survey answers ----------------------------------------------------------------

    async def _answer_press(self, query: dict[str, Any], received_at: dt.datetime) -> None:
        """A survey button pressed: answered at once, recorded once; anything we cannot place is answered and ignored.

        Raises TemporaryFailure when the answer could not be stored: the update comes again, and is recorded then.
        """
        query_id = query.get("id")
        press = await self._understand(query)
        if press is None:
            log.info("callback ignored", extra={"event": "telegram_press_ignored"})
            await self._answer_query(query_id, None)
            return
        route, survey, question, value = press
        await self._answer_query(query_id, compose_feedback_thanks(route.locale).short)
        chat_id, message_id = query["message"]["chat"]["id"], query["message"]["message_id"]
        if value is None:  # "skip": no answer to record, no question left to show
            await self._edit_keyboard(chat_id, message_id, None)
            return
        feedback = Feedback(
            reference=_reference(query),
            survey_id=survey.survey_id,
            channel="telegram",
            score=value if question == "c" else None,
            nps=value if question == "n" else None,
            # One answer per question and survey message: pressing twice, or Telegram delivering twice, counts once.
            answer_id=f"{chat_id}:{message_id}:{'csat' if question == 'c' else 'nps'}",
        )
        assert self._conversations is not None and self._metrics is not None
        recorded = await record_feedback(
            self._conversations, feedback, metrics=self._metrics, topic=self._topic, source=self._source, received_at=received_at
        )
        log.info("survey answer", extra={"event": "telegram_feedback", "reference": feedback.reference, "question": question, "recorded": recorded})
        if recorded:
            if question == "c" and survey.nps:
                # The same message asks the next question: its text too, not only its buttons.
                await self._ask_nps(chat_id, message_id, route.locale, _nps_keyboard(feedback.reference, survey, route.locale))
            else:
                await self._edit_keyboard(chat_id, message_id, None)

    async def _understand(self, query: dict[str, Any]) -> tuple[Route, Survey, str, int | None] | None:
        """(route, survey, question, score) of a press from the chat its survey went to, for the survey still open; else None."""
        data = query.get("data")
        message = query.get("message")
        matched = _PRESS.fullmatch(data) if isinstance(data, str) else None
        if matched is None or self._conversations is None or self._metrics is None or not isinstance(message, dict):
            return None
        chat_id = (message.get("chat") or {}).get("id")
        if type(chat_id) is not int or type(message.get("message_id")) is not int:
            return None
        question, reference, tag, shown = matched.groups()
        value = None if shown == "-" else int(shown)
        if question == "c" and (value is None or not 1 <= value <= 5):
            return None
        route = await self._conversations.route(reference)
        if route is None or route.channel != "telegram" or route.address.get("chat_id") != chat_id:
            return None  # not this chat's complaint: someone else's reference in forged data, or a forwarded keyboard
        survey = await self._conversations.open_survey(reference)
        if survey is None or _survey_tag(survey.survey_id) != tag or (question == "n" and not survey.nps):
            return None  # a survey already closed, or one that was never asked
        return route, survey, question, value

    async def _answer_query(self, query_id: object, text: str | None) -> None:
        """answerCallbackQuery: stops the spinner on the customer's button. Its failure loses nothing; the answer is recorded anyway."""
        if not isinstance(query_id, str):
            return
        try:
            await self.bot.answer_callback_query(query_id, text=text)
        except TelegramError as error:  # "query is too old" on a redelivered update, or the Bot API away
            log.info("callback query not answered", extra={"event": "telegram_press_unanswered", "error": self._plain(error)})

    async def _edit_keyboard(self, chat_id: int, message_id: int, markup: InlineKeyboardMarkup | None) -> None:
        """editMessageReplyMarkup; None takes the keyboard away. A failure leaves the old one, whose presses are then ignored or counted once."""
        try:
            await self.bot.edit_message_reply_markup(chat_id=chat_id, message_id=message_id, reply_markup=markup)
        except TelegramError as error:  # "message is not modified", a message too old to edit, the Bot API away
            log.info("survey keyboard not changed", extra={"event": "telegram_keyboard_unchanged", "error": self._plain(error)})

    async def _ask_nps(self, chat_id: int, message_id: int, locale: str, markup: InlineKeyboardMarkup) -> None:
        """editMessageText: the survey's message becomes the NPS question with its 0 to 10 keyboard."""
        question = compose_survey_nps(locale).short
        try:
            await self.bot.edit_message_text(question, chat_id=chat_id, message_id=message_id, reply_markup=markup)
        except TelegramError as error:
            log.info("survey question not changed", extra={"event": "telegram_keyboard_unchanged", "error": self._plain(error)})

    async def _send(self, chat_id: int, text: str, *, reply_to: int | None, markup: InlineKeyboardMarkup | None = None) -> Message:
        """sendMessage; TemporaryFailure to try again later, Rejected when it can never be delivered."""
        # Sent even if the customer deleted their message meanwhile: the reference is what matters.
        reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
        try:
            return await self.bot.send_message(chat_id=chat_id, text=text, reply_parameters=reply, reply_markup=markup)
        except ChatMigrated as error:
            # A group became a supergroup: the same conversation under a new id; the old message id means nothing there.
            return await self._send(error.new_chat_id, text, reply_to=None, markup=markup)
        except RetryAfter as error:
            failure = TemporaryFailure("telegram flood control: asked to wait")
            failure.retry_after = _seconds(error)
            raise failure from None
        except Forbidden as error:  # blocked by the user, deactivated, kicked from the group
            raise Rejected(f"telegram refused: {self._plain(error)}") from None
        except BadRequest as error:  # chat not found, text invalid: the same request will never work
            raise Rejected(f"telegram refused: {self._plain(error)}") from None
        except InvalidToken:  # our configuration, not the customer: retry while someone fixes it
            raise TemporaryFailure("telegram rejected the bot token") from None
        except (NetworkError, TelegramError) as error:  # timeouts, 5xx, connection refused
            raise TemporaryFailure(f"telegram: {self._plain(error)}") from None


def _update_id(update: object) -> int | None:
    """The update_id of a decoded Update, or None when it has none that Telegram could have sent."""
    update_id = update.get("update_id") if isinstance(update, dict) else None
    # type(), not isinstance(): JSON true is a Python bool, which is an int.
    if type(update_id) is not int or not 0 <= update_id <= _MAX_UPDATE_ID:
        return None
    return update_id


def _callback_query(raw: bytes) -> dict[str, Any] | None:
    """The update's callback_query, if it is one (a survey button pressed)."""
    try:
        update = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    query = update.get("callback_query") if isinstance(update, dict) else None
    return query if isinstance(query, dict) else None


def _reference(query: dict[str, Any]) -> str:
    return str(query["data"]).split(":")[1]


def _survey_tag(survey_id: str) -> str:
    """11 characters naming a survey in callback_data (64 bytes at most, where a survey id may not fit); 66 bits of SHA-256."""
    return base64.urlsafe_b64encode(hashlib.sha256(survey_id.encode()).digest()[:9]).decode()[:11]


def _csat_keyboard(reference: str, survey: Survey) -> InlineKeyboardMarkup:
    tag = _survey_tag(survey.survey_id)
    return InlineKeyboardMarkup([[InlineKeyboardButton(str(score), callback_data=f"c:{reference}:{tag}:{score}") for score in range(1, 6)]])


def _nps_keyboard(reference: str, survey: Survey, locale: str) -> InlineKeyboardMarkup:
    """0 to 10 in two rows (eleven buttons in one are too narrow to hit on a phone), then "skip"."""
    tag = _survey_tag(survey.survey_id)
    button = lambda score: InlineKeyboardButton(str(score), callback_data=f"n:{reference}:{tag}:{score}")  # noqa: E731
    skip = InlineKeyboardButton(translations(locale).gettext("Skip"), callback_data=f"n:{reference}:{tag}:-")
    return InlineKeyboardMarkup([[button(score) for score in range(0, 6)], [button(score) for score in range(6, 11)], [skip]])


def _seconds(error: RetryAfter) -> float:
    """How long Telegram asks us to wait."""
    with warnings.catch_warnings():
        # PTB 22 warns that retry_after is to become a timedelta; both kinds are handled here.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
