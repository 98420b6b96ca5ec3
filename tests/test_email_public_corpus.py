"""Real-world mail from public fixtures of mail-handling projects, through the normalizer, SMTP and IMAP.

``tests/corpus/email/public/MANIFEST.json`` names each message's origin and
licence and what a person reading it in a mail client takes as its sender,
subject and own text, and whether it may be acknowledged (a person, not a
robot or a role address). Through SMTP into the listener and through IMAP
from a real Dovecot, read back from the real Kafka broker: 250 for every
message, one complaint per message, the expected fields, a valid record.
"""

from __future__ import annotations

import asyncio
import email
import hashlib
import json
import re
from collections.abc import Iterator
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from intake.normalizer import email as mail
from intake.normalizer.record import json_schema
from tests.support.dovecot import Dovecot
from tests.support.gateway import running
from tests.support.mail import email_settings, smtp_data
from tests.support.topic import Record, of_type, read_topic

CORPUS = Path(__file__).parent / "corpus" / "email" / "public"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text())["messages"]
SCHEMA = json_schema()


def crlf(data: bytes) -> bytes:
    """The message as it travels by SMTP and is stored by IMAP: CRLF line ends."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def envelope_sender(data: bytes) -> str:
    """MAIL FROM as the real route had it: the Return-Path ('' for the null sender of bounces), else the From."""
    message = email.message_from_bytes(data, policy=compat32)
    for field in ("Return-Path", "From"):
        value = message.get(field)
        if value is not None:
            addresses = [address for _name, address in getaddresses([str(value)]) if "@" in address]
            if field == "Return-Path" and str(value).strip().strip("<>").strip() == "":
                return ""
            if addresses:
                return addresses[0]
    return "unknown@customer.test"


@pytest.mark.parametrize("entry", MANIFEST, ids=[entry["file"] for entry in MANIFEST])
def test_the_normalizer_reads_each_public_mail_as_a_person_would(entry: dict[str, Any]) -> None:
    parsed = mail.parse((CORPUS / entry["file"]).read_bytes())
    expected = entry["expected"]
    assert (parsed.sender, parsed.subject, parsed.text) == (expected["sender"], expected["subject"], expected["text"])
    assert (parsed.reply_to is not None) == expected["acknowledged"]


def test_the_manifest_names_every_file_and_its_licence() -> None:
    assert sorted(entry["file"] for entry in MANIFEST) == sorted(path.name for path in CORPUS.glob("*.eml"))
    assert all(entry["source"]["repo"] and entry["source"]["path"] and entry["source"]["licence"] for entry in MANIFEST)


# --------------------------------------------------------------------------- through the channels


def by_digest() -> dict[str, dict[str, Any]]:
    return {hashlib.sha256(crlf((CORPUS / entry["file"]).read_bytes())).hexdigest(): entry for entry in MANIFEST}


def check_records(records: list[Record], relay) -> None:
    """One complaint per message with its expected fields and a valid record; acknowledgements only to people."""
    expected = by_digest()
    complaints = of_type(records, "received") + of_type(records, "followed_up")
    assert of_type(records, "dead_lettered") == []
    seen = {record.data["raw"]["sha256"]: record for record in complaints}
    assert len(complaints) == len(MANIFEST) and sorted(seen) == sorted(expected), "one complaint per message"
    acknowledged = {record.key for record in of_type(records, "acknowledged")}
    mismatches = []
    for digest, record in seen.items():
        jsonschema.validate(record.data, SCHEMA)
        want = expected[digest]["expected"]
        got = {
            "sender": (record.data.get("complainant") or {}).get("email"),
            "subject": record.data.get("subject") or "",
            "text": record.data["text"],
            "acknowledged": record.key in acknowledged,
        }
        if got != want:
            mismatches.append((expected[digest]["file"], {k: (got[k], want[k]) for k in got if got[k] != want[k]}))
    assert mismatches == []
    assert len(relay.messages) == sum(entry["expected"]["acknowledged"] for entry in MANIFEST)


def expected_records() -> int:
    return len(MANIFEST) + sum(entry["expected"]["acknowledged"] for entry in MANIFEST)


async def test_every_public_mail_through_smtp_is_one_complaint_with_its_fields(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    async with running(config):
        answers = []
        for entry in MANIFEST:
            data = crlf((CORPUS / entry["file"]).read_bytes())
            answers.append((entry["file"], (await smtp_data(config.email.smtp.port, data, mail_from=envelope_sender(data)))[0]))
        await relay.wait_for(sum(entry["expected"]["acknowledged"] for entry in MANIFEST), timeout=60)
        records = await read_topic(kafka.bootstrap, topic, expect=expected_records(), timeout=60, settle=2)
    assert [name for name, code in answers if code != 250] == []
    check_records(records, relay)


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


async def test_every_public_mail_through_imap_is_one_complaint_with_its_fields(tmp_path: Path, kafka, topic, relay, dovecot):
    folder = "PublicCorpus"

    def deliver() -> None:
        with dovecot.client() as client:
            client.create_folder(folder)
            for entry in MANIFEST:
                client.append(folder, crlf((CORPUS / entry["file"]).read_bytes()))

    await asyncio.to_thread(deliver)
    mailbox = dovecot.mailbox_config(folder=folder, idle_seconds=600, poll_seconds=3600)
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay, smtp={"enabled": False}, imap=[mailbox])
    async with running(config):
        await relay.wait_for(sum(entry["expected"]["acknowledged"] for entry in MANIFEST), timeout=60)
        records = await read_topic(kafka.bootstrap, topic, expect=expected_records(), timeout=60, settle=2)
    check_records(records, relay)
