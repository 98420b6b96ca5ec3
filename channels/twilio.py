"""Twilio channel (SMS, MMS, WhatsApp): the signed inbound-message webhook, answered with TwiML, and delivery reports.

Point the number's (or Messaging Service's) "a message comes in" webhook at
``POST <public_base_url>/twilio/messages`` and its status callback at
``POST <public_base_url>/twilio/status``.

- Every request must carry a valid ``X-Twilio-Signature`` (twilio's
  ``RequestValidator``) over the URL Twilio called, rebuilt from
  ``http.public_base_url`` so that it holds behind a TLS proxy, and over every
  posted parameter, repeated and unknown ones included. Else 403.
- The signature covers each name and value run together, sorted, with nothing
  between them, so the same signature holds when the boundary between a value
  and the next name moves (``MessageSid=<sid>NumMedia0`` with no ``NumMedia``).
  What Twilio never sends is refused (400, nothing stored): message SIDs that
  are not ``SM``/``MM`` + 32 hex digits or that disagree, an ``AccountSid`` or
  ``MessagingServiceSid`` out of shape, counts that are not a few ASCII digits,
  an inbound message without ``AccountSid``, ``From`` or ``NumMedia``.
- A message is answered only after the spool write, with the acknowledgement as
  TwiML (``<Message>``); 503 when the spool cannot take it, so Twilio may retry.
- A redelivered ``MessageSid`` is recorded once and answered with an empty
  ``<Response/>``: a replayed request (Twilio's signature has no timestamp) or a
  fallback URL reaching a second replica must not text the customer again. The
  price: when Twilio gave up on our first answer (over 15 s), the customer's
  acknowledgement is not sent; the complaint is recorded all the same.
- Opt-out, opt-in and help keywords (STOP, START, HELP…) are not complaints:
  Twilio answers them itself; they are only counted.
- Delivery reports are counted (by status and error code), never recorded as
  complaints. Both URLs tell reports and messages apart by what was posted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from twilio.request_validator import SIGNATURE_HEADER, RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from intake.errors import Rejected, TemporaryFailure
from intake.http import BodyTooLarge, BodyUnreadable, read_body
from intake.i18n import SUPPORTED
from intake.problems import problem
from normalizer import twilio as normalize
from normalizer.errors import InvalidMessage
from normalizer.record import Attachment
from normalizer.reference import spool_key

if TYPE_CHECKING:  # at run time the gateway passes them in; importing them here would loop through intake.config
    from intake.attachments import AttachmentStore
    from intake.metrics import Metrics
    from intake.reception import Reception

log = logging.getLogger("intake.channels.twilio")

MESSAGES_PATH = "/twilio/messages"
STATUS_PATH = "/twilio/status"
TWIML_MEDIA_TYPE = "application/xml"

# Twilio's message statuses; anything else is counted as "other" so a label cannot grow without bound.
_STATUSES = frozenset(
    {
        "accepted", "scheduled", "canceled", "queued", "sending", "sent",
        "delivered", "undelivered", "failed", "read", "partially_delivered",
    }
)
# Twilio's SIDs: two letters naming the kind, 32 hex digits (Twilio's API definition allows either case).
_MESSAGE_SID_NAMES = ("MessageSid", "SmsSid", "SmsMessageSid")
_SHAPES = {
    **dict.fromkeys(_MESSAGE_SID_NAMES, re.compile(r"(SM|MM)[0-9a-fA-F]{32}")),
    "AccountSid": re.compile(r"AC[0-9a-fA-F]{32}"),
    "MessagingServiceSid": re.compile(r"MG[0-9a-fA-F]{32}"),
    # At most 10 media, and an SMS of 1600 characters is 24 segments: three digits leave room, none of int()'s leniency.
    "NumMedia": re.compile(r"[0-9]{1,3}"),
    "NumSegments": re.compile(r"[0-9]{1,3}"),
}
# On every inbound message; without them a re-split could change the channel (From, NumMedia), hence the spool key.
_REQUIRED_INBOUND = ("AccountSid", "From", "NumMedia")
# [0-9], not \d: in a str pattern \d also matches Arabic-Indic and other digits, which Twilio never sends.
_ERROR_CODE = re.compile(r"[0-9]{1,6}")


class TwilioConfig(BaseModel):
    """The ``[twilio]`` section."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Serve POST /twilio/messages (inbound SMS, MMS, WhatsApp) and POST /twilio/status (delivery reports). "
        "Needs auth_tokens.",
    )
    auth_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="The Twilio account's Auth Token, which signs the webhooks (X-Twilio-Signature); list the primary and the "
        "secondary while rotating. Also the password of media downloads.",
    )
    max_body_bytes: int = Field(64 * 1024, ge=4096, le=1024 * 1024, description="Larger posts get 413; Twilio's are a few KiB.")
    acknowledgement_status_callback: bool = Field(
        True,
        description="Ask Twilio (TwiML action=) to report the acknowledgement's delivery to /twilio/status, where it is counted.",
    )
    download_media: bool = Field(
        False,
        description="Copy MMS and WhatsApp media into the attachment store (HTTP basic auth AccountSid:AuthToken). Off, records "
        "point at Twilio's media URLs, which need the account's credentials and are deleted with the message.",
    )
    media_hosts: list[str] = Field(
        default_factory=lambda: ["api.twilio.com"],
        description="Hosts media are downloaded from; the account's credentials are sent to no other host (redirects to "
        "Twilio's CDN are followed without them).",
    )
    media_timeout_seconds: float = Field(
        8.0,
        gt=0,
        le=14,
        description="Bound on downloading one message's media (in parallel); Twilio gives up on a webhook after 15 s.",
    )
    media_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Larger media are not downloaded, only listed by URL (WhatsApp allows 16 MB, MMS 5 MB).",
    )

    @model_validator(mode="after")
    def _tokens_when_enabled(self) -> TwilioConfig:
        if self.enabled and not any(token.get_secret_value() for token in self.auth_tokens):
            raise ValueError("twilio.enabled needs at least one auth token in twilio.auth_tokens")
        return self


