"""A local stand-in of the Telegram Bot API, for tests: python-telegram-bot talks to it through ``base_url``.

Telegram's cloud cannot be reached from here. This server speaks the Bot
API's real JSON (``{"ok": true, "result": …}``, errors as
``{"ok": false, "error_code": 409, "description": "…"}``, User, Chat, Message,
Update and File objects with their real field names) and keeps the rules that
matter to a gateway that must lose nothing:

* getUpdates long-polls up to ``timeout`` seconds; an update is forgotten only
  once getUpdates is called with an offset above its update_id (confirmed);
  a newer getUpdates call ends an older one with 409, as Telegram does;
* getUpdates answers 409 while a webhook is set;
* a wrong token in the path answers 401 Unauthorized;
* sendMessage takes ``reply_parameters`` (a reply to a message that is not
  there fails with 400 unless ``allow_sending_without_reply``) and an inline
  keyboard, refusing callback_data over 64 bytes (``BUTTON_DATA_INVALID``);
  a chat the bot never met is "chat not found", a blocked bot 403;
* a button press is a ``callback_query`` update (``press``), answered once by
  answerCallbackQuery (again: "query is too old"); editMessageReplyMarkup
  changes the keyboard, and refuses to set the one already there
  ("message is not modified").

Tests enqueue updates, read what the bot sent, and make methods fail for a while.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.gateway import free_port

TOKEN = "7000000001:AAH-stand-in-token-for-tests_0123456789"
BOT_ID = 7000000001
BOT_USERNAME = "intake_test_bot"


def bot_user() -> dict[str, Any]:
    return {"id": BOT_ID, "is_bot": True, "first_name": "Complaints", "username": BOT_USERNAME}


def user(user_id: int = 5550001, *, first_name: str = "Ewa", last_name: str | None = "Nowak", username: str | None = "ewa_n", language_code: str | None = "pl", is_bot: bool = False) -> dict[str, Any]:
    person: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if last_name:
        person["last_name"] = last_name
    if username:
        person["username"] = username
    if language_code:
        person["language_code"] = language_code
    return person


def message(sender: dict[str, Any], message_id: int, *, text: str | None = None, date: int | None = None, **fields: Any) -> dict[str, Any]:
    """A Message in a private chat with ``sender`` (in a private chat, the chat id is the user id)."""
    chat = {"id": sender["id"], "type": "private", "first_name": sender["first_name"]}
    if "username" in sender:
        chat["username"] = sender["username"]
    body: dict[str, Any] = {"message_id": message_id, "from": sender, "chat": chat, "date": date or int(time.time())}
    if text is not None:
        body["text"] = text
        if text.startswith("/"):
            command = text.split()[0]
            body["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
    body.update(fields)
    return body


def photo_sizes(file_id: str, file_unique_id: str) -> list[dict[str, Any]]:
    """The sizes Telegram makes of one photo, smallest first, as in a real Message.photo."""
    return [
        {"file_id": f"{file_id}-s", "file_unique_id": f"{file_unique_id}-s", "file_size": 1_200, "width": 90, "height": 67},
        {"file_id": f"{file_id}-m", "file_unique_id": f"{file_unique_id}-m", "file_size": 15_000, "width": 320, "height": 240},
        {"file_id": file_id, "file_unique_id": file_unique_id, "file_size": 81_000, "width": 1280, "height": 960},
    ]


@dataclass(frozen=True)
class Sent:
    """A message the bot sent (sendMessage), as the stand-in recorded it."""

    chat_id: int
    text: str
    reply_to_message_id: int | None
    message: dict[str, Any]  # the Message returned to the bot
    reply_parameters: dict[str, Any] | None = None
    reply_markup: dict[str, Any] | None = None

    def buttons(self) -> list[list[tuple[str, str]]]:
        """The inline keyboard sent with it, as rows of (text, callback_data)."""
        return keyboard(self.reply_markup)


def keyboard(markup: dict[str, Any] | None) -> list[list[tuple[str, str]]]:
    return [[(button["text"], button.get("callback_data", "")) for button in row] for row in (markup or {}).get("inline_keyboard", [])]


@dataclass(frozen=True)
class Answered:
    """An answerCallbackQuery call the stand-in accepted."""

    callback_query_id: str
    text: str | None


@dataclass(frozen=True)
class Edited:
    """An editMessageReplyMarkup or editMessageText call the stand-in accepted; ``reply_markup`` None took the keyboard
    away; ``text`` is the new text (None: the text was left as it was)."""

    chat_id: int
    message_id: int
    reply_markup: dict[str, Any] | None
    text: str | None = None


@dataclass
class _Failure:
    status: int
    description: str
    retry_after: int | None = None


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes


@dataclass
class TelegramApi:
    """Run with ``async with TelegramApi() as api``; point the bot at ``api.url``."""

    token: str = TOKEN
    host: str = "127.0.0.1"
    port: int = 0
    webhook: dict[str, Any] | None = None
    sent: list[Sent] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    allowed_updates: list[str] | None = None
    answer_delay: float = 0.0  # seconds before getUpdates answers with updates
    deliveries: Counter[int] = field(default_factory=Counter)  # update_id -> times handed out
    unauthorized: int = 0  # calls with a wrong token
    answered: list[Answered] = field(default_factory=list)
    edited: list[Edited] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pending: list[dict[str, Any]] = []
        self._update_ids = itertools.count(800_001)
        self._message_ids = itertools.count(900_001)
        self._changed = asyncio.Condition()
        self._poll_generation = 0
        self._failures: dict[str, deque[_Failure]] = {}
        self._files: dict[str, _StoredFile] = {}
        self._messages: dict[tuple[int, Any], dict[str, Any]] = {}  # (chat id, message id)
        self.blocked: set[int] = set()
        self.unknown_chats: set[int] = set()  # chats the bot never met: sendMessage answers 400 "chat not found"
        self._callback_ids = itertools.count(4_100_000_001)
        self._open_queries: set[str] = set()  # callback queries not yet answered
        self.confirmed_below = 0  # every update_id below this was confirmed by an offset
        self._runner: web.AppRunner | None = None

    # --- life -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What ``TelegramConfig.api_url`` takes: methods at <url>/bot<token>/<method>."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> "TelegramApi":
        self.port = self.port or free_port()
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self._poll_generation += 1  # ends a pending long poll
            self._changed.notify_all()
        assert self._runner is not None
        await self._runner.cleanup()

    # --- what tests do ------------------------------------------------------------

    async def enqueue(self, **update: Any) -> dict[str, Any]:
        """Queue an update (``message=…``, ``edited_message=…``, …); it gets the next update_id, as on Telegram."""
        body = {"update_id": next(self._update_ids), **update}
        for kind in ("message", "edited_message"):
            sent = body.get(kind)
            if isinstance(sent, dict) and isinstance(sent.get("chat"), dict):  # tests also enqueue broken ones
                self._messages[(sent["chat"]["id"], sent.get("message_id"))] = sent
        async with self._changed:
            self._pending.append(body)
            self._changed.notify_all()
        return body

    def callback_query(self, sent: Sent, data: str, *, sender: dict[str, Any] | None = None, chat_id: int | None = None) -> dict[str, Any]:
        """A CallbackQuery for a press on ``sent``'s keyboard, as Telegram makes one (``data`` is whatever a client sends).

        ``chat_id`` puts the message in another chat: a keyboard forwarded, or data forged by a modified client.
        """
        message = dict(self._messages.get((sent.chat_id, sent.message["message_id"]), sent.message))
        if chat_id is not None:
            message["chat"] = {"id": chat_id, "type": "private"}
        query_id = str(next(self._callback_ids))
        self._open_queries.add(query_id)
        presser = sender or user(message["chat"]["id"])
        return {"id": query_id, "from": presser, "message": message, "chat_instance": f"-{abs(message['chat']['id'])}77", "data": data}

    async def press(self, sent: Sent, data: str, **options: Any) -> dict[str, Any]:
        """Queue the update of a button press on ``sent`` (see ``callback_query``)."""
        return await self.enqueue(callback_query=self.callback_query(sent, data, **options))

    def next_update_id(self) -> int:
        """An update_id for an update a test POSTs to a webhook itself."""
        return next(self._update_ids)

    def add_file(self, data: bytes, *, file_id: str, file_unique_id: str, file_path: str) -> None:
        self._files[file_id] = _StoredFile(file_id, file_unique_id, file_path, data)

    def fail(self, method: str, times: int = 1, *, status: int = 500, description: str = "Internal Server Error", retry_after: int | None = None) -> None:
        """The next ``times`` calls of ``method`` fail like Telegram fails (429 takes ``retry_after``)."""
        queue = self._failures.setdefault(method, deque())
        for _ in range(times):
            queue.append(_Failure(status, description, retry_after))

    @property
    def pending(self) -> int:
        """Updates not yet confirmed."""
        return len(self._pending)

    async def wait_sent(self, count: int, timeout: float = 20) -> list[Sent]:
        deadline = time.monotonic() + timeout
        while len(self.sent) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.sent)} of {count} messages sent")
            await asyncio.sleep(0.05)
        return self.sent

    # --- the Bot API ----------------------------------------------------------------

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            self.unauthorized += 1
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        self.calls[method] += 1
        params = await _parameters(request)
        failures = self._failures.get(method)
        if failures:
            failure = failures.popleft()
            return _error(failure.status, failure.description, retry_after=failure.retry_after)
        handler = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "answerCallbackQuery": self._answer_callback_query,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageText": self._edit_message_text,
            "getFile": self._get_file,
        }.get(method)
        if handler is None:
            return _error(404, "Not Found")
        return await handler(params)

    async def _get_me(self, params: dict[str, Any]) -> web.Response:
        return _ok({**bot_user(), "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False})

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook is not None:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first")
        offset = _int(params.get("offset"), 0)
        limit = min(max(_int(params.get("limit"), 100), 1), 100)
        timeout = max(_int(params.get("timeout"), 0), 0)
        if "allowed_updates" in params:
            self.allowed_updates = _json(params["allowed_updates"])
        async with self._changed:
            self._poll_generation += 1
            generation = self._poll_generation
            self._changed.notify_all()  # an older long poll ends with 409
            if offset > 0:
                # Calling with an offset confirms everything below it: forgotten for good.
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
                self.confirmed_below = max(self.confirmed_below, offset)
            elif offset < 0:
                self._pending = self._pending[offset:]

            def ready() -> bool:
                return bool(self._pending) or self._poll_generation != generation

            if timeout and not ready():
                try:
                    await asyncio.wait_for(self._changed.wait_for(ready), timeout=timeout)
                except asyncio.TimeoutError:
                    pass
            if self._poll_generation != generation:
                return _error(409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running")
            batch = self._pending[:limit]
        self.deliveries.update(u["update_id"] for u in batch)
        if batch and self.answer_delay:
            await asyncio.sleep(self.answer_delay)  # a slower network: a stream that takes a while
        return _ok(batch)

    async def _set_webhook(self, params: dict[str, Any]) -> web.Response:
        if not str(params.get("url", "")).startswith("http"):
            return _error(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = {
            "url": params["url"],
            "secret_token": params.get("secret_token"),
            "allowed_updates": _json(params["allowed_updates"]) if "allowed_updates" in params else None,
        }
        async with self._changed:
            self._changed.notify_all()
        return _ok(True, description="Webhook was set")

    async def _delete_webhook(self, params: dict[str, Any]) -> web.Response:
        was_set = self.webhook is not None
        self.webhook = None
        if _json(params.get("drop_pending_updates", "false")):
            self._pending.clear()
        return _ok(True, description="Webhook was deleted" if was_set else "Webhook is already deleted")

    async def _get_webhook_info(self, params: dict[str, Any]) -> web.Response:
        info = {"url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False, "pending_update_count": len(self._pending)}
        return _ok(info)

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        if "chat_id" not in params:
            return _error(400, "Bad Request: chat_id is empty")
        text = params.get("text") or ""
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        chat_id = _int(params["chat_id"], 0)
        if chat_id in self.unknown_chats:
            return _error(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            return _error(403, "Forbidden: bot was blocked by the user")
        reply_to: int | None = None
        reply_parameters: dict[str, Any] | None = None
        if "reply_parameters" in params:
            reply_parameters = _json(params["reply_parameters"])
            reply_to = reply_parameters.get("message_id")
            if (chat_id, reply_to) not in self._messages and not reply_parameters.get("allow_sending_without_reply"):
                return _error(400, "Bad Request: message to be replied not found")
        elif "reply_to_message_id" in params:
            reply_to = _int(params["reply_to_message_id"], 0)
        markup = _json(params["reply_markup"]) if "reply_markup" in params else None
        refusal = _markup_refusal(markup)
        if refusal:
            return _error(400, refusal)
        sent: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": bot_user(),
            "chat": {"id": chat_id, "type": "private"},
            "date": int(time.time()),
            "text": text,
        }
        if markup:
            sent["reply_markup"] = markup
        replied = self._messages.get((chat_id, reply_to)) if reply_to is not None else None
        if replied is not None:
            sent["reply_to_message"] = replied
        self._messages[(chat_id, sent["message_id"])] = sent
        self.sent.append(Sent(chat_id=chat_id, text=text, reply_to_message_id=reply_to, message=sent, reply_parameters=reply_parameters, reply_markup=markup))
        return _ok(sent)

    async def _answer_callback_query(self, params: dict[str, Any]) -> web.Response:
        query_id = str(params.get("callback_query_id", ""))
        if query_id not in self._open_queries:
            return _error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        text = params.get("text")
        if text is not None and len(text) > 200:
            return _error(400, "Bad Request: MESSAGE_TOO_LONG")
        self._open_queries.discard(query_id)
        self.answered.append(Answered(query_id, text))
        return _ok(True)

    async def _edit_message_reply_markup(self, params: dict[str, Any]) -> web.Response:
        chat_id, message_id = _int(params.get("chat_id"), 0), _int(params.get("message_id"), 0)
        stored = self._messages.get((chat_id, message_id))
        if stored is None:
            return _error(400, "Bad Request: message to edit not found")
        markup = _json(params["reply_markup"]) if "reply_markup" in params else None
        refusal = _markup_refusal(markup)
        if refusal:
            return _error(400, refusal)
        if (markup or None) == stored.get("reply_markup"):
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
                "as a current content and reply markup of the message",
            )
        if markup:
            stored["reply_markup"] = markup
        else:
            stored.pop("reply_markup", None)
        self.edited.append(Edited(chat_id, message_id, markup or None))
        return _ok({**stored, "edit_date": int(time.time())})

    async def _edit_message_text(self, params: dict[str, Any]) -> web.Response:
        chat_id, message_id = _int(params.get("chat_id"), 0), _int(params.get("message_id"), 0)
        stored = self._messages.get((chat_id, message_id))
        if stored is None:
            return _error(400, "Bad Request: message to edit not found")
        text = str(params.get("text", ""))
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return _error(400, "Bad Request: MESSAGE_TOO_LONG")
        markup = _json(params["reply_markup"]) if "reply_markup" in params else None
        refusal = _markup_refusal(markup)
        if refusal:
            return _error(400, refusal)
        if text == stored.get("text") and (markup or None) == stored.get("reply_markup"):
            return _error(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
                "as a current content and reply markup of the message",
            )
        stored["text"] = text
        if markup:
            stored["reply_markup"] = markup
        else:  # editMessageText without reply_markup removes the inline keyboard, as Telegram does
            stored.pop("reply_markup", None)
        self.edited.append(Edited(chat_id, message_id, markup or None, text))
        return _ok({**stored, "edit_date": int(time.time())})

    async def _get_file(self, params: dict[str, Any]) -> web.Response:
        stored = self._files.get(str(params.get("file_id", "")))
        if stored is None:
            return _error(400, "Bad Request: invalid file_id")
        return _ok({"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_size": len(stored.data), "file_path": stored.file_path})

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        for stored in self._files.values():
            if stored.file_path == request.match_info["path"]:
                return web.Response(body=stored.data, content_type="application/octet-stream")
        return _error(404, "Not Found")


async def _parameters(request: web.Request) -> dict[str, Any]:
    """Telegram takes parameters in the query string, as a form (what PTB sends) or as JSON."""
    params: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return params


def _markup_refusal(markup: Any) -> str | None:
    """What Telegram says of an inline keyboard it will not take, None if it takes it."""
    for row in (markup or {}).get("inline_keyboard", []) if isinstance(markup, dict) else []:
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                return "Bad Request: BUTTON_DATA_INVALID"
    return None


def _json(value: Any) -> Any:
    """PTB sends lists and objects as JSON text inside form fields."""
    return json.loads(value) if isinstance(value, str) else value


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _error(code: int, description: str, *, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=code)
