"""The email channel through IMAP: a real Dovecot started for these tests, the real Kafka broker, a capturing relay."""

from __future__ import annotations

import asyncio
import email.policy
import time
from collections.abc import Iterator
from email.utils import make_msgid
from pathlib import Path

import jsonschema
import pytest
from imapclient.imapclient import SEEN

from intake.channels.email.imap import MailboxWatcher
from intake.gateway import Gateway
from intake.normalizer.record import json_schema
from intake.normalizer.reference import parse_reference
from tests.support.dovecot import Dovecot
from tests.support.gateway import running
from tests.support.mail import (
    CUSTOMER,
    OUR_ADDRESS,
    complaint_mail,
    counter,
    email_settings,
    long_line,
    raw_mail,
    relayed,
    smtp_data,
    smtp_send,
)
from tests.support.smtp_relay import CapturingRelay
from tests.support.topic import of_type, read_topic, wait_for

SCHEMA = json_schema()


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server



@pytest.fixture
def folder(dovecot: Dovecot) -> str:
    return dovecot.new_folder()


def raw(message) -> bytes:
    return message.as_bytes(policy=email.policy.SMTP)


async def append(dovecot: Dovecot, folder: str, *messages: bytes) -> None:
    """What a mail server does on delivery: APPEND, from another connection than the gateway's."""

    def run() -> None:
        with dovecot.client() as client:
            for message in messages:
                client.append(folder, message)

    await asyncio.to_thread(run)


async def folder_state(dovecot: Dovecot, folder: str) -> dict[int, tuple[bytes, ...]]:
    """UID -> flags of every message in the folder."""

    def run() -> dict[int, tuple[bytes, ...]]:
        with dovecot.client() as client:
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            return {uid: data[b"FLAGS"] for uid, data in client.fetch(uids, ["FLAGS"]).items()} if uids else {}

    return await asyncio.to_thread(run)


def watcher(gateway: Gateway) -> MailboxWatcher:
    return next(service for service in gateway.services if isinstance(service, MailboxWatcher))


async def idling(gateway: Gateway, timeout: float = 20) -> None:
    async def ready() -> bool:
        return watcher(gateway).state == "idle"

    await wait_for(ready, timeout=timeout)


async def taken_in(gateway: Gateway, count: int, outcome: str = "accepted", timeout: float = 20) -> None:
    async def enough() -> bool:
        return counter(gateway, "intake_received", channel="email", outcome=outcome) >= count

    await wait_for(enough, timeout=timeout)


def mailbox_settings(
    tmp_path: Path, kafka, topic: str, relay: CapturingRelay, dovecot: Dovecot, folder: str, *, smtp: bool = False, **options
):
    # IDLE renewed every 10 minutes and polling practically never: within the test, only IDLE can bring news.
    mailbox = dovecot.mailbox_config(folder=folder, idle_seconds=600, poll_seconds=3600, **options)
    return email_settings(tmp_path, kafka.bootstrap, topic, relay, smtp={"enabled": smtp}, imap=[mailbox])


async def test_a_mail_appended_is_published_through_idle_then_flagged_and_never_again_after_a_restart(
    tmp_path: Path, kafka, topic, relay, dovecot, folder
):
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder)
    first, second = complaint_mail(subject="Parcel 1"), complaint_mail("The second parcel was lost.", subject="Parcel 2")
    async with running(config) as (gateway, _):
        await idling(gateway)
        appended = time.monotonic()
        await append(dovecot, folder, raw(first))
        await taken_in(gateway, 1, timeout=10)
        latency = time.monotonic() - appended
        records = await read_topic(kafka.bootstrap, topic, expect=2)

        async def flagged() -> bool:
            return all(SEEN in flags for flags in (await folder_state(dovecot, folder)).values())

        await wait_for(flagged, timeout=10)
        cursor = await gateway.spool.cursor(f"imap:{config.email.imap[0].name}")
    assert latency < 5, f"took {latency:.2f} s from APPEND to the spool"
    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    assert received.data["origin"] == {"received_via": "imap", "mailbox": "complaints", "folder": folder}
    assert received.data["channel_message_id"].split()[0] == first["Message-ID"]
    [uid] = (await folder_state(dovecot, folder)).keys()
    assert cursor is not None and cursor.endswith(f":{uid}")

    # \Seen is only a courtesy: a person marking the message unread again must not make it a new import.
    def mark_unread() -> None:
        with dovecot.client() as client:
            client.select_folder(folder)
            client.remove_flags([uid], [SEEN])

    await asyncio.to_thread(mark_unread)
    async with running(config) as (gateway, _):
        await idling(gateway)
        await append(dovecot, folder, raw(second))
        await taken_in(gateway, 1)
        records = await read_topic(kafka.bootstrap, topic, expect=4, settle=2)
        assert counter(gateway, "intake_received", channel="email", outcome="duplicate") == 0
    received = of_type(records, "received")
    assert sorted(r.data["channel_message_id"].split()[0] for r in received) == sorted([first["Message-ID"], second["Message-ID"]])
    assert len(of_type(records, "acknowledged")) == 2 and len(relay.messages) == 2


