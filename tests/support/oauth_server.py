"""A local OAuth 2.0 authorization server for tests: a token endpoint and token introspection, in its own thread.

It does what Microsoft's and Google's do for a mail client: the token endpoint
(RFC 6749) grants access tokens for client credentials (§4.4) and for refresh
tokens (§6), optionally replacing the refresh token with each use as
Microsoft does; introspection (RFC 7662) tells Dovecot's oauth2 passdb whether
a token is active and which mailbox it is for; ``active()`` tells the test
SMTP relay the same. Each test registers a client of its own, so tests that
share the server do not see each other's grants. Every grant and every check
is recorded, with the time it happened, for the tests to look at.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from dataclasses import dataclass, field

from aiohttp import BasicAuth, web

from tests.support.gateway import free_port

# Dovecot's credentials at the introspection endpoint: RFC 7662 §2.1 wants the resource server authenticated.
RESOURCE_ID = "dovecot"
RESOURCE_SECRET = "introspection-secret-for-tests"


@dataclass
class Client:
    """An application registered at the authorization server, and what its tokens give access to."""

    client_id: str
    client_secret: str
    mailbox: str
    expires_in: int = 3600
    rotate_refresh_tokens: bool = False
    disabled: bool = False
    # Statuses the token endpoint answers this client's next requests with (an outage), one per request.
    outage: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Grant:
    """One request to the token endpoint and its outcome."""

    at: float
    client_id: str
    grant_type: str
    scope: str
    refresh_token: str  # the one presented, for grant_type refresh_token
    access_token: str  # issued; empty when refused
    error: str  # empty when granted
    expires_at: float
    new_refresh_token: str  # issued in place of the one presented, when the client's refresh tokens rotate


@dataclass(frozen=True)
class Check:
    """One question whether a token is good, by Dovecot (introspection) or the relay."""

    at: float
    by: str
    token: str
    active: bool


@dataclass
class _Issued:
    client_id: str
    mailbox: str
    scope: str
    expires_at: float
    revoked: bool = False


def _token_like_microsofts() -> str:
    """A JWT's shape and size (about 1.5 kB, as Exchange Online's are): long lines are part of what is tested."""
    part = lambda n: base64.urlsafe_b64encode(secrets.token_bytes(n)).decode().rstrip("=")  # noqa: E731
    return f"eyJ{part(60)}.{part(900)}.{part(256)}"


class AuthorizationServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.grants: list[Grant] = []
        self.checks: list[Check] = []
        self._clients: dict[str, Client] = {}
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> client id
        self._tokens: dict[str, _Issued] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/v2.0/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth2/introspect"

    # --- what a test does -----------------------------------------------------

    def register(self, mailbox: str, **options: object) -> Client:
        """A new application allowed into ``mailbox`` (for Microsoft 365: IMAP.AccessAsApp and FullAccess granted)."""
        client = Client(f"intake-{secrets.token_hex(4)}", secrets.token_urlsafe(24), mailbox, **options)  # type: ignore[arg-type]
        with self._lock:
            self._clients[client.client_id] = client
        return client

    def consent(self, client: Client) -> str:
        """The refresh token an operator gets by consenting once as the mailbox's user (Gmail's way)."""
        token = f"1//{secrets.token_urlsafe(48)}"
        with self._lock:
            self._refresh_tokens[token] = client.client_id
        return token

    def disable(self, client: Client) -> None:
        """The application is deleted or its secret revoked: the endpoint refuses it, and its tokens stop working."""
        with self._lock:
            client.disabled = True
            for issued in self._tokens.values():
                if issued.client_id == client.client_id:
                    issued.revoked = True

    def revoke(self, access_token: str) -> None:
        with self._lock:
            self._tokens[access_token].revoked = True

    def grants_of(self, client: Client) -> list[Grant]:
        with self._lock:
            return [grant for grant in self.grants if grant.client_id == client.client_id]

    def checks_of(self, client: Client) -> list[Check]:
        with self._lock:
            issued = {token for token, i in self._tokens.items() if i.client_id == client.client_id}
            return [check for check in self.checks if check.token in issued]

    def active(self, token: str, mailbox: str, *, by: str = "relay") -> bool:
        """Whether ``token`` is good for ``mailbox`` now; recorded as a check."""
        with self._lock:
            issued = self._tokens.get(token)
            good = issued is not None and not issued.revoked and issued.expires_at > time.time() and issued.mailbox == mailbox
            self.checks.append(Check(time.time(), by, token, good))
            return good

    # --- the endpoints --------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        if "Authorization" in request.headers:  # RFC 6749 §2.3.1: HTTP Basic is the other way to send them
            basic = BasicAuth.decode(request.headers["Authorization"])
            client_id, client_secret = basic.login, basic.password
        grant_type, scope = str(form.get("grant_type", "")), str(form.get("scope", ""))
        presented = str(form.get("refresh_token", ""))
        with self._lock:
            client = self._clients.get(client_id)
            outage = client.outage.pop(0) if client is not None and client.outage else None

            def answer(status: int, body: dict[str, object], *, issued: str = "", expires_at: float = 0.0) -> web.Response:
                error = str(body.get("error", "")) if status != 200 else ""
                rotated = str(body.get("refresh_token", ""))
                self.grants.append(Grant(time.time(), client_id, grant_type, scope, presented, issued, error, expires_at, rotated))
                return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

            if outage is not None:
                return answer(outage, {"error": "temporarily_unavailable"})
            if client is None or client.disabled or not secrets.compare_digest(client.client_secret, client_secret):
                # Microsoft's wording, with the application named (never the secret).
                return answer(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": f"AADSTS7000215: Invalid client secret provided, or the application "
                        f"'{client_id}' is disabled.",
                    },
                )
            if grant_type == "client_credentials":
                if not scope:
                    return answer(400, {"error": "invalid_scope", "error_description": "The scope is missing."})
            elif grant_type == "refresh_token":
                if self._refresh_tokens.get(presented) != client_id:
                    return answer(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            else:
                return answer(400, {"error": "unsupported_grant_type"})
            access_token = _token_like_microsofts()
            expires_at = time.time() + client.expires_in
            self._tokens[access_token] = _Issued(client_id, client.mailbox, scope, expires_at)
            body: dict[str, object] = {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": client.expires_in,
                "scope": scope,
            }
            if grant_type == "refresh_token" and client.rotate_refresh_tokens:
                # Microsoft's way: a new refresh token with every use; the old one keeps working until it expires.
                rotated = f"1//{secrets.token_urlsafe(48)}"
                self._refresh_tokens[rotated] = client_id
                body["refresh_token"] = rotated
            return answer(200, body, issued=access_token, expires_at=expires_at)

    async def _introspect(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != RESOURCE_ID or form.get("client_secret") != RESOURCE_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str(form.get("token", ""))
        with self._lock:
            issued = self._tokens.get(token)
        if issued is None or not self.active(token, issued.mailbox, by="dovecot"):
            return web.json_response({"active": False})
        return web.json_response(
            {"active": True, "email": issued.mailbox, "client_id": issued.client_id, "scope": issued.scope, "exp": int(issued.expires_at)}
        )

    # --- life -----------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/oauth2/v2.0/token", self._token)
            app.router.add_post("/oauth2/introspect", self._introspect)
            self._runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(self._runner.setup())
                loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            except BaseException as error:  # told to start() below, which raises it
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="oauth-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None
