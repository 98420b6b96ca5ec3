"""An IMAP mailbox watcher: imapclient in a worker thread, IDLE where offered, the UID position kept in the spool.

The durable truth of what was taken in is (mailbox, UIDVALIDITY, last UID) in
the spool's cursor table, written in the same transaction as each message
(RFC 3501 §2.3.1.1: that triple names one message forever). The \\Seen flag
or the move that follows is a courtesy to people reading the mailbox, done
only after the spool write, and never read back as proof of import (Zammad
#1662 and #243 lost or duplicated mail by trusting it). When UIDVALIDITY
changes the folder is read again from the start; the channel message id is
the Message-ID and a digest of the content (``inbound.channel_message_id``),
so what was already taken in is a duplicate in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import threading
import time
from typing import TYPE_CHECKING

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from imapclient.imapclient import DELETED, SEEN

from intake.channels.email.oauth import AccessTokens, TokenRefused, TokenUnavailable
from intake.errors import TemporaryFailure
from intake.spool import Spool
from intake.pause import pause

if TYPE_CHECKING:
    from intake.channels.email import ImapMailboxConfig
    from intake.channels.email.inbound import Inbound

log = logging.getLogger("intake.email.imap")

# Messages fetched per FETCH command: few round trips, bounded memory.
_FETCH_BATCH = 10
# How often the IDLE thread looks up from the socket to see whether the gateway is stopping.
_STOP_CHECK_SECONDS = 1.0
# What a connection or server failure looks like through imapclient and the socket below it.
_CONNECTION_ERRORS = (IMAPClientError, OSError)
# What keeps a mailbox that signs in with OAuth from getting an access token.
_TOKEN_ERRORS = (TokenRefused, TokenUnavailable)


class MailboxWatcher:
    """A gateway service: takes in every message that arrives in one mailbox folder, once."""

    def __init__(self, config: ImapMailboxConfig, inbound: Inbound, spool: Spool) -> None:
        self._config = config
        self._inbound = inbound
        self._spool = spool
        self._stopping = asyncio.Event()
        self._stop_flag = threading.Event()  # the same signal, for the worker thread
        # What the watcher is doing, for operators and tests: connecting, catching up, idle, polling, waiting.
        self.state = "stopped"
        self._last_error = ""
        self._reached = False  # whether the current session got as far as a complete catch-up
        # Access tokens for XOAUTH2 / OAUTHBEARER, where the server has basic authentication off (Microsoft 365, Gmail).
        self._tokens = AccessTokens(config.oauth, name=self.name) if config.auth != "password" and config.oauth else None

    @property
    def name(self) -> str:
        """The component's name, for logs, /readyz and metrics."""
        return f"imap:{self._config.name}"

    async def stop(self) -> None:
        """Ask ``run`` to end: the thread notices within a second when idling; a command in flight is bounded by the socket timeout."""
        self._stopping.set()
        self._stop_flag.set()

    def health(self) -> str | None:
        return self._last_error if self.state == "waiting to reconnect" else None

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the gateway stops first."""
        await pause(self._stopping, seconds)

    # --- the watcher's life ------------------------------------------------------

    async def run(self) -> None:
        delay = 0.5  # doubled before the first wait: 1 s, 2 s, 4 s... up to reconnect_max_seconds
        while not self._stopping.is_set():
            self._reached = False
            self.state = "connecting"
            try:
                await self._session()
                continue
            except _CONNECTION_ERRORS as error:
                self._last_error = f"mailbox unreachable: {type(error).__name__}: {str(error)[:200]}"
                log.warning(
                    "mailbox unavailable; reconnecting",
                    extra={
                        "event": "imap_disconnected",
                        "mailbox": self._config.name,
                        "error_type": type(error).__name__,
                        "error": str(error)[:300],
                    },
                )
            except _TOKEN_ERRORS as error:
                # Retried like a server that is away: a revoked client or consent can be restored at the provider
                # without touching the gateway, and a token endpoint that was down comes back.
                self._last_error = f"cannot sign in, no access token: {str(error)[:300]}"
                log.log(
                    logging.ERROR if isinstance(error, TokenRefused) else logging.WARNING,
                    "mailbox cannot sign in: no access token; retrying",
                    extra={
                        "event": "imap_no_token",
                        "mailbox": self._config.name,
                        "error_type": type(error).__name__,
                        "error": str(error)[:300],
                    },
                )
            # A session that worked and dropped is retried soon; a server that stays away (or a folder that
            # cannot be selected), less and less often.
            delay = 1.0 if self._reached else min(delay * 2, self._config.reconnect_max_seconds)
            self.state = "waiting to reconnect"
            await self._pause(delay)
        self.state = "stopped"

    async def _session(self) -> None:
        """One connection: catch up, then wait for news (IDLE or polling), until stopped or disconnected."""
        client = await self._open()
        try:
            idle = client.has_capability("IDLE")
            log.info("mailbox connected", extra={"event": "imap_connected", "mailbox": self._config.name, "idle": idle})
            if self._config.after_import == "move" and not await asyncio.to_thread(client.folder_exists, self._config.move_to):
                await asyncio.to_thread(client.create_folder, self._config.move_to)
            first = True
            while not self._stopping.is_set():
                self.state = "catching up"
                uidvalidity = await asyncio.to_thread(self._select, client)
                try:
                    await self._catch_up(client, uidvalidity, tidy=first)
                except TemporaryFailure as error:
                    # The spool or the attachment store cannot take it now: nothing was promised, the cursor
                    # has not moved; try again on this connection.
                    log.warning(
                        "mailbox import deferred", extra={"event": "imap_deferred", "mailbox": self._config.name, "error": str(error)}
                    )
                    await self._pause(error.retry_after)
                    continue
                first = False
                self._reached = True
                if self._stopping.is_set():
                    break
                if idle:
                    await asyncio.to_thread(self._idle, client)
                else:
                    self.state = "polling"
                    await self._pause(self._config.poll_seconds)
        finally:
            await asyncio.to_thread(self._logout, client)

    async def _open(self) -> IMAPClient:
        """Connect and sign in. An access token is fetched here, on the event loop, and handed to the thread."""
        token = await self._tokens.get() if self._tokens is not None else None
        try:
            return await asyncio.to_thread(self._connect, token)
        except LoginError:
            if self._tokens is not None and token is not None:
                # Refused by the server (revoked, or expired sooner than announced): the next attempt gets a new one.
                self._tokens.forget(token)
            raise

    # --- in the worker thread (blocking imapclient calls) ---------------------------

    def _connect(self, token: str | None) -> IMAPClient:
        config = self._config
        context = None
        if config.security != "none":
            context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        port = config.port or (993 if config.security == "tls" else 143)
        client = IMAPClient(
            config.host, port=port, ssl=config.security == "tls", ssl_context=context, timeout=config.timeout_seconds
        )
        try:
            if config.security == "starttls":
                client.starttls(context)
            if config.auth == "xoauth2":
                client.oauth2_login(config.username, token)
            elif config.auth == "oauthbearer":
                client.oauthbearer_login(config.username, token)
            else:
                client.login(config.username, config.password.get_secret_value() if config.password else "")
        except BaseException:
            client.shutdown()
            raise
        return client

    def _select(self, client: IMAPClient) -> int:
        """Select the folder (again: that also brings the server's view up to date) and return its UIDVALIDITY."""
        status = client.select_folder(self._config.folder)
        return int(status[b"UIDVALIDITY"])

    def _idle(self, client: IMAPClient) -> None:
        """Wait in IDLE until the server reports a change, the gateway stops, or the IDLE is due to be re-issued."""
        client.idle()
        self.state = "idle"
        try:
            renew_at = time.monotonic() + self._config.idle_seconds
            while not self._stop_flag.is_set():
                remaining = renew_at - time.monotonic()
                if remaining <= 0:
                    return
                wait = min(_STOP_CHECK_SECONDS, remaining)
                started = time.monotonic()
                responses = client.idle_check(timeout=wait)
                if any(isinstance(r, tuple) and r[:1] == (b"BYE",) for r in responses):
                    raise IMAPClientAbortError("the server ended the session during IDLE")
                if any(not (isinstance(r, tuple) and r[:1] == (b"OK",)) for r in responses):
                    return  # EXISTS, EXPUNGE, FETCH...: something changed
                if not responses and time.monotonic() - started < wait / 2:
                    # imapclient returns nothing, at once, when the server has closed the socket.
                    raise IMAPClientAbortError("the connection closed during IDLE")
        finally:
            client.idle_done()

    def _mark_taken(self, client: IMAPClient, uids: list[int]) -> None:
        if self._config.after_import == "seen":
            client.add_flags(uids, [SEEN], silent=True)
        elif client.has_capability("MOVE"):
            client.move(uids, self._config.move_to)
        else:
            client.copy(uids, self._config.move_to)
            client.add_flags(uids, [DELETED], silent=True)
            if client.has_capability("UIDPLUS"):
                client.uid_expunge(uids)
            else:
                client.expunge()

    def _logout(self, client: IMAPClient) -> None:
        try:
            client.logout()
        except _CONNECTION_ERRORS:
            # Already gone: close our end; a socket that is closed already is what we wanted.
            with contextlib.suppress(OSError):
                client.shutdown()

    # --- taking messages in ---------------------------------------------------------

    async def _catch_up(self, client: IMAPClient, uidvalidity: int, *, tidy: bool) -> None:
        """Take in every message above the stored UID, in UID order, advancing the cursor with each."""
        config = self._config
        last_uid = 0
        stored = await self._spool.cursor(config.cursor_name)
        if stored is not None:
            stored_validity, _, stored_uid = stored.partition(":")
            if int(stored_validity) == uidvalidity:
                last_uid = int(stored_uid)
            else:
                log.warning(
                    "UIDVALIDITY changed; reading the folder again (duplicates are recognised by Message-ID and content)",
                    extra={"event": "imap_uidvalidity_changed", "mailbox": self._config.name},
                )
                await self._spool.set_cursor(config.cursor_name, f"{uidvalidity}:0")
        if tidy and last_uid and config.after_import == "move":
            # Taken in earlier but not moved (the connection dropped in between): finish the move now.
            leftovers = await asyncio.to_thread(client.search, ["UID", f"1:{last_uid}"])
            if leftovers:
                await self._settle(client, sorted(leftovers))
        # "n:*" also matches the highest UID when it is below n: filter ourselves.
        found = await asyncio.to_thread(client.search, ["UID", f"{last_uid + 1}:*"])
        uids = sorted(uid for uid in found if uid > last_uid)
        for start in range(0, len(uids), _FETCH_BATCH):
            if self._stopping.is_set():
                return
            batch = uids[start : start + _FETCH_BATCH]
            fetched = await asyncio.to_thread(client.fetch, batch, ["BODY.PEEK[]"])
            for uid in batch:
                raw = fetched.get(uid, {}).get(b"BODY[]")
                if raw is None:  # expunged by someone else since the SEARCH
                    continue
                await self._take(uid, uidvalidity, raw)
                await self._settle(client, [uid])

    async def _take(self, uid: int, uidvalidity: int, raw: bytes) -> None:
        received_at = dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)
        position = f"{uidvalidity}:{uid}"
        outcome = await self._inbound.receive(
            raw,
            received_at=received_at,
            envelope_sender=None,  # IMAP has no envelope; Return-Path in the message stands for it
            origin={"received_via": "imap", "mailbox": self._config.name, "folder": self._config.folder},
            context={"via": "imap", "mailbox": self._config.name, "folder": self._config.folder, "uid": position},
            cursor=(self._config.cursor_name, position),
        )
        log.info(
            "mail taken in",
            extra={
                "event": "imap_received",
                "mailbox": self._config.name,
                "uid": position,
                "reference": outcome.reference,
                "duplicate": outcome.duplicate,
            },
        )

    async def _settle(self, client: IMAPClient, uids: list[int]) -> None:
        """Flag or move what is safely in the spool; a failure here loses nothing (the cursor has moved on)."""
        try:
            await asyncio.to_thread(self._mark_taken, client, uids)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as error:
            log.warning(
                "could not flag or move an imported message",
                extra={"event": "imap_settle_failed", "mailbox": self._config.name, "error": str(error)[:300]},
            )