async def test_a_recreated_folder_with_a_new_uidvalidity_publishes_nothing_twice(
    tmp_path: Path, kafka, topic, relay, dovecot, folder
):
    done = f"{folder}-imported"
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder, after_import="move", move_to=done)
    mails = [raw(complaint_mail(f"Complaint {n}: the courier was rude.", subject=f"Courier {n}")) for n in range(3)]
    async with running(config) as (gateway, _):
        cursor_name = f"imap:{config.email.imap[0].name}"
        await idling(gateway)
        await append(dovecot, folder, *mails[:2])
        await taken_in(gateway, 2)

        async def moved() -> bool:
            return not await folder_state(dovecot, folder) and len(await folder_state(dovecot, done)) == 2

        await wait_for(moved, timeout=10)
        before = await gateway.spool.cursor(cursor_name)

        def recreate() -> None:
            with dovecot.client() as client:
                client.delete_folder(folder)
                client.create_folder(folder)
                for message in mails:  # the same two again, then a new one
                    client.append(folder, message)

        await asyncio.to_thread(recreate)
        await taken_in(gateway, 3, timeout=30)
        await taken_in(gateway, 2, outcome="duplicate", timeout=30)
        after = await gateway.spool.cursor(cursor_name)
        records = await read_topic(kafka.bootstrap, topic, expect=6, settle=2)
    assert before is not None and after is not None
    assert before.split(":")[0] != after.split(":")[0], "the folder should have a new UIDVALIDITY"
    assert len(of_type(records, "received")) == 3
    assert len(of_type(records, "acknowledged")) == 3 and len(relay.messages) == 3
    assert len({r.headers["ce_id"] for r in records}) == len(records)


async def test_one_bad_message_is_dead_lettered_and_does_not_block_the_mailbox(
    tmp_path: Path, kafka, topic, relay, dovecot, folder
):
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder)
    good = complaint_mail("The parcel after the broken one.", subject="After the bad one")
    await append(dovecot, folder, b"\x00\x01\x02 not a message at all\r\n", raw(good))
    async with running(config) as (gateway, _):
        await taken_in(gateway, 1)
        await taken_in(gateway, 1, outcome="dead_lettered")
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
        records = await read_topic(kafka.bootstrap, topic, expect=2)

        async def all_flagged() -> bool:
            state = await folder_state(dovecot, folder)
            return len(state) == 2 and all(SEEN in flags for flags in state.values())

        await wait_for(all_flagged, timeout=10)
    [event] = dead
    assert "not an email message" in event.data["error"]
    [received] = of_type(records, "received")
    assert received.data["channel_message_id"].split()[0] == good["Message-ID"]


async def test_the_watcher_reconnects_after_the_server_went_away(tmp_path: Path, kafka, topic, relay, dovecot, folder):
    # A low cap on the backoff keeps the test short; the doubling up to it is what runs.
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder, reconnect_max_seconds=2)
    async with running(config) as (gateway, _):
        await idling(gateway)
        await asyncio.to_thread(dovecot.stop)

        async def noticed() -> bool:
            return watcher(gateway).state != "idle"

        await wait_for(noticed, timeout=10)
        await asyncio.to_thread(dovecot.start)
        await idling(gateway, timeout=30)
        await append(dovecot, folder, raw(complaint_mail("Sent while the mail server was restarting.")))
        await taken_in(gateway, 1)
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    assert len(of_type(records, "received")) == 1


async def test_the_same_mail_by_smtp_and_by_imap_is_one_complaint(tmp_path: Path, kafka, topic, relay, dovecot, folder):
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder, smtp=True)
    mail = complaint_mail("Delivered to the listener and to the mailbox alike.")
    async with running(config) as (gateway, _):
        await idling(gateway)
        await smtp_send(config.email.smtp.port, mail)
        await append(dovecot, folder, raw(mail))
        await taken_in(gateway, 1, outcome="duplicate")
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
    assert len(of_type(records, "received")) == 1
    assert len(relay.messages) == 1


