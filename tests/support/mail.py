"""Mail for the email channel's tests: complaint messages, real SMTP clients (smtplib, swaks), gateway settings."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from intake.config import Settings
from intake.gateway import Gateway
from tests.support.gateway import free_port, settings
from tests.support.smtp_relay import CapturingRelay

OUR_ADDRESS = "complaints@example.test"
CUSTOMER = "ewa@customer.test"


def complaint_mail(
    text: str = "Moja paczka dotarła uszkodzona, a kurier nie chciał spisać protokołu. Proszę o zwrot pieniędzy.",
    *,
    subject: str = "Uszkodzona paczka",
    sender: str = f"Ewa Nowak <{CUSTOMER}>",
    to: str = OUR_ADDRESS,
    language: str | None = "pl",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = message_id or make_msgid(domain="customer.test")
    if language:
        message["Content-Language"] = language
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text)
    for filename, content_type, data in attachments or []:
        main, _, sub = content_type.partition("/")
        message.add_attachment(data, maintype=main, subtype=sub, filename=filename)
    return message


def long_line(length: int) -> str:
    """One line of ``length`` characters of real text, as some webmailers and HTML-to-text exports send it."""
    sentence = "Paczka dotarła uszkodzona, kurier odmówił spisania protokołu, a infolinia nie odpowiada od tygodnia. "
    return (sentence * (length // len(sentence) + 1))[: length - 1] + "!"


def raw_mail(
    text: str,
    *,
    message_id: str | None,
    subject: str = "Uszkodzona paczka",
    headers: list[str] | None = None,
    trace: list[str] | None = None,
    linesep: bytes = b"\r\n",
) -> bytes:
    """A mail as bytes, written by hand: the text's lines stay as long as they are (the email package would
    encode them into short ones), and ``trace`` fields go on top, as relays prepend them."""
    fields = [
        *(trace or []),
        f"From: Ewa Nowak <{CUSTOMER}>",
        f"To: {OUR_ADDRESS}",
        f"Subject: {subject}",
        "Date: Tue, 04 Mar 2025 16:20:40 +0100",
        *([f"Message-ID: {message_id}"] if message_id else []),
        *(headers or []),
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 8bit",
    ]
    lines = [line for field in fields for line in field.split("\n")]  # a field may be folded over several lines
    return linesep.join([*(line.encode() for line in lines), b"", *(line.encode() for line in text.split("\n")), b""])


def relayed(via: str, *, recipient: str = OUR_ADDRESS) -> list[str]:
    """The trace fields one route through ``via`` adds to a mail: what MTAs, filters and mail stores stamp on it."""
    return [
        f"Return-Path: <bounces+{via}@customer.test>",
        f"Delivered-To: {recipient}",
        f"X-Original-To: {via}-{recipient}",
        f"Received: from {via}.customer.test ({via}.customer.test [192.0.2.7])\n\tby mx.example.test (Postfix) with ESMTPS id {via.upper()}42\n\tfor <{recipient}>; Tue,  4 Mar 2025 16:21:07 +0100 (CET)",
        f"Authentication-Results: mx.example.test; dkim=pass header.d=customer.test; spf=pass smtp.mailfrom={via}.customer.test",
        f"ARC-Seal: i=1; a=rsa-sha256; d={via}.test; s=arc; cv=none; b=c2lnbmVkIGJ5IHt2aWF9",
        f"X-Spam-Status: No, score=-0.1 required=5.0 tests={via.upper()}",
        f"Received: from [10.0.0.7] by {via}.customer.test; Tue, 4 Mar 2025 16:20:41 +0100",
    ]


async def smtp_data(port: int, message: bytes, *, mail_from: str = CUSTOMER, rcpt_to: str = OUR_ADDRESS) -> tuple[int, str]:
    """One transaction with smtplib, the bytes sent as they are; the code and text answered to DATA."""

    def transaction() -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo()
            client.mail(mail_from)
            client.rcpt(rcpt_to)
            code, text = client.data(message)
            return code, text.decode(errors="replace")

    return await asyncio.to_thread(transaction)


def _send(port: int, message: EmailMessage | bytes, mail_from: str, rcpt_to: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        if isinstance(message, bytes):
            client.sendmail(mail_from, rcpt_to, message)
        else:
            client.send_message(message, from_addr=mail_from, to_addrs=rcpt_to)


async def smtp_send(
    port: int, message: EmailMessage | bytes, *, mail_from: str = CUSTOMER, rcpt_to: list[str] | None = None
) -> None:
    """Send with smtplib, in a thread: the gateway answering it runs on this test's event loop."""
    await asyncio.to_thread(_send, port, message, mail_from, rcpt_to or [OUR_ADDRESS])


async def swaks(
    port: int, data: bytes, tmp: Path, *, mail_from: str = CUSTOMER, to: str = OUR_ADDRESS, extra: list[str] | None = None
) -> tuple[int, str]:
    """Send ``data`` (a whole message) with swaks; its exit status and its transcript."""
    message = tmp / f"swaks-{free_port()}.eml"
    message.write_bytes(data)
    process = await asyncio.create_subprocess_exec(
        "swaks", "--server", "127.0.0.1", "--port", str(port), "--from", mail_from, "--to", to,
        "--data", f"@{message}", "--timeout", "30", *(extra or []),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


def email_settings(
    tmp: Path,
    bootstrap: str,
    topic: str,
    relay: CapturingRelay | dict[str, Any],
    *,
    smtp: dict[str, Any] | None = None,
    imap: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """A gateway with the SMTP listener on a free port (unless ``smtp={"enabled": False}``) and the given relay."""
    listener = {"enabled": True, "host": "127.0.0.1", "port": free_port(), "accept": [OUR_ADDRESS, "example.org"], **(smtp or {})}
    section: dict[str, Any] = {
        "smtp": listener,
        "imap": imap or [],
        "relay": relay.config() if isinstance(relay, CapturingRelay) else relay,
    }
    if limits:
        section["limits"] = limits
    overrides["attachments"] = {"directory": str(tmp / "attachments"), **overrides.get("attachments", {})}
    return settings(tmp, bootstrap, topic, email=section, **overrides)


def counter(gateway: Gateway, name: str, **labels: str) -> float:
    """A counter's value in the gateway's registry (0 when never incremented)."""
    return gateway.metrics.registry.get_sample_value(f"{name}_total", labels) or 0.0