class _MediaUnavailable(Exception):
    """A medium could not be copied; the record keeps pointing at Twilio's URL."""


class _MediaTooLarge(_MediaUnavailable):
    """Bigger than media_max_bytes (or the attachment store's limit)."""


class TwilioChannel:
    """The receiving side of Twilio's messaging webhooks; the acknowledgement is the TwiML answer itself."""

    def __init__(
        self,
        config: TwilioConfig,
        reception: Reception,
        attachments: AttachmentStore,
        metrics: Metrics,
        *,
        public_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._reception = reception
        self._attachments = attachments
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._clock = clock
        self._validators = [
            (RequestValidator(token.get_secret_value()), token.get_secret_value())
            for token in config.auth_tokens
            if token.get_secret_value()
        ]
        self._http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        registry = metrics.registry
        self._refused = Counter(
            "intake_twilio_refused", "Twilio requests refused, by endpoint and reason (signature, size, media_type, malformed).",
            ["endpoint", "reason"], registry=registry,
        )
        self._keywords = Counter(
            "intake_twilio_keywords", "Opt-out, opt-in and help keywords received (not complaints), by channel and kind.",
            ["channel", "kind"], registry=registry,
        )
        self._delivery_reports = Counter(
            "intake_twilio_delivery_reports", "Twilio delivery reports (status callbacks), by status and error code.",
            ["status", "error_code"], registry=registry,
        )
        self._media = Counter(
            "intake_twilio_media",
            "Media of received messages, by outcome (stored, failed, too_large, not_allowed_host, over_count).",
            ["outcome"], registry=registry,
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.post(MESSAGES_PATH, self.receive_message), web.post(STATUS_PATH, self.receive_status)]

    # --- life -----------------------------------------------------------------

    name = "twilio"

    async def open(self) -> None:
        # Loaded before the gateway has started, not on the first customer's message, which must be answered within Twilio's 15 s.
        await asyncio.to_thread(normalize.warm_up)
        if self._config.download_media:
            self._http = aiohttp.ClientSession(raise_for_status=False)

    async def run(self) -> None:
        """Nothing runs in the background; the media client lives until the gateway stops."""
        try:
            await self._stopping.wait()
        finally:
            if self._http is not None and self._stopping.is_set():
                await self._http.close()
                self._http = None

    async def stop(self) -> None:
        self._stopping.set()

    # --- the webhooks ---------------------------------------------------------

    async def receive_message(self, request: web.Request) -> web.Response:
        """Twilio's "a message comes in" webhook: an inbound SMS, MMS or WhatsApp message."""
        return await self._receive(request, "messages")

    async def receive_status(self, request: web.Request) -> web.Response:
        """Twilio's status callback: a delivery report, counted, never a complaint."""
        return await self._receive(request, "status")

    async def _receive(self, request: web.Request, endpoint: str) -> web.Response:
        # Both endpoints tell the two kinds apart by what was posted, not by the URL: a
        # Messaging Service may use one URL for both, and an inbound message sent to the
        # status URL by a configuration slip must not be lost.
        received_at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        checked = await self._signed_params(request, endpoint)
        if isinstance(checked, web.Response):
            return checked
        body, params, token = checked

        status = normalize.delivery_status(params)
        malformed = _malformed(params, inbound=status is None)
        if malformed is not None:
            self._refused.labels(endpoint=endpoint, reason="malformed").inc()
            log.warning("Twilio request signed but not as Twilio sends it", extra={"event": "twilio_malformed", "endpoint": endpoint})
            return problem(400, "Not a Twilio request", malformed)
        if status is not None:
            self._delivery_reports.labels(
                status=status if status in _STATUSES else "other", error_code=_error_code(params.get("ErrorCode", ""))
            ).inc()
            return _twiml()
        if endpoint == "status":
            log.warning(
                "an inbound message came to the status URL; check the Twilio configuration", extra={"event": "twilio_misrouted"}
            )
        channel = normalize.channel_of(params)
        kind = normalize.keyword(params)
        if kind is not None:
            # Twilio keeps the opt-out list and sends the reply; keeping the number as
            # well would be personal data without a purpose here. Counted, nothing else.
            self._keywords.labels(channel=channel, kind=kind).inc()
            return _twiml()
        sid = normalize.message_sid(params)
        if sid is None:
            self._refused.labels(endpoint=endpoint, reason="malformed").inc()
            return problem(400, "No MessageSid", "an inbound message carries MessageSid")

        try:
            stored = await self._copy_media(params, channel, sid, token)
            outcome = await self._reception.receive(
                channel=channel,
                channel_message_id=sid,
                raw=body,
                normalize=lambda: normalize.to_complaint(body, received_at=received_at, locales=SUPPORTED, stored=stored),
                received_at=received_at,
                ack="inline",
                # What the channel added to the raw body, so that the record can be re-derived from the spool.
                context={"attachments": {url: item.model_dump(mode="json") for url, item in stored.items()}} if stored else None,
                dead_letter_invalid=True,
                route=_route(params),
            )
        except TemporaryFailure as error:
            return problem(503, "Try again later", str(error), retry_after=error.retry_after)

        if outcome.duplicate:
            if not outcome.same_content:
                log.warning(
                    "a MessageSid came again with different parameters", extra={"event": "twilio_sid_reused", "message_sid": sid}
                )
            return _twiml()
        if outcome.acknowledgement is None:  # dead-lettered: kept, but nothing sensible to say
            return _twiml()
        return _twiml(outcome.acknowledgement["short"], status_callback=self._config.acknowledgement_status_callback)

    # --- signature ------------------------------------------------------------

    def _signed_url(self, request: web.Request) -> str:
        """The URL Twilio called: the public base URL (behind a proxy) and the path and query exactly as sent."""
        base = self._public_base_url or f"{request.scheme}://{request.host}"
        return base + request.raw_path

    async def _signed_params(self, request: web.Request, endpoint: str) -> tuple[bytes, MultiDict[str], str] | web.Response:
        """(body, parameters, the auth token that signed them), or the refusal to answer with."""
        try:
            body = await read_body(request, self._config.max_body_bytes)
        except BodyTooLarge as error:
            self._refused.labels(endpoint=endpoint, reason="size").inc()
            return problem(413, "Body too large", str(error))
        except BodyUnreadable:
            self._refused.labels(endpoint=endpoint, reason="malformed").inc()
            return problem(400, "Body unreadable", "the body ended early or its framing or compression is broken")
        if request.content_type != normalize.MEDIA_TYPE:
            self._refused.labels(endpoint=endpoint, reason="media_type").inc()
            return problem(415, "Unsupported media type", f"Twilio posts {normalize.MEDIA_TYPE}")
        try:
            params = normalize.parse(body)
        except InvalidMessage as error:
            self._refused.labels(endpoint=endpoint, reason="malformed").inc()
            return problem(400, "Malformed parameters", error.detail)
        signature = request.headers.get(SIGNATURE_HEADER, "")
        url = self._signed_url(request)
        # The MultiDict, not a dict: RequestValidator then signs every value of a repeated parameter.
        token = next((token for validator, token in self._validators if validator.validate(url, params, signature)), None)
        if token is None:
            self._refused.labels(endpoint=endpoint, reason="signature").inc()
            log.warning(
                "Twilio signature refused",
                extra={"event": "twilio_signature_refused", "endpoint": endpoint, "signed_present": bool(signature)},
            )
            return problem(403, "Bad signature", "X-Twilio-Signature does not match this URL and these parameters")
        return body, params, token

    # --- media ------------------------------------------------------------------

    async def _copy_media(self, params: MultiDict[str], channel: str, sid: str, token: str) -> dict[str, Attachment]:
        """MediaUrl -> stored attachment for what could be copied; the rest stays listed by URL."""
        items = normalize.media(params)
        if self._http is None or not items:
            return {}
        if await self._reception.spool.has_message(spool_key(channel, sid)):
            return {}  # a redelivery: the first delivery's record stands, nothing to fetch
        account = params.get("AccountSid", "").strip()
        if len(items) > self._attachments.max_count:
            self._media.labels(outcome="over_count").inc(len(items) - self._attachments.max_count)
            items = items[: self._attachments.max_count]
        copied = await asyncio.gather(*(self._copy_one(item, account, token, sid) for item in items))
        return {item.url: attachment for item, attachment in zip(items, copied, strict=True) if attachment is not None}

    async def _copy_one(self, item: normalize.Media, account: str, token: str, sid: str) -> Attachment | None:
        assert self._http is not None
        if urlsplit(item.url).hostname not in self._config.media_hosts:
            self._media.labels(outcome="not_allowed_host").inc()
            return None
        limit = min(self._config.media_max_bytes, self._attachments.max_bytes)
        try:
            data = await self._fetch(item.url, account, token, limit)
            attachment = await self._attachments.put(data, filename=item.filename, content_type=item.content_type)
        except _MediaUnavailable as error:
            self._media.labels(outcome="too_large" if isinstance(error, _MediaTooLarge) else "failed").inc()
            log.warning("medium not copied", extra={"event": "twilio_media_not_copied", "message_sid": sid, "error": str(error)})
            return None
        except (TemporaryFailure, Rejected) as error:
            self._media.labels(outcome="failed").inc()
            log.warning("medium not stored", extra={"event": "twilio_media_not_copied", "message_sid": sid, "error": str(error)})
            return None
        self._media.labels(outcome="stored").inc()
        return attachment

    async def _fetch(self, url: str, account: str, token: str, limit: int) -> bytes:
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=self._config.media_timeout_seconds)
        try:
            # aiohttp drops the Authorization header when Twilio redirects to its CDN (another origin).
            async with self._http.get(url, headers={"Authorization": _basic(account, token)}, timeout=timeout) as response:
                if response.status != 200:
                    raise _MediaUnavailable(f"HTTP {response.status}")
                if response.content_length is not None and response.content_length > limit:
                    raise _MediaTooLarge("too large")
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise _MediaTooLarge("too large")
                return bytes(data)
        except (TimeoutError, aiohttp.ClientError) as error:
            # The class name only: aiohttp's messages quote the URL.
            raise _MediaUnavailable(type(error).__name__) from None


