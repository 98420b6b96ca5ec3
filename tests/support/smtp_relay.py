"""A capturing SMTP relay for tests: aiosmtpd in its own thread, keeping every message it is given.

``stop()`` and ``start()`` again on the same port simulate a relay outage;
``refuse`` makes it answer 550 for chosen recipients. Given an authorization
server it is a relay like Microsoft 365's and Gmail's: mail only after AUTH
XOAUTH2 or OAUTHBEARER with a token that server vouches for; ``sign_ins``
records each attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.policy
import json
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from tests.support.gateway import free_port
from tests.support.oauth_server import AuthorizationServer


@dataclass(frozen=True)
class Captured:
    """One message as the relay received it."""

    mail_from: str
    recipients: list[str]
    raw: bytes
    peer: tuple[str, int] | None = None  # the client's end of the connection it came on: one per SMTP session

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]


@dataclass(frozen=True)
class SignIn:
    """One AUTH with a token."""

    mechanism: str
    user: str
    accepted: bool


class _Handler:
    def __init__(self, relay: CapturingRelay) -> None:
        self._relay = relay

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address.lower() in self._relay.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._relay._lock:
            self._relay._messages.append(
                # aiosmtpd spells the null reverse-path "<>"; "" here, as SMTP libraries take it.
                Captured(
                    mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
                    recipients=list(envelope.rcpt_tos),
                    raw=envelope.original_content or b"",
                    peer=tuple(session.peer[:2]) if session.peer else None,
                )
            )
        return "250 2.0.0 Captured"


class _OAuthHandler(_Handler):
    """aiosmtpd finds ``auth_<MECHANISM>`` methods on the handler and offers them in EHLO."""

    def __init__(self, relay: CapturingRelay, oauth: AuthorizationServer) -> None:
        super().__init__(relay)
        self._oauth = oauth

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._bearer(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._bearer(server, args, "OAUTHBEARER")

    async def _bearer(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        if len(args) > 1:  # the response on the AUTH line itself (RFC 4954 initial response)
            try:
                response: bytes = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Can't decode base64")
        else:
            answer = await server.challenge_auth("")
            if answer is MISSING:
                return AuthResult(success=False, handled=True)
            response = answer  # type: ignore[assignment]
        fields = dict(part.split("=", 1) for part in response.decode(errors="replace").split("\x01") if "=" in part)
        if mechanism == "XOAUTH2":
            user = fields.get("user", "")
        else:  # RFC 7628: the user is the GS2 header's authorization identity, "n,a=<user>,"
            header = response.split(b"\x01", 1)[0].decode(errors="replace")
            user = header[4:-1].replace("=2C", ",").replace("=3D", "=") if header.startswith("n,a=") else ""
        token = fields.get("auth", "").removeprefix("Bearer ")
        accepted = self._oauth.active(token, user, by="relay")
        with self._relay._lock:
            self._relay._sign_ins.append(SignIn(mechanism, user, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=user)
        # The error report a client must answer (with an empty line, or ^A for OAUTHBEARER) before the final 535.
        await server.challenge_auth(json.dumps({"status": "401", "schemes": "bearer"}))
        return AuthResult(success=False, handled=False)


class _SaslServer(SMTP):
    # RFC 4954 §4: a SASL response line may be 12288 octets long; aiosmtpd reads 1001 at most, and an access token
    # (a JWT from Microsoft) is a few kilobytes.
    line_length_limit = 12288


class _OAuthController(Controller):
    def factory(self) -> SMTP:
        return _SaslServer(self.handler, **self.SMTP_kwargs)


class CapturingRelay:
    def __init__(self, port: int | None = None, *, oauth: AuthorizationServer | None = None) -> None:
        self.port = port or free_port()
        self.refuse: set[str] = set()
        self.oauth = oauth
        self._messages: list[Captured] = []
        self._sign_ins: list[SignIn] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[Captured]:
        with self._lock:
            return list(self._messages)

    @property
    def sign_ins(self) -> list[SignIn]:
        with self._lock:
            return list(self._sign_ins)

    def start(self) -> None:
        if self.oauth is None:
            self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10)
        else:
            self._controller = _OAuthController(
                _OAuthHandler(self, self.oauth),
                hostname="127.0.0.1",
                port=self.port,
                ready_timeout=10,
                auth_required=True,
                auth_require_tls=False,  # loopback: the tokens may travel in clear
                auth_exclude_mechanism=["PLAIN", "LOGIN"],
            )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def config(self, **options: object) -> dict[str, object]:
        """The gateway's ``[email.relay]`` section for this relay."""
        return {"host": "127.0.0.1", "port": self.port, "security": "none", "from_address": "complaints@example.test", **options}

    async def wait_for(self, count: int, timeout: float = 20) -> list[Captured]:
        """At least ``count`` messages, polled until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.messages
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the relay has {len(self.messages)} messages, expected {count}")
