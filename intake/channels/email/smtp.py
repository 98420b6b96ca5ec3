"""The SMTP listener: aiosmtpd on the gateway's event loop, answering 250 only once a mail is in the spool.

RFC 5321: a 250 after DATA takes responsibility for the message, so it is
said after the spool write has committed: of the raw mail, into the spool's
inbox; it is parsed and normalised after (``Inbound.receive_later``), since
a mail has no answer to compose. Every failure of ours is a 451 the
sending MTA retries, never a 5xx that would bounce the customer's complaint;
5xx is kept for what is the sender's: a recipient we do not take mail for
(550: no open relay) and a message over the size limit (552). Never for the
content: a line of any length within the size limit is taken, byte for byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import re
import ssl
import time
import weakref
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from intake.errors import TemporaryFailure
from intake.normalizer import email as mail

if TYPE_CHECKING:
    from intake.channels.email import SmtpListenerConfig
    from intake.channels.email.inbound import Inbound
    from intake.metrics import Metrics

log = logging.getLogger("intake.email.smtp")

DEFERRED = "451 4.3.0 Temporary failure, please try again later"
# On stop, how long a DATA in progress may take to get its answer.
_STOP_GRACE_SECONDS = 10.0
NOT_OURS = "550 5.7.1 Relaying denied: this server only takes mail for its own complaint addresses"
TOO_BIG = "552 5.3.4 Message size exceeds the fixed maximum message size"

# A path as nearly every MTA writes it, "<local@host.example>" and its ESMTP parameters one space apart: read without
# the email package's header parser, which aiosmtpd runs on every MAIL and RCPT (with a typing class made on each call:
# 9 % of an SMTP worker's time). Anything else (quoted, a literal, a comment, a source route) is aiosmtpd's to read.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"(?: ([A-Za-z0-9][A-Za-z0-9=+.:/_,-]*(?: [A-Za-z0-9][A-Za-z0-9=+.:/_,-]*)*))?"
)


class _Session(SMTP):
    """aiosmtpd's SMTP session, taking text lines as long as the whole message may be.

    aiosmtpd holds DATA to RFC 5321 §4.5.3.1.6 (1000 octets a line) and answers
    a longer line with a permanent "500 Line too long": the sender bounces the
    complaint. Real mail has lines of tens of thousands of characters (HTML
    written on one line, text pasted from forms), and the raw message is to be
    kept exactly as it came, so nothing is rewrapped either. Commands share the
    reader's limit: one over 512 octets still gets aiosmtpd's 500, after it has
    been read, which takes no more memory than a message may.
    """

    def __init__(self, handler: Any, *, data_size_limit: int, **options: Any) -> None:
        # aiosmtpd reads line_length_limit in __init__ (its StreamReader's limit) and in DATA: set it first.
        # Plus the CRLF and a transparency dot: a line this long cannot fit in a message within the limit.
        self.line_length_limit = data_size_limit + len(b".\r\n")
        super().__init__(handler, data_size_limit=data_size_limit, **options)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """(address, the rest: its parameters) as aiosmtpd reads them; the common form without its parser."""
        plain = _PLAIN_PATH.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)
        address = plain.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, plain.group(2) or ""

    async def push(self, status: str | bytes) -> None:
        # A line longer than that is a message over the size limit, and gets the 552 that SIZE promised.
        if isinstance(status, str) and status.startswith("500 Line too long"):
            status = TOO_BIG
        await super().push(status)


class SmtpListener:
    """A gateway service; also the aiosmtpd handler (its ``handle_*`` hooks), as aiosmtpd expects."""

    def __init__(self, config: SmtpListenerConfig, inbound: Inbound, metrics: Metrics | None = None) -> None:
        self._config = config
        self._inbound = inbound
        self._metrics = metrics
        self._addresses = {entry for entry in config.accept if "@" in entry}
        self._domains = {entry for entry in config.accept if "@" not in entry}
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()

    # --- life -------------------------------------------------------------------

    name = "smtp"
    # Set by the gateway when it runs several workers: each binds the same port, the kernel spreads connections.
    reuse_port = False

    async def open(self) -> None:
        """Bind the listening socket before the gateway reports it has started; a taken port fails the start."""
        # aiosmtpd logs every command at INFO, with the customer's address in it.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        # The language model loads now, not under the first burst of mail.
        await asyncio.to_thread(mail.warm_up)
        tls = self._tls_context()
        # On the gateway's own loop (not aiosmtpd's Controller thread): the spool's futures live on this loop.
        self._server = await loop.create_server(
            lambda: self._session(loop, tls), self._config.host, self._config.port, reuse_port=self.reuse_port or None
        )
        log.info("SMTP listener started", extra={"event": "smtp_listening", "host": self._config.host, "port": self.port})

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the system chose for port 0)."""
        assert self._server is not None and self._server.sockets
        return self._server.sockets[0].getsockname()[1]

    async def run(self) -> None:
        """Serve until stopped (sessions run on the gateway's loop), then close as ``_close`` says."""
        if self._server is None:  # started again after a crash
            await self.open()
        try:
            await self._stopping.wait()
        finally:
            await self._close(_STOP_GRACE_SECONDS)

    async def stop(self) -> None:
        self._stopping.set()

    async def _close(self, grace: float) -> None:
        """Take no new connections, let a DATA in progress get its answer, then close the idle sessions."""
        if self._server is None:
            return
        self._server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except asyncio.TimeoutError:
            log.warning(
                "SMTP transactions still in progress at shutdown", extra={"event": "smtp_stop_timeout", "count": self._in_flight}
            )
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None

    def _session(self, loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext | None) -> SMTP:
        config = self._config
        session = _Session(
            self,
            data_size_limit=config.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident="intake",
            tls_context=tls,
            require_starttls=config.require_starttls,
            timeout=config.timeout_seconds,
            auth_required=config.auth_required,
            auth_require_tls=config.auth_require_tls,
            authenticator=self._authenticate if config.users else None,
            loop=loop,
        )
        self._sessions.add(session)
        return session

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._config.tls_cert is None or self._config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._config.tls_cert, self._config.tls_key)
        return context

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        secret = self._config.users.get(auth_data.login.decode("utf-8", "replace"))
        # Compared even for an unknown login, so the answer's timing does not say which logins exist.
        expected = secret.get_secret_value().encode() if secret is not None else b"\0" * 32
        good = hmac.compare_digest(expected, auth_data.password) and secret is not None
        return AuthResult(success=good, handled=False)

    # --- aiosmtpd hooks -----------------------------------------------------------

    def accepts(self, address: str) -> bool:
        """Is this one of the addresses or domains we take mail for (case-insensitive)?"""
        address = address.strip().lower()
        return address in self._addresses or address.rpartition("@")[2] in self._domains

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        if not self.accepts(address):
            if self._metrics is not None:
                self._metrics.refused.labels(channel="email", status="550").inc()
            return NOT_OURS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        received_at = dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)
        raw = envelope.original_content or b""
        # aiosmtpd gives the null reverse-path as "<>"; the normalizer wants "" for it.
        envelope_sender = "" if envelope.mail_from in (None, "", "<>") else envelope.mail_from
        recipients = sorted({address.lower() for address in envelope.rcpt_tos})
        self._in_flight += 1
        self._idle.clear()
        try:
            queued = await self._inbound.receive_later(
                raw,
                received_at=received_at,
                envelope_sender=envelope_sender,
                origin={"received_via": "smtp", "recipients": ", ".join(recipients)},
                # Kept in the spool with the raw message, so the record can be derived again exactly.
                context={"via": "smtp", "envelope_sender": envelope_sender, "recipients": recipients},
            )
        except TemporaryFailure as error:
            log.warning("mail deferred", extra={"event": "smtp_deferred", "error": str(error)})
            return DEFERRED
        except Exception:  # aiosmtpd would answer 500 and the sender would bounce the complaint: defer instead
            log.exception("mail deferred after an unexpected error", extra={"event": "smtp_failed"})
            return DEFERRED
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        log.info("mail queued", extra={"event": "smtp_queued", "reference": queued, "size": len(raw)})
        return f"250 2.0.0 OK: queued as {queued}"
