"""OAuth 2.0 access tokens for signing in to IMAP and SMTP: obtained from the token endpoint, kept, replaced before they expire.

Microsoft 365 and Gmail have turned basic authentication off: a mailbox or the
relay signs in with SASL XOAUTH2 or OAUTHBEARER (RFC 7628) and an access token.
``AccessTokens`` gets one with the grant each provider documents for a service
without a person at the keyboard: client credentials (RFC 6749 §4.4) for
Microsoft 365, a refresh token an operator obtained once by consenting (§6)
for Gmail. A token is kept until ``refresh_before_seconds`` before it expires,
then replaced, so a connection never signs in with one about to lapse.

The client secret, the refresh token and the access tokens never appear in a
log line or in an exception's text: errors carry what the token endpoint said
(its error code and description) and nothing that was sent to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from intake.errors import TemporaryFailure

if TYPE_CHECKING:
    from intake.channels.email import OAuthConfig

log = logging.getLogger("intake.email.oauth")

# RFC 6750 §2.1: what may follow "Bearer ". Anything else (a \x01, a line break) would end the SASL message early.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# A token answer without expires_in (RFC 6749 only recommends it) is taken to last an hour, what Google and Microsoft issue.
_DEFAULT_LIFETIME = 3600.0
# A token due for replacement is still used while the endpoint is down, unless it has less than this left.
_LAST_SECONDS = 10.0
# After a failed request the endpoint is asked again after 1 s, 2 s, 4 s... up to this, however often a token is wanted:
# many acknowledgements waiting for the relay must not become a burst of requests to a failing (or refusing) endpoint.
_MAX_BACKOFF = 60.0
# Enough for any token answer (a Microsoft JWT is a few kilobytes); a larger body is not one.
_MAX_ANSWER_BYTES = 256 * 1024


class TokenRefused(Exception):
    """The token endpoint said no (RFC 6749 §5.2: invalid_client, invalid_grant...): asking again will not help.

    A secret that expired or was revoked, consent withdrawn, a wrong tenant,
    client id or scope: an operator has to act. The text is what the endpoint
    said, for the operator, with nothing that was sent to it.
    """

    def __init__(self, error: str, description: str = "") -> None:
        self.error = error
        self.description = description
        super().__init__(f"the token endpoint refused the grant: {error}" + (f" ({description})" if description else ""))


class TokenUnavailable(TemporaryFailure):
    """No token for now: the endpoint is unreachable, timed out, failed (5xx), throttles (429) or answered nonsense."""


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # monotonic time from which a new one is fetched
    expires_at: float


class AccessTokens:
    """The access tokens of one OAuth client (a mailbox's or the relay's): ``await get()`` returns one good for a while yet."""

    def __init__(self, config: OAuthConfig, *, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._name = name  # which mailbox or relay, for logs
        self._clock = clock
        self._lock = asyncio.Lock()  # one request at a time: callers arriving meanwhile get the token it brings
        self._token: _Token | None = None
        # The newest refresh token. Microsoft replaces it with every use (the old one keeps working until it expires),
        # Google normally does not; either way the newest is the one to use, and it lives only in memory.
        self._refresh_token = config.refresh_token.get_secret_value() if config.refresh_token else ""
        self._told_rotation = False
        self._failures = 0
        self._retry_at = 0.0
        self._failure: TokenRefused | TokenUnavailable | None = None
        self._told_failure: TokenUnavailable | None = None

    async def get(self) -> str:
        """A valid access token; TokenRefused when the endpoint refuses the grant, TokenUnavailable when it cannot answer."""
        async with self._lock:
            token = self._token
            now = self._clock()
            if token is not None and now < token.renew_at:
                return token.value
            try:
                self._token = await self._request()
            except TokenUnavailable as error:
                if token is not None and now < token.expires_at - _LAST_SECONDS:
                    # Due for replacement, not expired: good enough while the endpoint recovers.
                    if error is not self._told_failure:  # once per failed request, not for every caller in the backoff
                        self._told_failure = error
                        log.warning(
                            "could not replace an access token yet; using the current one until it expires",
                            extra={"event": "oauth_renewal_deferred", "client": self._name, "error": str(error)},
                        )
                    return token.value
                raise
            return self._token.value

    def forget(self, value: str) -> None:
        """The server refused this token (revoked, or shorter-lived than announced): the next ``get`` fetches a new one."""
        if self._token is not None and self._token.value == value:
            self._token = None

    # --- the token endpoint -------------------------------------------------------

    def _form(self) -> dict[str, str]:
        config = self._config
        form = {"grant_type": config.grant, "client_id": config.client_id}
        if config.client_secret is not None:
            # In the body, as Microsoft and Google document it (RFC 6749 §2.3.1 allows it beside HTTP Basic).
            form["client_secret"] = config.client_secret.get_secret_value()
        if config.grant == "refresh_token":
            form["refresh_token"] = self._refresh_token
        if config.scope:
            form["scope"] = config.scope
        return form

    async def _request(self) -> _Token:
        now = self._clock()
        if self._failure is not None and now < self._retry_at:
            # Backing off: the last answer stands until the next attempt is due. A fresh traceback, not a growing one.
            raise self._failure.with_traceback(None)
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_seconds)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                headers = {"Accept": "application/json"}
                async with http.post(self._config.token_url, data=self._form(), headers=headers) as response:
                    status = response.status
                    body = await response.content.read(_MAX_ANSWER_BYTES)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            why = f"{type(error).__name__}: {str(error)[:200]}"
            raise self._failed(TokenUnavailable(f"the token endpoint is unreachable ({why})")) from None
        answer = _json_object(body)
        if status == 200:
            return self._accepted(answer)
        error = answer.get("error") if isinstance(answer.get("error"), str) else ""
        if 400 <= status < 500 and status not in (408, 429) and error != "temporarily_unavailable":
            # RFC 6749 §5.2 answers 400 (401 for invalid_client); a 403 or 404 is a wrong token_url, equally ours to fix.
            description = answer.get("error_description") if isinstance(answer.get("error_description"), str) else ""
            raise self._failed(TokenRefused(error or f"HTTP {status}", self._scrub(description)))
        raise self._failed(TokenUnavailable(f"the token endpoint answered {status}" + (f" ({error[:50]})" if error else "")))

    def _accepted(self, answer: dict[str, object]) -> _Token:
        value = answer.get("access_token")
        token_type = answer.get("token_type", "Bearer")
        if not isinstance(value, str) or not _BEARER_TOKEN.fullmatch(value) or str(token_type).lower() != "bearer":
            raise self._failed(TokenUnavailable("the token endpoint's answer holds no usable bearer token"))
        try:
            # Microsoft's older endpoints send the number as a string.
            lifetime = max(0.0, float(answer.get("expires_in", _DEFAULT_LIFETIME)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            lifetime = _DEFAULT_LIFETIME
        rotated = answer.get("refresh_token")
        if self._config.grant == "refresh_token" and isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            # The value is not logged: it is a secret, and the configured one keeps working until it expires.
            log.log(
                logging.INFO if self._told_rotation else logging.WARNING,
                "the token endpoint issued a new refresh token; it is used from now on but kept only in memory: "
                "the configured one works until it expires (Microsoft: 90 days after it was issued), so obtain "
                "a new one by consenting again and update refresh_token before then",
                extra={"event": "oauth_refresh_token_rotated", "client": self._name},
            )
            self._told_rotation = True
        self._failures, self._failure = 0, None
        now = self._clock()
        # At most half its lifetime early: a token shorter-lived than refresh_before_seconds is still used.
        lead = min(self._config.refresh_before_seconds, lifetime / 2)
        log.info(
            "access token obtained", extra={"event": "oauth_token_obtained", "client": self._name, "expires_in": round(lifetime)}
        )
        return _Token(value, renew_at=now + lifetime - lead, expires_at=now + lifetime)

    def _failed(self, error: TokenRefused | TokenUnavailable) -> TokenRefused | TokenUnavailable:
        """Remember the failure and when to ask again; return it to be raised."""
        self._failures += 1
        backoff = min(2.0 ** (self._failures - 1), _MAX_BACKOFF)
        self._retry_at = self._clock() + backoff
        self._failure = error
        if isinstance(error, TokenUnavailable):
            error.retry_after = backoff
        # Not logged here: the mailbox watcher and the reply sender say what it stops them doing.
        return error

    def _scrub(self, text: str) -> str:
        """The endpoint's description, on one line and short, without anything we sent it (should it echo a secret)."""
        text = " ".join(text.split())[:300]
        config = self._config
        for secret in (config.client_secret.get_secret_value() if config.client_secret else "", self._refresh_token):
            if secret:
                text = text.replace(secret, "[secret]")
        return text


def _json_object(body: bytes) -> dict[str, object]:
    try:
        answer = json.loads(body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def sasl_response(mechanism: str, user: str, token: str, *, host: str, port: int) -> bytes:
    """The client's SASL message for XOAUTH2 (Google's and Microsoft's format) or OAUTHBEARER (RFC 7628 §3.1), base64-encoded."""
    if mechanism == "xoauth2":
        message = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        # RFC 5801 §4: "=" and "," in the authorization identity are escaped.
        identity = user.replace("=", "=3D").replace(",", "=2C")
        message = f"n,a={identity},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(message.encode())
