"""Partner webhook channel: signed JSON complaints POSTed by partner systems.

A partner signs each request with HMAC-SHA256 over
``<timestamp>.<idempotency key>.<body>`` (signature version 2):

    Intake-Timestamp: 1700000000
    Intake-Signature: v2=<hex digest>      (several, comma-separated, while rotating secrets)
    Idempotency-Key: <the partner's id for this complaint>

The request is idempotent on (partner, Idempotency-Key): a retry gets the same
reference and nothing is recorded twice. The answer is 202 with the reference
and the acknowledgement text, which the partner shows its customer.

Version 1 signed ``<timestamp>.<body>`` only: a request captured within the
replay window could be sent again under a new Idempotency-Key and be taken as
a new complaint. It is accepted only from partners whose ``accept_v1`` is on,
while they move to v2; a partner may send ``v1=…, v2=…`` during the move.

The way back (``intake.twoway``): what downstream tells a partner's
complainant is POSTed to the partner's ``callback_url``, signed the same way
with the partner's ``callback_secrets`` (the first one), the command's id as
Idempotency-Key, so the partner can verify it with the code that signs to us
and recognise a retry (:class:`PartnerCallbackSender`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from intake.config import WebhookConfig
from intake.errors import Rejected, TemporaryFailure
from intake.http import BodyTooLarge, BodyTooSlow, BodyUnreadable, read_body
from intake.problems import problem
from intake.reception import Outcome, Reception
from intake.normalizer import webhook as normalize
from intake.twoway import Delivered, OutboundMessage, Route
from intake.normalizer.errors import InvalidMessage

log = logging.getLogger("intake.webhook")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# ASCII digits only (str.isdigit also takes "²" and Arabic-Indic digits, which int() then fails on or reads), and few of
# them: Unix seconds have 10 digits until the year 2286; a 400-digit number would overflow the float it is compared with.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def signature(secret: str, timestamp: str, body: bytes, idempotency_key: str | None = None) -> str:
    """The ``Intake-Signature`` value a partner sends (used by partners' code and by the tests).

    With the request's Idempotency-Key, version 2 (``v2=``), which covers it; without, version 1 (``v1=``),
    which the gateway takes only from partners configured with ``accept_v1`` while they migrate.
    """
    if idempotency_key is None:
        return "v1=" + _digest(secret, timestamp.encode() + b"." + body)
    return "v2=" + _digest(secret, timestamp.encode() + b"." + idempotency_key.encode() + b"." + body)


def _digest(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, idempotency_key: str, *, timestamp: str) -> dict[str, str]:
    """The headers of a signed JSON request (v2), the ones partners send us and the ones our callbacks carry."""
    return {
        "Content-Type": "application/json",
        "Intake-Timestamp": timestamp,
        "Intake-Signature": signature(secret, timestamp, body, idempotency_key),
        "Idempotency-Key": idempotency_key,
    }


class WebhookChannel:
    """The receiving side of the partner webhook; its reply is the HTTP answer itself."""

    def __init__(self, config: WebhookConfig, reception: Reception, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._reception = reception
        reception.replayable("webhook", self._replay)
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhook/{partner}", self.receive)]

    def _authentic(self, partner: str, timestamp: str, header: str, key: str, body: bytes) -> str | None:
        """None when the signature is good, else why not (said to the partner, never naming secrets)."""
        config = self._config.partners.get(partner)
        if config is None:
            return "unknown partner or bad signature"
        if not _TIMESTAMP.fullmatch(timestamp):
            return "Intake-Timestamp must be Unix seconds"
        if abs(self._clock() - int(timestamp)) > self._config.replay_window_seconds:
            return "Intake-Timestamp is outside the replay window; check the sender's clock"
        versions = ("v2=", "v1=") if config.accept_v1 else ("v2=",)
        offered = [part.strip() for part in header.split(",") if part.strip().startswith(versions)]
        if not offered:
            # Said plainly: a partner still sending v1 after accept_v1 was turned off needs to know what to change.
            wanted = "Intake-Signature must carry v2=<hex HMAC-SHA256 of <timestamp>.<Idempotency-Key>.<body>>"
            return wanted if config.accept_v1 else wanted + "; v1 is not accepted from this partner"
        for secret in config.secrets:
            expected = [signature(secret.get_secret_value(), timestamp, body, key)]
            if config.accept_v1:
                expected.append(signature(secret.get_secret_value(), timestamp, body))
            # Bytes: compare_digest raises TypeError on a str with anything but ASCII, and the header is anyone's to write.
            for candidate in offered:
                if any(hmac.compare_digest(value.encode(), candidate.encode("utf-8", "surrogateescape")) for value in expected):
                    return None
        return "unknown partner or bad signature"

    async def _replay(self, raw: bytes, received_at: dt.datetime, context: dict[str, Any], channel_message_id: str) -> Outcome:
        """A dead letter taken in again: the partner heard "dead-lettered" long ago, so nobody is answered now."""
        partner, _, key = channel_message_id.partition("/")
        return await self._reception.receive(
            channel="webhook",
            channel_message_id=channel_message_id,
            raw=raw,
            normalize=lambda: normalize.to_complaint(raw, partner=partner, idempotency_key=key, received_at=received_at),
            received_at=received_at,
            ack="none",
            context=context,
        )

    async def receive(self, request: web.Request) -> web.Response:
        received_at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        partner = request.match_info["partner"]
        try:
            body = await read_body(request, self._config.max_body_bytes)
        except BodyTooLarge as error:
            return problem(413, "Body too large", str(error))
        except BodyTooSlow as error:
            return problem(408, "Request timeout", f"the body was {error}; send it again")
        except BodyUnreadable:
            return problem(400, "Body unreadable", "the body ended early or its framing or compression is broken")

        # The key first: the signature covers it, so without a well-formed one there is nothing to check.
        key = request.headers.get("Idempotency-Key", "")
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            return problem(400, "Idempotency-Key required", "1 to 255 visible ASCII characters naming this complaint")
        refusal = self._authentic(
            partner, request.headers.get("Intake-Timestamp", ""), request.headers.get("Intake-Signature", ""), key, body
        )
        if refusal is not None:
            return problem(401, "Not authenticated", refusal)
        if request.content_type != "application/json":
            return problem(415, "Unsupported media type", "send application/json")

        try:
            outcome = await self._reception.receive(
                channel="webhook",
                channel_message_id=normalize.channel_message_id(partner, key),
                raw=body,
                normalize=lambda: normalize.to_complaint(body, partner=partner, idempotency_key=key, received_at=received_at),
                received_at=received_at,
                ack="inline",
                context={"partner": partner},
                route={"partner": partner},
            )
        except InvalidMessage as error:
            status = 400 if error.errors and error.errors[0].field == "(body)" else 422
            return problem(status, "Invalid complaint", error.detail, errors=error.errors)
        except TemporaryFailure as error:
            return problem(503, "Try again later", str(error), retry_after=error.retry_after)

        if outcome.duplicate and not outcome.same_content:
            return problem(
                422, "Idempotency-Key reused", "this Idempotency-Key was used for a different complaint", type_="/problems/idempotency-key-reused"
            )
        body_out = {
            "reference": outcome.reference,
            "id": outcome.complaint_id,
            "duplicate": outcome.duplicate,
            "acknowledgement": outcome.acknowledgement,
        }
        return web.json_response(body_out, status=202)


class PartnerCallbackSender:
    """``gateway.outbound_senders["webhook"]``: downstream's messages to a partner's complainant, POSTed to the partner.

    The body is the command as downstream wrote it, with what intake composed of
    it (the text in the complainant's language) and the reference; the partner
    shows it to its customer. 2xx: delivered. 408, 429, 5xx, a timeout or no
    connection: tried again later (after Retry-After if the partner says). Any
    other answer will not change by retrying and is given up with its status.
    A redirect is not followed: the signed body would go to an address the
    configuration never named.
    """

    def __init__(self, config: WebhookConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock

    def can_deliver(self, route: Route) -> bool:
        partner = self._config.partners.get(str(route.address.get("partner", "")))
        return partner is not None and partner.callback_url is not None

    def body(self, message: OutboundMessage) -> bytes:
        document = {
            "command_id": message.command_id,
            "reference": message.reference,
            "kind": message.kind,
            "status": message.status,
            "locale": message.locale,
            "direction": message.direction,
            "subject": message.subject,
            "text": message.text,
            "short": message.short,
            "attachment_urls": list(message.attachment_urls),
            "customer_id": message.route.address.get("customer_id"),
            "command": message.command,
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()

    async def deliver(self, message: OutboundMessage) -> Delivered:
        name = str(message.route.address.get("partner", ""))
        partner = self._config.partners.get(name)
        if partner is None or partner.callback_url is None or not partner.callback_secrets:
            raise Rejected("the partner has no callback_url")
        if not _IDEMPOTENCY_KEY.fullmatch(message.command_id):
            raise Rejected("the command id cannot be an Idempotency-Key (1 to 255 visible ASCII characters)")
        body = self.body(message)
        # Signed at each attempt: a retry after hours must not fall outside the partner's replay window.
        headers = signed_headers(
            partner.callback_secrets[0].get_secret_value(), body, message.command_id, timestamp=str(int(self._clock()))
        )
        timeout = aiohttp.ClientTimeout(total=partner.callback_timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(str(partner.callback_url), data=body, headers=headers, allow_redirects=False) as response:
                    status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise TemporaryFailure(f"partner {name} callback unreachable ({type(error).__name__})") from None
        log.info("partner callback answered", extra={"event": "partner_callback", "partner": name, "reference": message.reference, "status": status})
        if 200 <= status < 300:
            return Delivered(note=f"partner callback {status}")
        if status in (408, 429) or status >= 500:
            failure = TemporaryFailure(f"partner {name} callback answered {status}")
            wait = _retry_after(retry_after, self._clock())
            if wait is not None:
                failure.retry_after = wait
            raise failure
        raise Rejected(f"partner {name} callback answered {status}")


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After (RFC 9110 §10.2.3): seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), 86_400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now), 86_400.0)
