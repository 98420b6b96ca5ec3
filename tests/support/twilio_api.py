"""A local stand-in of Twilio's REST Messages API, for tests: the twilio package's own client talks to it.

Twilio's cloud cannot be reached from here. This server answers
``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` as Twilio does: a
form-encoded body (``To``, ``From``, ``MessagingServiceSid``, ``Body``,
``MediaUrl`` repeated, ``ContentSid``, ``ContentVariables``,
``StatusCallback``), HTTP basic auth with AccountSid:AuthToken, ``201`` with
the JSON Message resource, and errors as Twilio writes them,
``{"code", "message", "more_info", "status"}``, their messages quoting the
number as Twilio's do (which is why a sender must never pass them on).

It keeps the rules a sender must live with: a request needs To, a sender (From
or MessagingServiceSid) and something to send; a number that texted STOP
gets 21610; From and To must be on the same channel; and, when asked,
WhatsApp's 24-hour window: a free-form Body to a customer who has not written
within 24 hours gets 63016, a template (ContentSid) goes. (Real Twilio often
reports 63016 later, in the status callback; answering it at once is what a
sender must handle either way.) Tests read what it received and make the next
requests fail with a status, a code and a Retry-After.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDict

from intake.acknowledgement import gsm7_segments
from tests.support.gateway import free_port
from tests.support.topic import wait_for

ACCOUNT_SID = "AC" + "3d" * 16
AUTH_TOKEN = "7c1e4b9a2f6d8e0c3b5a7f9e1d2c4b6a"  # the shape of an Auth Token: 32 hex digits
API_VERSION = "2010-04-01"
WHATSAPP_WINDOW_SECONDS = 24 * 3600

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_MESSAGES = re.compile(rf"/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages\.json")
# Twilio's own words for the errors it sends here; {to} is filled as Twilio fills it.
_ERRORS = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21408: (400, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21656: (400, "The ContentVariables Parameter is invalid."),
    21910: (400, "Invalid From and To pair. From and To should be of the same channel"),
    63016: (
        400,
        "Failed to send freeform message because you are outside the allowed window. If you are using WhatsApp, "
        "please use a Message Template.",
    ),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service is unavailable. Please try again"),
}


@dataclass(frozen=True)
class Received:
    """One request to the Messages resource, as the stand-in saw it, whatever it answered."""

    account_sid: str  # from the path
    credentials: tuple[str, str] | None  # from HTTP basic auth
    content_type: str
    params: MultiDict[str]
    status: int
    answer: dict[str, Any]


@dataclass(frozen=True)
class SentMessage:
    """A message Twilio took (201): what was posted, and the Message resource returned for it."""

    params: MultiDict[str]
    resource: dict[str, Any]

    @property
    def sid(self) -> str:
        return self.resource["sid"]

    @property
    def to(self) -> str:
        return self.params["To"]

    @property
    def from_(self) -> str | None:
        return self.params.get("From")

    @property
    def body(self) -> str | None:
        return self.params.get("Body")

    @property
    def media_urls(self) -> list[str]:
        return self.params.getall("MediaUrl", [])

    @property
    def content_sid(self) -> str | None:
        return self.params.get("ContentSid")

    @property
    def content_variables(self) -> dict[str, str] | None:
        raw = self.params.get("ContentVariables")
        return None if raw is None else json.loads(raw)


@dataclass
class _Failure:
    status: int
    code: int
    retry_after: str | None


@dataclass
class TwilioApi:
    """Run with ``async with TwilioApi() as api``; point ``twilio.api_base_url`` at ``api.url``."""

    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    host: str = "127.0.0.1"
    port: int = 0
    enforce_whatsapp_window: bool = False
    answer_delay: float = 0.0  # seconds before answering: a slow Twilio, for timeouts
    received: list[Received] = field(default_factory=list)
    sent: list[SentMessage] = field(default_factory=list)
    unsubscribed: set[str] = field(default_factory=set)  # numbers (E.164) that texted STOP

    def __post_init__(self) -> None:
        self._failures: deque[_Failure] = deque()
        self._whatsapp_inbound: dict[str, float] = {}
        self._runner: web.AppRunner | None = None

    # --- life -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What ``TwilioConfig.api_base_url`` takes."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> TwilioApi:
        self.port = self.port or free_port()
        app = web.Application()
        app.router.add_post(f"/{API_VERSION}/Accounts/{{account}}/Messages.json", self._create_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    # --- what tests do ------------------------------------------------------------

    def fail(self, times: int = 1, *, status: int = 500, code: int = 20500, retry_after: str | int | None = None) -> None:
        """The next ``times`` requests (once authenticated) fail as Twilio fails, with ``code``'s message."""
        for _ in range(times):
            self._failures.append(_Failure(status, code, None if retry_after is None else str(retry_after)))

    def customer_wrote_on_whatsapp(self, number: str, *, at: float | None = None) -> None:
        """The customer (E.164) last wrote to us on WhatsApp at ``at``: the 24-hour window runs from then."""
        self._whatsapp_inbound[number] = time.time() if at is None else at

    async def wait_sent(self, count: int, timeout: float = 20) -> list[SentMessage]:
        async def enough() -> bool:
            return len(self.sent) >= count

        await wait_for(enough, timeout=timeout, interval=0.05)
        return self.sent

    # --- the Messages resource -------------------------------------------------------

    async def _create_message(self, request: web.Request) -> web.Response:
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        params = MultiDict(await request.post())
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        account = request.match_info["account"]
        status, answer = self._answer(request.path, account, credentials, params)
        self.received.append(Received(account, credentials, request.content_type, params, status, answer))
        headers: dict[str, str] = {}
        if status == 201:
            self.sent.append(SentMessage(params, answer))
        elif "retry_after" in answer:
            headers["Retry-After"] = answer.pop("retry_after")
        return web.json_response(answer, status=status, headers=headers)

    def _answer(
        self, path: str, account: str, credentials: tuple[str, str] | None, params: MultiDict[str]
    ) -> tuple[int, dict[str, Any]]:
        if credentials != (self.account_sid, self.auth_token):
            return _error(20003)
        if account != self.account_sid:
            return _error(20404, path=path)
        if self._failures:
            failure = self._failures.popleft()
            message = _ERRORS.get(failure.code, (failure.status, "Error"))[1].format(to=params.get("To", ""), path=path)
            status, body = failure.status, _error_body(failure.code, message, failure.status)
            if failure.retry_after is not None:
                body["retry_after"] = failure.retry_after
            return status, body
        to, sender, service = params.get("To", ""), params.get("From"), params.get("MessagingServiceSid")
        body, media, content = params.get("Body"), params.getall("MediaUrl", []), params.get("ContentSid")
        if not to:
            return _error(21604)
        if not sender and not service:
            return _error(21603)
        if not body and not media and not content:
            return _error(21602)
        whatsapp = to.startswith("whatsapp:")
        number = to.removeprefix("whatsapp:")
        if not _E164.fullmatch(number):
            return _error(21211, to=to)
        if sender and sender.startswith("whatsapp:") != whatsapp:
            return _error(21910)
        if number in self.unsubscribed:
            return _error(21610)
        if body and len(body) > 1600:
            return _error(21617)
        if content and "ContentVariables" in params:
            try:
                json.loads(params["ContentVariables"])
            except ValueError:
                return _error(21656)
        if whatsapp and self.enforce_whatsapp_window and not content:
            last = self._whatsapp_inbound.get(number)
            if last is None or time.time() - last > WHATSAPP_WINDOW_SECONDS:
                return _error(63016)
        return 201, self._resource(params, media=media)

    def _resource(self, params: MultiDict[str], *, media: list[str]) -> dict[str, Any]:
        """The Message resource as Twilio returns it on create, its fields named and typed as in Twilio's reference."""
        sid = ("MM" if media else "SM") + secrets.token_hex(16)
        now = format_datetime(dt.datetime.now(dt.timezone.utc), usegmt=True)
        body = params.get("Body") or ""
        service = params.get("MessagingServiceSid")
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": params.get("From"),  # null until a Messaging Service picks a sender
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            # A Messaging Service has not chosen a sender yet, so Twilio says 0 segments.
            "num_segments": "0" if service and not params.get("From") else str(gsm7_segments(body) if body else 1),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not params.get("From") else "queued",
            "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
            "to": params["To"],
            "uri": uri,
        }


def _basic_credentials(header: str) -> tuple[str, str] | None:
    try:
        auth = aiohttp.BasicAuth.decode(header)
    except ValueError:
        return None
    return auth.login, auth.password


def _error_body(code: int, message: str, status: int) -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


def _error(code: int, **values: str) -> tuple[int, dict[str, Any]]:
    status, message = _ERRORS[code]
    return status, _error_body(code, message.format(**values) if values else message, status)
