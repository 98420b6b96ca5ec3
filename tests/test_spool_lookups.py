"""The operator's look-ups in a spool: dead letters and what is known of a reference, without personal data unless asked."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from intake.normalizer.errors import InvalidMessage
from tests.support.gateway import complaint_body, post_complaint, running, settings


def intake(config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTAKE_CONFIG": "", "INTAKE_SPOOL__PATH": str(config.spool.path)}
    return subprocess.run([sys.executable, "-m", "intake.cli", *args], capture_output=True, text=True, timeout=60, env=env)


async def test_dead_letters_are_listed_shown_and_a_reference_found(tmp_path: Path, kafka, topic):
    config = settings(tmp_path, kafka.bootstrap, topic)
    raw = b"From: Ewa Nowak <ewa@example.com>\r\n\r\n\x00\x01 unreadable"
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:

        def unreadable():
            raise InvalidMessage("no text part could be decoded")

        dead = await gateway.reception.receive(
            channel="email",
            channel_message_id="<unreadable@example.com>",
            raw=raw,
            normalize=unreadable,
            received_at=dt.datetime.now(dt.timezone.utc),
            ack="reply",
            dead_letter_invalid=True,
            context={"via": "smtp", "envelope_sender": "ewa@example.com", "recipients": ["complaints@example.org"]},
        )
        status, answer = await post_complaint(http, base, complaint_body(), "lookup-1")
        # Beside the running gateway: the look-ups only read.
        listed = intake(config, "spool", "dead-letters", "list")
        shown = intake(config, "spool", "dead-letters", "show", "email:<unreadable@example.com>")
        personal = intake(config, "spool", "dead-letters", "show", "email:<unreadable@example.com>", "--raw", str(tmp_path / "raw.eml"))
        found = intake(config, "spool", "find", answer["reference"].lower())
        missing = intake(config, "spool", "find", "C-0000-0000")
        not_a_reference = intake(config, "spool", "find", "hello")
    assert status == 202
    [letter] = json.loads(listed.stdout)
    assert letter["key"] == "email:<unreadable@example.com>" and letter["reference"] == dead.reference
    assert letter["error"] == "no text part could be decoded" and letter["raw"]["size"] == len(raw)
    described = json.loads(shown.stdout)
    assert described["state"] == "dead_letter" and described["context"]["via"] == "smtp"
    assert "ewa@example.com" not in shown.stdout  # the sender and recipients only when asked
    assert (tmp_path / "raw.eml").read_bytes() == raw and "ewa@example.com" in personal.stdout
    result = json.loads(found.stdout)
    assert found.returncode == 0 and result["reference"] == answer["reference"]
    assert [m["key"] for m in result["messages"]] == ["webhook:acme/lookup-1"] and result["messages"][0]["state"] == "accepted"
    assert missing.returncode == 1 and json.loads(missing.stdout)["messages"] == []
    assert not_a_reference.returncode == 2 and "not a reference" in not_a_reference.stderr
