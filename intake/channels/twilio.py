"""Twilio channel (SMS, MMS, WhatsApp): the signed inbound-message webhook answered with TwiML, delivery reports, and sending.

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

Sending (:class:`TwilioSender`) goes through Twilio's REST Messages API with
the twilio package's asyncio client, once ``account_sid`` is set: messages of
the two-way path on SMS, MMS and WhatsApp (``intake.twoway.OutboundSender``),
and the SMS acknowledgement of a web form complaint that gave only a phone
number (``intake.replies.ReplySender``). What Twilio refuses for good (a bad
number, a STOP, WhatsApp's closed window, a region not enabled, bad
credentials) is ``Rejected`` naming Twilio's error code; a 429, a 5xx, a
timeout or a lost connection is ``TemporaryFailure``, with Twilio's
Retry-After. Neither names a phone number: Twilio's own error messages quote
them, so only the codes are kept.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.request_validator import SIGNATURE_HEADER, RequestValidator
from twilio.rest import Client as TwilioClient
from twilio.twiml.messaging_response import MessagingResponse

from intake.errors import Rejected, TemporaryFailure
from intake.http import BodyTooLarge, BodyTooSlow, BodyUnreadable, read_body
from intake.i18n import SUPPORTED
from intake.problems import problem
from intake.twoway import Delivered, OutboundMessage
from intake.normalizer import twilio as normalize
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Attachment
from intake.normalizer.reference import spool_key

if TYPE_CHECKING:  # at run time the gateway passes them in; importing them here would loop through intake.config
    from intake.attachments import AttachmentStore
    from intake.metrics import Metrics
    from intake.reception import Outcome, Reception, Replayer
    from intake.normalizer.record import Channel

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
_E164 = r"^\+[1-9][0-9]{6,14}$"


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
        "secondary while rotating. Also the password of media downloads, and the first (the primary) that of the REST API "
        "when account_sid is set.",
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

    # --- sending (the REST Messages API) ---------------------------------------------
    account_sid: str | None = Field(
        None,
        pattern=r"^AC[0-9a-fA-F]{32}$",
        description="The Twilio account (AC + 32 hex digits) that sends SMS, MMS and WhatsApp through the REST Messages API: "
        "messages, statuses and surveys to complainants, and the SMS acknowledgement of a web form complaint that gave only "
        "a phone number. Set, sending is on; it signs in with the first of auth_tokens (the primary). Not secret, but "
        "INTAKE_TWILIO__ACCOUNT_SID keeps it with the token.",
    )
    api_base_url: str = Field(
        "https://api.twilio.com",
        pattern=r"^https?://[^/?#]+/?$",
        description="Where Twilio's REST API is (scheme and host, no path); a test points it at a stand-in.",
    )
    default_from: str | None = Field(
        None,
        pattern=_E164,
        description="The number (E.164) SMS and MMS go out from when there is no number the customer wrote to: a web form "
        "complaint's acknowledgement, a message on another channel's complaint. With messaging_service_sid, this one wins.",
    )
    whatsapp_from: str | None = Field(
        None,
        pattern=_E164,
        description="The WhatsApp sender (E.164, without whatsapp:) for a WhatsApp message to a complainant who did not write "
        "to us on WhatsApp; one who did is answered from the number they wrote to.",
    )
    messaging_service_sid: str | None = Field(
        None,
        pattern=r"^MG[0-9a-fA-F]{32}$",
        description="A Messaging Service (MG + 32 hex digits) to send through when there is no number to send from (no "
        "default_from or whatsapp_from); Twilio picks the sender from its pool.",
    )
    status_callback_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Twilio reports each sent message's delivery here (StatusCallback), e.g. <public_base_url>/twilio/status, "
        "where delivery reports are counted. Unset: none asked for (a Messaging Service's own callback still applies).",
    )
    request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Bound on one call to the REST API; a call that times out is retried later. The Messages API takes no "
        "idempotency key, so a message whose call timed out after Twilio took it can reach the customer twice.",
    )

    @model_validator(mode="after")
    def _tokens_when_enabled(self) -> TwilioConfig:
        has_token = any(token.get_secret_value() for token in self.auth_tokens)
        if self.enabled and not has_token:
            raise ValueError("twilio.enabled needs at least one auth token in twilio.auth_tokens")
        if self.account_sid is not None:
            if not has_token:
                raise ValueError("twilio.account_sid (sending) needs the account's auth token in twilio.auth_tokens")
            if not (self.default_from or self.messaging_service_sid):
                raise ValueError(
                    "twilio.account_sid (sending) needs twilio.default_from or twilio.messaging_service_sid to send from"
                )
        return self

    @property
    def sending(self) -> bool:
        """Whether messages can be sent through the REST API (an account and its token)."""
        return self.account_sid is not None and bool(self.auth_tokens) and bool(self.auth_tokens[0].get_secret_value())


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
        for channel in ("sms", "mms", "whatsapp"):
            reception.replayable(channel, self._replayer(channel))
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

    def _replayer(self, channel: Channel) -> Replayer:
        async def replay(raw: bytes, received_at: dt.datetime, context: dict[str, Any], sid: str) -> Outcome:
            """A dead letter taken in again; the TwiML answer went long ago, so nobody is answered now."""
            stored = {url: Attachment.model_validate(item) for url, item in (context.get("attachments") or {}).items()}
            return await self._reception.receive(
                channel=channel,
                channel_message_id=sid,
                raw=raw,
                normalize=lambda: normalize.to_complaint(raw, received_at=received_at, locales=SUPPORTED, stored=stored),
                received_at=received_at,
                ack="none",
                context=context,
            )

        return replay

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
        except BodyTooSlow as error:
            self._refused.labels(endpoint=endpoint, reason="timeout").inc()
            return problem(408, "Request timeout", f"the body was {error}; send it again")
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


# --- sending -------------------------------------------------------------------------

# The vias this sender takes; SMS and MMS reach the same number, WhatsApp the same number under another address.
VIAS = ("sms", "mms", "whatsapp")
_PHONE_CHANNELS = frozenset(VIAS)
_WHATSAPP = "whatsapp:"
# Twilio's error codes that no retry will change, in our own words: Twilio's messages quote the phone number.
_PERMANENT = {
    20003: "authentication failed: check twilio.account_sid and the auth token",
    20404: "the account or resource was not found",
    21211: "the To number is not a valid phone number",
    21408: "sending to this region is not enabled on the account",
    21602: "the message has no body",
    21603: "no From number",
    21604: "no To number",
    21606: "the From number cannot send to this destination",
    21610: "the recipient has opted out (STOP)",
    21612: "Twilio cannot route a message between these numbers",
    21614: "the To number is not a mobile number",
    21617: "the body is too long",
    21656: "the content variables are not valid JSON",
    63007: "no WhatsApp sender found for the From address",
    63016: "outside WhatsApp's 24-hour window: a template is needed",
}


class _RestHttp(AsyncTwilioHttpClient):
    """twilio's asyncio HTTP client, bounded in time, with 429, 5xx and lost connections as ``TemporaryFailure``.

    Two things the library's own ``request`` does not do: it passes ``timeout=None`` on to
    aiohttp when the caller gives none (and ``messages.create_async`` gives none), which
    aiohttp reads as "no timeout at all", whatever the client was built with; and the
    ``TwilioRestException`` it raises keeps the status and code but not the headers, so
    Twilio's Retry-After would be lost. So the request is made here, and a failure worth
    retrying is told apart while the whole response is still at hand. It also does not log
    each request at INFO, as the library does.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(pool_connections=False, timeout=timeout, logger=log)
        # Made here, in the running loop, rather than by the library's constructor.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        assert self.session is not None
        bound = aiohttp.ClientTimeout(total=timeout or self.timeout)
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = _basic(*auth)
        try:
            async with self.session.request(
                method.upper(), url, params=params, data=data, headers=headers, timeout=bound, allow_redirects=allow_redirects
            ) as response:
                text = await response.text()
                status, answer_headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError) as error:
            # The class name only: aiohttp's messages quote the URL, which names the account.
            raise TemporaryFailure(f"Twilio unreachable: {type(error).__name__}") from None
        if status == 429 or status >= 500:
            code = _code_of(text)
            failure = TemporaryFailure(f"Twilio {code or status}: {'too many requests' if status == 429 else f'HTTP {status}'}")
            wait = _retry_after(answer_headers.get("Retry-After"))
            if wait is not None:
                # On the instance: intake.replies (and the delivery loop) read a wait asked for by this failure there.
                failure.retry_after = wait
            raise failure
        return TwilioResponse(status, text, answer_headers)