async def test_lines_of_any_length_come_through_the_mailbox_byte_for_byte(tmp_path: Path, kafka, topic, relay, dovecot, folder):
    # imaplib refuses a response line over 1 000 000 bytes; a message comes as a literal, read by its length,
    # so no line in it meets that limit. The longest here is in an attachment: the event carries no more
    # text than a Kafka request may.
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder)
    lines = {length: long_line(length) for length in (28_000, 200_000)}
    mails = {
        length: raw_mail(line, message_id=make_msgid(domain="customer.test"), subject=f"Line of {length}")
        for length, line in lines.items()
    }
    export = ",".join(f"order-{n}" for n in range(150_000)).encode()  # 1.6 MB, one line
    mails[len(export)] = b"\r\n".join(
        [
            f"From: Ewa Nowak <{CUSTOMER}>".encode(),
            f"To: {OUR_ADDRESS}".encode(),
            f"Subject: Line of {len(export)}".encode(),
            f"Message-ID: {make_msgid(domain='customer.test')}".encode(),
            b"MIME-Version: 1.0",
            b'Content-Type: multipart/mixed; boundary="part"',
            b"",
            b"--part",
            b"Content-Type: text/plain",
            b"",
            b"The export of my orders is attached.",
            b"--part",
            b'Content-Type: text/csv; name="orders.csv"',
            b'Content-Disposition: attachment; filename="orders.csv"',
            b"",
            export,
            b"--part--",
            b"",
        ]
    )
    await append(dovecot, folder, *mails.values())
    async with running(config) as (gateway, _):
        await taken_in(gateway, 3)
        records = await read_topic(kafka.bootstrap, topic, expect=6)
        received = {int(r.data["subject"].split()[-1]): r for r in of_type(records, "received")}
        stored = {length: await gateway.spool.raw_message(r.data["raw"]["spool_key"]) for length, r in received.items()}
    assert sorted(received) == sorted(mails)
    for length, mail in mails.items():
        assert stored[length] is not None and stored[length][0] == mail
        jsonschema.validate(received[length].data, SCHEMA)
    assert received[28_000].data["text"] == lines[28_000]
    assert received[200_000].data["text"] == lines[200_000][:100_000]
    [attachment] = received[len(export)].data["attachments"]
    assert Path(attachment["location"].removeprefix("file://")).read_bytes() == export


async def test_different_mails_under_one_message_id_in_a_mailbox_are_two_complaints(
    tmp_path: Path, kafka, topic, relay, dovecot, folder
):
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder)
    message_id = make_msgid(domain="customer.test")
    texts = ["Paczka 1001 dotarła uszkodzona.", "Zamówienie 2002 w ogóle nie dotarło."]
    await append(dovecot, folder, *(raw_mail(text, message_id=message_id, trace=relayed("relay-a")) for text in texts))
    async with running(config) as (gateway, _):
        await taken_in(gateway, 2)
        records = await read_topic(kafka.bootstrap, topic, expect=4, settle=2)
        assert counter(gateway, "intake_received", channel="email", outcome="duplicate") == 0
    received = of_type(records, "received")
    assert sorted(r.data["text"] for r in received) == sorted(texts)
    assert len({r.key for r in received}) == 2
    assert len(of_type(records, "acknowledged")) == 2 and len(relay.messages) == 2


async def test_a_mailbox_copy_of_a_mail_taken_in_by_smtp_is_the_same_complaint(
    tmp_path: Path, kafka, topic, relay, dovecot, folder
):
    # The MX hands the mail to the listener and a copy to the mailbox (a forwarding rule, a journaling
    # mailbox, a migration from IMAP to SMTP): the copy carries its own trace fields, and is the same mail.
    config = mailbox_settings(tmp_path, kafka, topic, relay, dovecot, folder, smtp=True)
    message_id = make_msgid(domain="customer.test")
    text = "Delivered to the listener and to the mailbox alike."
    async with running(config) as (gateway, _):
        await idling(gateway)
        code, answer = await smtp_data(config.email.smtp.port, raw_mail(text, message_id=message_id, trace=relayed("relay-a")))
        # Delivered twice into the mailbox too, by two routes.
        await append(
            dovecot,
            folder,
            raw_mail(text, message_id=message_id, trace=relayed("lmtp")),
            raw_mail(text, message_id=message_id, trace=relayed("backup-mx"), linesep=b"\n"),
        )
        await taken_in(gateway, 2, outcome="duplicate")
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
    assert code == 250
    [received] = of_type(records, "received")
    assert received.key == parse_reference(answer)
    assert len(of_type(records, "acknowledged")) == 1 and len(relay.messages) == 1
