"""Partner webhook channel: signed JSON complaints POSTed by partner systems.

A partner signs each request with HMAC-SHA256 over ``<timestamp>.<body>``:

    Intake-Timestamp: 1700000000
    Intake-Signature: v1=<hex digest>      (several, comma-separated, while rotating secrets)
    Idempotency-Key: <the partner's id for this complaint>

The request is idempotent on (partner, Idempotency-Key): a retry gets the same
reference and nothing is recorded twice. The answer is 202 with the reference
and the acknowledgement text, which the partner shows its customer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import Callable

from aiohttp import web

from intake.config import WebhookConfig
from intake.errors import TemporaryFailure
from intake.http import BodyTooLarge, BodyUnreadable, read_body
from intake.problems import problem
from intake.reception import Reception
from normalizer import webhook as normalize
from normalizer.errors import InvalidMessage

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# ASCII digits only (str.isdigit also takes "²" and Arabic-Indic digits, which int() then fails on or reads), and few of
# them: Unix seconds have 10 digits until the year 2286; a 400-digit number would overflow the float it is compared with.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Intake-Signature`` value a partner sends (used by partners' code and by the tests)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


class WebhookChannel:
    """The receiving side of the partner webhook; its reply is the HTTP answer itself."""

    def __init__(self, config: WebhookConfig, reception: Reception, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._reception = reception
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhook/{partner}", self.receive)]

    def _authentic(self, partner: str, timestamp: str, header: str, body: bytes) -> str | None:
        """None when the signature is good, else why not (said to the partner, never naming secrets)."""
        config = self._config.partners.get(partner)
        if config is None:
            return "unknown partner or bad signature"
        if not _TIMESTAMP.fullmatch(timestamp):
            return "Intake-Timestamp must be Unix seconds"
        if abs(self._clock() - int(timestamp)) > self._config.replay_window_seconds:
            return "Intake-Timestamp is outside the replay window; check the sender's clock"
        offered = [part.strip() for part in header.split(",") if part.strip().startswith("v1=")]
        for secret in config.secrets:
            expected = signature(secret.get_secret_value(), timestamp, body)
            # Bytes: compare_digest raises TypeError on a str with anything but ASCII, and the header is anyone's to write.
            if any(hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "surrogateescape")) for candidate in offered):
                return None
        return "unknown partner or bad signature"

    async def receive(self, request: web.Request) -> web.Response:
        received_at = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)
        partner = request.match_info["partner"]
        try:
            body = await read_body(request, self._config.max_body_bytes)
        except BodyTooLarge as error:
            return problem(413, "Body too large", str(error))
        except BodyUnreadable:
            return problem(400, "Body unreadable", "the body ended early or its framing or compression is broken")

        refusal = self._authentic(
            partner, request.headers.get("Intake-Timestamp", ""), request.headers.get("Intake-Signature", ""), body
        )
        if refusal is not None:
            return problem(401, "Not authenticated", refusal)
        key = request.headers.get("Idempotency-Key", "")
        if not _IDEMPOTENCY_KEY.match(key):
            return problem(400, "Idempotency-Key required", "1 to 255 visible ASCII characters naming this complaint")
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