class TwilioSender:
    """SMS, MMS and WhatsApp through Twilio's REST Messages API, with the twilio package's asyncio client.

    Two roles: ``deliver`` (``intake.twoway.OutboundSender``) for "sms", "mms" and
    "whatsapp", and ``send_reply`` (``intake.replies.ReplySender``) for "sms", the
    acknowledgement of a web form complaint that gave only a phone number. The HTTP
    session is made on first use, in the running loop; ``close()`` ends it.
    """

    def __init__(self, config: TwilioConfig) -> None:
        if not config.sending:
            raise ValueError("TwilioSender needs twilio.account_sid and an auth token")
        self._config = config
        self._client: TwilioClient | None = None
        self._http: _RestHttp | None = None

    async def deliver(self, message: OutboundMessage) -> Delivered:
        """Send one message of the two-way path; ``Delivered.provider_id`` is Twilio's Message SID."""
        via = message.via
        if via not in _PHONE_CHANNELS:
            raise Rejected(f"Twilio does not send on {via!r}")
        to, sender = _recipient(message)
        if to is None:
            raise Rejected(f"no phone number to send to on {via}")
        fields: dict[str, Any] = {"to": _address(via, to), **self._sender(via, sender)}
        notes: list[str] = []
        if message.template_sid:
            # Outside WhatsApp's window only an approved template may go; its text is Twilio's, filled with these.
            fields["content_sid"] = message.template_sid
            fields["content_variables"] = json.dumps(message.template_variables, ensure_ascii=False)
            notes.append("whatsapp template" if via == "whatsapp" else "content template")
        else:
            fields["body"] = message.short
            if message.attachment_urls:
                if via == "sms":
                    # Media would turn it into an MMS, which many countries' networks do not carry.
                    notes.append("attachments not sent by sms")
                else:
                    fields["media_url"] = list(message.attachment_urls)
        sid = await self._create(fields, reference=message.reference)
        return Delivered(provider_id=sid, note="; ".join(notes) or None)

    async def send_reply(self, payload: dict[str, Any]) -> None:
        """Send an acknowledgement by SMS: the payload's ``to`` (E.164) and ``text`` (the short acknowledgement)."""
        to, text = payload.get("to"), payload.get("text")
        if not isinstance(to, str) or not to or not isinstance(text, str) or not text:
            raise Rejected("an SMS acknowledgement needs a number and a text")
        fields = {"to": to, "body": text, **self._sender("sms", None)}
        await self._create(fields, reference=payload.get("reference"))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = self._client = None

    # --- the REST call ------------------------------------------------------------

    def _sender(self, via: str, wrote_to: str | None) -> dict[str, str]:
        """From (the number the customer wrote to, else the configured one), or the Messaging Service to pick one."""
        configured = self._config.whatsapp_from if via == "whatsapp" else self._config.default_from
        number = wrote_to or configured
        if number:
            return {"from_": _address(via, number)}
        if self._config.messaging_service_sid:
            return {"messaging_service_sid": self._config.messaging_service_sid}
        raise Rejected(f"no sender configured for {via} (twilio.whatsapp_from or twilio.messaging_service_sid)")

    def _rest(self) -> TwilioClient:
        if self._client is None:
            account = self._config.account_sid
            assert account is not None
            self._http = _RestHttp(self._config.request_timeout_seconds)
            self._client = TwilioClient(
                account, self._config.auth_tokens[0].get_secret_value(), account_sid=account, http_client=self._http
            )
            # The library has no option for another host (edge and region only make other twilio.com names);
            # the API domain's own base URL is what every Messages URL is built from.
            self._client.api.base_url = self._config.api_base_url.rstrip("/")
        return self._client

    async def _create(self, fields: dict[str, Any], *, reference: object) -> str:
        if self._config.status_callback_url:
            fields["status_callback"] = self._config.status_callback_url
        try:
            created = await self._rest().messages.create_async(**fields)
        except (TwilioRestException, TwilioServiceException) as error:
            # str(error) names the request URL and Twilio's message, which quotes the number: the code only.
            code = error.code if isinstance(error.code, int) else None
            why = _PERMANENT.get(code or 0, f"HTTP {error.status}")
            log.warning(
                "Twilio refused a message",
                extra={"event": "twilio_send_refused", "reference": reference, "code": code, "status": error.status},
            )
            raise Rejected(f"Twilio {code or error.status}: {why}") from None
        if not created.sid:
            raise TemporaryFailure("Twilio answered without a Message SID")
        return created.sid


