"""A capturing SMTP relay for tests: aiosmtpd in its own thread, keeping every message it is given.

``stop()`` and ``start()`` again on the same port simulate a relay outage;
``refuse`` makes it answer 550 for chosen recipients.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.gateway import free_port


@dataclass(frozen=True)
class Captured:
    """One message as the relay received it."""

    mail_from: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]


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
                )
            )
        return "250 2.0.0 Captured"


class CapturingRelay:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.refuse: set[str] = set()
        self._messages: list[Captured] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[Captured]:
        with self._lock:
            return list(self._messages)

    def start(self) -> None:
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10)
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