def _malformed(params: MultiDict[str], *, inbound: bool) -> str | None:
    """Why these parameters are not what Twilio sends, or None when they are."""
    for name, shape in _SHAPES.items():
        values = params.getall(name, [])
        if len(values) > 1:
            # The signature sorts repeated values: which one comes first would be ours to be misled about.
            return f"{name} appears more than once"
        if values and not shape.fullmatch(values[0]):
            return f"{name} is not in the form Twilio gives it"
    if len({params[name] for name in _MESSAGE_SID_NAMES if name in params}) > 1:
        return "MessageSid, SmsSid and SmsMessageSid name different messages"
    if inbound:
        missing = [name for name in _REQUIRED_INBOUND if not params.get(name, "").strip()]
        if missing:
            return f"an inbound message carries {', '.join(missing)}"
    return None


def _error_code(value: str) -> str:
    """Twilio's numeric error code, or "" (a label must not take arbitrary text)."""
    value = value.strip()
    return value if _ERROR_CODE.fullmatch(value) else ""


def _basic(user: str, password: str) -> str:
    """HTTP basic credentials (Twilio's media URLs take AccountSid:AuthToken)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _twiml(text: str | None = None, *, status_callback: bool = False) -> web.Response:
    """TwiML for the answer; without text an empty ``<Response/>``, which sends nothing."""
    response = MessagingResponse()
    if text:
        # Relative to the URL Twilio called, so it holds behind a proxy and under a path prefix.
        options = {"action": "status", "method": "POST"} if status_callback else {}
        response.message(text, **options)
    return web.Response(text=response.to_xml(), content_type=TWIML_MEDIA_TYPE)


def _route(params: normalize.Params) -> dict[str, str]:
    """The customer's number and the one they wrote to, for messages sent later; WhatsApp's without its prefix."""
    numbers = {name: params.get(field, "").strip() for name, field in (("to", "From"), ("from", "To"))}
    return {name: number.removeprefix(normalize.WHATSAPP_PREFIX) for name, number in numbers.items() if number}