def _recipient(message: OutboundMessage) -> tuple[str | None, str | None]:
    """(the customer's number, the number they wrote to, if it can send on this via)."""
    route, via = message.route, message.via
    if via == route.channel or {via, route.channel} <= {"sms", "mms"}:
        return _plain(route.address.get("to")), _plain(route.address.get("from"))
    # Another channel: the phone the complainant gave, else the number they wrote from on another of Twilio's channels
    # (WhatsApp's window closed, an SMS to the same number). Never from the number they wrote to: it may not send on this via.
    given = route.contacts.get("phone") or (route.address.get("to") if route.channel in _PHONE_CHANNELS else None)
    return _plain(given), None


def _plain(number: object) -> str | None:
    return number.removeprefix(_WHATSAPP) if isinstance(number, str) and number else None


def _address(via: str, number: str) -> str:
    """Twilio's address of a number on a via: ``whatsapp:+…`` on WhatsApp, the E.164 number elsewhere."""
    return _WHATSAPP + number if via == "whatsapp" else number


def _code_of(text: str) -> int | None:
    """Twilio's error code from an error body ({"code", "message", "more_info", "status"}), if it has one."""
    try:
        code = json.loads(text).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date, RFC 9110 §10.2.3), bounded to an hour."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), 3600.0)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return min(max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds()), 3600.0)


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
