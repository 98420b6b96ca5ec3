"""The email channel through SMTP: real clients (smtplib, swaks) into the gateway's listener, a capturing relay
for acknowledgements, the real Kafka broker for what downstream sees."""

from __future__ import annotations

import logging

import asyncio
import email.policy
import re
import smtplib
import ssl
import subprocess
from email.policy import compat32
from email.utils import make_msgid
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import settings as settings_of_hypothesis
from hypothesis import strategies as st

from intake.normalizer.email import reference_from_message_ids
from intake.normalizer.reference import parse_reference
from intake.normalizer.record import json_schema
from tests.support.gateway import free_port, running
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
    swaks,
)
from tests.support.topic import of_type, read_topic, wait_for

SCHEMA = json_schema()



def crlf(message) -> bytes:
    return message.as_bytes(policy=email.policy.SMTP)


async def test_a_mail_is_published_once_and_acknowledged_once_with_threading_headers(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    mail = complaint_mail(headers={"References": "<order-1001@shop.customer.test>"})
    async with running(config) as (gateway, _):
        await smtp_send(config.email.smtp.port, mail)
        await smtp_send(config.email.smtp.port, mail)  # the customer's MTA retrying after a lost 250
        [ack] = await relay.wait_for(1)
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
        assert (await gateway.spool.status()).pending_replies == 0
    assert len(relay.messages) == 1

    [received] = of_type(records, "received")
    complaint = received.data
    jsonschema.validate(complaint, SCHEMA)
    reference = complaint["reference"]
    assert received.key == reference
    assert complaint["channel"] == "email"
    # The customer's Message-ID and a digest of the mail's content: a reused id does not make it a duplicate.
    assert re.fullmatch(re.escape(mail["Message-ID"]) + r" sha256:[0-9a-f]{64}", complaint["channel_message_id"])
    assert complaint["complainant"]["email"] == CUSTOMER
    assert complaint["origin"] == {"received_via": "smtp", "recipients": OUR_ADDRESS}
    assert complaint["raw"]["media_type"] == "message/rfc822"
    [acknowledged] = of_type(records, "acknowledged")
    assert acknowledged.key == reference and acknowledged.data["locale"] == "pl"

    message = ack.message
    assert ack.recipients == [CUSTOMER]
    assert ack.mail_from == ""  # the null sender of RFC 3834: nobody answers or bounces an acknowledgement
    assert message["From"].addresses[0].addr_spec == OUR_ADDRESS
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["In-Reply-To"] == mail["Message-ID"]
    assert message["References"].split() == ["<order-1001@shop.customer.test>", mail["Message-ID"]]
    assert reference_from_message_ids([message["Message-ID"]]) == reference
    assert message["Message-ID"].endswith("@example.test>")
    assert f"[{reference}]" in message["Subject"]
    assert message["Content-Language"] == "pl"
    assert reference in message.get_body(("plain",)).get_content()


async def test_a_reply_to_the_acknowledgement_is_a_follow_up_with_the_same_key(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    port = config.email.smtp.port
    first = complaint_mail(
        "My parcel arrived damaged and the courier refused to write a report.", subject="Damaged parcel", language="en"
    )
    async with running(config):
        await smtp_send(port, first)
        [ack] = await relay.wait_for(1)
        # The customer answers our acknowledgement: their client threads it on our Message-ID. The subject
        # carries no reference, so only the Message-ID can tie it to the complaint.
        reply = complaint_mail(
            "Here is a photo of the box. I am still waiting for the refund.",
            subject="Photo of the box",
            language="en",
            headers={
                "In-Reply-To": ack.message["Message-ID"],
                "References": f"{ack.message['References']} {ack.message['Message-ID']}",
            },
        )
        await smtp_send(port, reply)
        # A new mail from the same person that refers to nothing is a new complaint.
        unrelated = complaint_mail("Another order, 2002, never arrived at all.", subject="Missing order", language="en")
        await smtp_send(port, unrelated)
        acks = await relay.wait_for(3)
        records = await read_topic(kafka.bootstrap, topic, expect=6, settle=1)

    received = of_type(records, "received")
    [followed] = of_type(records, "followed_up")
    assert len(received) == 2
    original = next(r for r in received if r.data["channel_message_id"].split()[0] == first["Message-ID"])
    other = next(r for r in received if r.data["channel_message_id"].split()[0] == unrelated["Message-ID"])
    reference = original.key
    jsonschema.validate(followed.data, SCHEMA)
    assert followed.data["follows_up"] == reference and followed.key == reference
    assert followed.partition == original.partition and followed.offset > original.offset
    assert other.key != reference and "follows_up" not in other.data

    follow_ack = next(a for a in acks if a.message["In-Reply-To"] == reply["Message-ID"])
    assert "added" in follow_ack.message["Subject"] and f"[{reference}]" in follow_ack.message["Subject"]
    # Our Message-ID for the follow-up encodes the original reference, so replying to it threads there too.
    assert reference_from_message_ids([follow_ack.message["Message-ID"]]) == reference
    assert len(of_type(records, "acknowledged")) == 3


async def test_an_out_of_office_reply_is_recorded_flagged_and_not_answered(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    port = config.email.smtp.port
    async with running(config) as (gateway, _):
        await smtp_send(port, complaint_mail())
        [ack] = await relay.wait_for(1)
        out_of_office = complaint_mail(
            "I am out of the office until Monday and will read your message then.",
            subject=f"Automatic reply: {ack.message['Subject']}",
            sender=CUSTOMER,
            language="en",
            headers={"Auto-Submitted": "auto-replied", "In-Reply-To": ack.message["Message-ID"]},
        )
        status, transcript = await swaks(port, crlf(out_of_office), tmp_path, mail_from="<>")
        assert status == 0 and "250 2.0.0 OK" in transcript, transcript
        records = await read_topic(kafka.bootstrap, topic, expect=3, settle=2)
        assert (await gateway.spool.status()).pending_replies == 0
        assert counter(gateway, "intake_received", channel="email", outcome="automated") == 1
    assert len(relay.messages) == 1

    [followed] = of_type(records, "followed_up")
    [received] = of_type(records, "received")
    assert followed.data["flags"]["automated"] is True
    assert followed.data["flags"]["automated_reason"]
    assert followed.key == received.key
    [acknowledged] = of_type(records, "acknowledged")
    assert acknowledged.headers["ce_id"] != followed.headers["ce_id"]
    assert followed.data["id"] not in {r.data.get("complaint_id") for r in of_type(records, "acknowledged")}


async def test_acknowledgements_wait_for_the_relay_to_come_back(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    relay.stop()
    async with running(config) as (gateway, _):
        await smtp_send(config.email.smtp.port, complaint_mail())

        async def retried() -> bool:
            return counter(gateway, "intake_acknowledgements", channel="email", outcome="retried") >= 1

        await wait_for(retried, timeout=20)
        assert relay.messages == []
        relay.start()
        [ack] = await relay.wait_for(1, timeout=40)
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=1)
    [received] = of_type(records, "received")
    [acknowledged] = of_type(records, "acknowledged")
    assert acknowledged.key == received.key
    assert reference_from_message_ids([ack.message["Message-ID"]]) == received.key


def _transaction(port: int, recipients: list[str], message: bytes) -> tuple[list[int], int]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(CUSTOMER)
        codes = [client.rcpt(recipient)[0] for recipient in recipients]
        code, _ = client.data(message)
        return codes, code


async def test_only_the_configured_addresses_and_domains_are_accepted(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    recipients = [
        "someone@elsewhere.test",
        "COMPLAINTS@Example.TEST",
        "anyone@EXAMPLE.org",
        "x@sub.example.org",
        "complaints@example.test.evil",
    ]
    async with running(config) as (gateway, _):
        codes, data_code = await asyncio.to_thread(_transaction, config.email.smtp.port, recipients, crlf(complaint_mail()))
        records = await read_topic(kafka.bootstrap, topic, expect=1, settle=0.5)
    assert codes == [550, 250, 250, 550, 550]
    assert data_code == 250
    [received] = of_type(records, "received")
    assert received.data["origin"]["recipients"] == "anyone@example.org, complaints@example.test"


async def test_an_oversize_mail_gets_552_and_nothing_is_stored(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay, smtp={"max_message_bytes": 4096})
    async with running(config) as (gateway, _):
        status, transcript = await swaks(config.email.smtp.port, crlf(complaint_mail("x" * 20_000)), tmp_path)
        ehlo = await _ehlo(config.email.smtp.port)
        assert (await gateway.spool.status()).messages == 0
    assert status != 0
    assert re.search(r"<\*\* +552", transcript), transcript
    assert "SIZE 4096" in ehlo


async def _ehlo(port: int) -> str:
    def ehlo() -> str:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            return client.ehlo()[1].decode()

    return await asyncio.to_thread(ehlo)


@pytest.mark.parametrize("fault", ["spool full", "attachment store broken"])
async def test_a_fault_of_ours_answers_451_never_5xx(tmp_path: Path, kafka, topic, fault):
    # Kafka out of reach, so events stay in the spool; the relay out of reach, so no acknowledgement event either.
    overrides: dict = {"spool": {"max_pending_events": 2}}
    if fault == "attachment store broken":
        (tmp_path / "not-a-directory").write_text("a file where the attachment store should be")
        overrides = {"attachments": {"directory": str(tmp_path / "not-a-directory")}}
    relay = {"host": "127.0.0.1", "port": free_port(), "security": "none"}
    config = email_settings(tmp_path, f"127.0.0.1:{free_port()}", topic, relay, **overrides)
    mails = [
        complaint_mail(f"Complaint {n}: the parcel was damaged.", attachments=[("photo.jpg", "image/jpeg", bytes([n]) * 500)])
        for n in range(3)
    ]
    outcomes: list[int] = []
    async with running(config) as (gateway, _):
        for mail in mails:
            try:
                await smtp_send(config.email.smtp.port, mail)
                outcomes.append(250)
            except smtplib.SMTPDataError as error:
                outcomes.append(error.smtp_code)
                assert error.smtp_error.startswith(b"4.3.0"), error.smtp_error
        stored = (await gateway.spool.status()).messages
    if fault == "spool full":
        assert outcomes == [250, 250, 451] and stored == 2
    else:
        assert outcomes == [451, 451, 451] and stored == 0


async def test_an_auto_responder_loop_gets_at_most_ten_acknowledgements(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    async with running(config) as (gateway, _):
        # A responder that does not mark itself: every mail looks like a person's, from the same address.
        for n in range(15):
            mail = complaint_mail(f"Thank you for your message number {n}.", subject=f"Re: your message {n}", language="en")
            await smtp_send(config.email.smtp.port, mail)

        async def all_handled() -> bool:
            status = await gateway.spool.status()  # normalised (mail waits in the inbox while more comes in), answered
            return status.to_normalise == 0 and status.pending_replies == 0

        await wait_for(all_handled, timeout=60)
        suppressed = counter(gateway, "intake_acknowledgements", channel="email", outcome="suppressed")
        records = await read_topic(kafka.bootstrap, topic, expect=30, timeout=60, settle=1)
    assert len(relay.messages) == 10
    assert suppressed == 5
    assert len(of_type(records, "received")) == 15
    assert len(of_type(records, "acknowledged")) == 10
    failed = of_type(records, "acknowledgement_failed")
    assert len(failed) == 5 and all("suppressed" in r.data["error"] for r in failed)


async def test_attachments_beyond_the_limits_are_skipped_and_the_complaint_kept(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay, attachments={"max_count": 1, "max_bytes": 2048})
    mail = complaint_mail(
        attachments=[
            ("receipt.pdf", "application/pdf", b"%PDF-1.4 receipt " * 10),
            ("video.mp4", "video/mp4", b"\x00" * 10_000),  # too big
            ("label.png", "image/png", b"\x89PNG label " * 10),  # one too many
        ]
    )
    async with running(config):
        await smtp_send(config.email.smtp.port, mail)
        await relay.wait_for(1)
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    [attachment] = received.data["attachments"]
    assert attachment["filename"] == "receipt.pdf" and attachment["size"] == len(b"%PDF-1.4 receipt " * 10)
    assert Path(attachment["location"].removeprefix("file://")).read_bytes() == b"%PDF-1.4 receipt " * 10
    assert received.data["origin"]["attachments_skipped"] == "2"


async def test_bytes_that_are_not_mail_are_dead_lettered_not_bounced(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    async with running(config) as (gateway, _):
        await smtp_send(config.email.smtp.port, b"this is not a message, it has no header at all\r\n")
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
        assert (await gateway.spool.status()).pending_replies == 0
    [event] = dead
    assert event.headers["ce_type"] == "intake.message.dead_lettered.v1"
    assert "not an email message" in event.data["error"]
    assert event.data["spool_key"].startswith("email:sha256:")
    assert relay.messages == []


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_starttls_and_auth_are_required_when_configured(tmp_path: Path, kafka, topic, relay):
    cert, key = _certificate(tmp_path)
    smtp = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "require_starttls": True,
        "auth_required": True,
        "users": {"partner-mta": "relay-secret-0123"},
    }
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay, smtp=smtp)
    mail = complaint_mail()

    def session(port: int) -> dict[str, int]:
        codes: dict[str, int] = {}
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            codes["mail before starttls"] = client.mail(CUSTOMER)[0]
            client.starttls(context=context)
            client.ehlo()
            codes["mail before auth"] = client.mail(CUSTOMER)[0]
            try:
                client.login("partner-mta", "not-the-secret")
            except smtplib.SMTPAuthenticationError as error:
                codes["wrong secret"] = error.smtp_code
            client.login("partner-mta", "relay-secret-0123")
            client.send_message(mail, from_addr=CUSTOMER, to_addrs=[OUR_ADDRESS])
        return codes

    async with running(config):
        codes = await asyncio.to_thread(session, config.email.smtp.port)
        records = await read_topic(kafka.bootstrap, topic, expect=1, settle=0.5)
    assert codes == {"mail before starttls": 530, "mail before auth": 530, "wrong secret": 535}
    assert len(of_type(records, "received")) == 1


async def test_a_recipient_the_relay_refuses_is_recorded_as_failed_not_retried(tmp_path: Path, kafka, topic, relay):
    relay.refuse.add(CUSTOMER)
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    async with running(config) as (gateway, _):
        await smtp_send(config.email.smtp.port, complaint_mail())
        records = await read_topic(kafka.bootstrap, topic, expect=2)
        assert counter(gateway, "intake_acknowledgements", channel="email", outcome="retried") == 0
        assert (await gateway.spool.status()).pending_replies == 0
    [failed] = of_type(records, "acknowledgement_failed")
    assert "refused the recipient (550)" in failed.data["error"]
    assert failed.key == of_type(records, "received")[0].key
    assert relay.messages == []


async def test_an_acknowledgement_in_a_right_to_left_language_has_an_rtl_html_alternative(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    text = "بسته من آسیب دیده به دستم رسید و پیک حاضر نشد صورتجلسه بنویسد."
    mail = complaint_mail(text, subject="بسته آسیب دیده", language="fa")
    async with running(config):
        await smtp_send(config.email.smtp.port, mail)
        [ack] = await relay.wait_for(1)
    message = ack.message
    assert message["Content-Language"] == "fa"
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",)).get_content()
    assert 'dir="rtl"' in html and 'lang="fa"' in html
    plain = message.get_body(("plain",)).get_content()
    assert plain.strip() and "<p>" not in plain


async def test_the_acknowledgement_limit_is_per_address_and_its_window_slides(relay):
    from intake.channels.email import EmailLimitsConfig, RelayConfig
    from intake.channels.email.reply import AcknowledgementSender
    from intake.errors import Rejected
    from intake.metrics import Metrics

    now = [1000.0]
    sender = AcknowledgementSender(
        RelayConfig(**relay.config()),
        EmailLimitsConfig(acknowledgements_per_recipient=2, acknowledgement_window_seconds=600),
        Metrics(),
        clock=lambda: now[0],
    )

    def payload(to: str, n: int) -> dict:
        message_id = f"<C-0000-000{n}.000000000000@example.test>"
        return {"to": to, "subject": "s", "text": "t", "locale": "en", "direction": "ltr", "message_id": message_id}

    await sender.send_reply(payload(CUSTOMER, 1))
    await sender.send_reply(payload(CUSTOMER.upper(), 2))  # the same address, however it is spelled
    with pytest.raises(Rejected, match="suppressed"):
        await sender.send_reply(payload(CUSTOMER, 3))
    await sender.send_reply(payload("someone.else@customer.test", 4))
    now[0] += 601
    await sender.send_reply(payload(CUSTOMER, 5))
    assert [m.recipients for m in relay.messages] == [[CUSTOMER], [CUSTOMER.upper()], ["someone.else@customer.test"], [CUSTOMER]]


async def test_acknowledgements_are_capped_per_domain_and_in_all_and_never_go_to_role_addresses(relay):
    from intake.channels.email import EmailLimitsConfig, RelayConfig
    from intake.channels.email.reply import AcknowledgementSender
    from intake.errors import Rejected
    from intake.metrics import Metrics

    now = [1000.0]
    metrics = Metrics()
    sender = AcknowledgementSender(
        RelayConfig(**relay.config()),
        EmailLimitsConfig(
            acknowledgements_per_recipient=5, acknowledgements_per_domain=2, acknowledgements_total=3,
            acknowledgement_window_seconds=600,
        ),
        metrics,
        clock=lambda: now[0],
    )  # fmt: skip

    def payload(to: str, n: int) -> dict:
        message_id = f"<C-0000-000{n}.000000000000@example.test>"
        return {"to": to, "subject": "s", "text": "t", "locale": "en", "direction": "ltr", "message_id": message_id}

    def suppressed(limit: str) -> float:
        return metrics.registry.get_sample_value("intake_acknowledgements_suppressed_total", {"channel": "email", "limit": limit}) or 0.0

    await sender.send_reply(payload("a@victims.test", 1))
    await sender.send_reply(payload("b@victims.test", 2))
    with pytest.raises(Rejected, match="to this address's domain"):
        await sender.send_reply(payload("c@victims.test", 3))
    await sender.send_reply(payload("a@other.test", 4))
    with pytest.raises(Rejected, match="in all"):
        await sender.send_reply(payload("b@third.test", 5))
    with pytest.raises(Rejected, match="role or robot address"):
        await sender.send_reply(payload("no-reply@shop.test", 6))
    now[0] += 601
    await sender.send_reply(payload("c@victims.test", 7))
    assert [m.recipients for m in relay.messages] == [["a@victims.test"], ["b@victims.test"], ["a@other.test"], ["c@victims.test"]]
    assert (suppressed("domain"), suppressed("total"), suppressed("role_address")) == (1, 1, 1)


async def test_acknowledgements_share_a_relay_session_and_a_session_the_relay_closed_is_replaced(relay):
    # Connecting, STARTTLS and AUTH once per burst, not once per mail, as Postfix's client caches its sessions.
    from intake.channels.email import EmailLimitsConfig, RelayConfig
    from intake.channels.email.reply import AcknowledgementSender
    from intake.metrics import Metrics

    sender = AcknowledgementSender(RelayConfig(**relay.config()), EmailLimitsConfig(), Metrics())

    def payload(n: int) -> dict:
        return {"to": f"customer{n}@customer.test", "subject": "s", "text": "t", "locale": "en", "direction": "ltr",
                "message_id": f"<C-0000-{n:04d}.000000000000@example.test>"}  # fmt: skip

    for n in range(5):
        await sender.send_reply(payload(n))
    assert len(relay.messages) == 5 and len({m.peer for m in relay.messages}) == 1 and sender.connection.opened == 1
    relay.stop()  # the relay restarts: the idle session is gone
    relay.start()
    await sender.send_reply(payload(5))
    assert [m.recipients for m in relay.messages[-1:]] == [["customer5@customer.test"]]  # sent once, on a new session
    assert sender.connection.opened == 2
    await sender.connection.close()


async def test_a_loop_against_a_limit_is_counted_every_time_but_logged_once_per_window(relay, caplog: pytest.LogCaptureFixture):
    # An auto-responder loop meets the cap thousands of times: a warning (and an error from the replies) for each
    # would flood the log and cost the gateway more than the mail itself.
    from intake.channels.email import EmailLimitsConfig, RelayConfig
    from intake.channels.email.reply import AcknowledgementSender
    from intake.errors import Suppressed
    from intake.metrics import Metrics

    now = [1000.0]
    metrics = Metrics()
    sender = AcknowledgementSender(
        RelayConfig(**relay.config()),
        EmailLimitsConfig(acknowledgements_per_recipient=100, acknowledgements_per_domain=2, acknowledgement_window_seconds=600),
        metrics,
        clock=lambda: now[0],
    )

    def payload(n: int) -> dict:
        return {"to": f"bot{n}@loop.test", "subject": "s", "text": "t", "locale": "en", "direction": "ltr",
                "message_id": f"<C-0000-{n:04d}.000000000000@example.test>"}  # fmt: skip

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "suppressed" in r.getMessage()]

    caplog.set_level(logging.DEBUG, logger="intake")
    for n in range(2):
        await sender.send_reply(payload(n))
    for n in range(2, 52):
        with pytest.raises(Suppressed, match="to this address's domain"):
            await sender.send_reply(payload(n))
    assert metrics.registry.get_sample_value("intake_acknowledgements_suppressed_total", {"channel": "email", "limit": "domain"}) == 50
    assert len(warnings()) == 1 and "counted in intake_acknowledgements_suppressed_total" in warnings()[0]
    now[0] += 601  # a new window: delivered again up to the cap, then said once more
    for n in range(52, 54):
        await sender.send_reply(payload(n))
    with pytest.raises(Suppressed):
        await sender.send_reply(payload(54))
    assert len(warnings()) == 2 and len(relay.messages) == 4


async def test_mails_forging_strangers_addresses_get_capped_acknowledgements_to_the_bare_address(
    tmp_path: Path, kafka, topic, relay
):
    # Backscatter: twelve mails name twelve victims, each under the attacker's advertising as display name.
    config = email_settings(
        tmp_path, kafka.bootstrap, topic, relay, limits={"acknowledgements_per_domain": 3, "acknowledgements_total": 5}
    )
    victims = [f"victim{n}@{'victims' if n < 8 else 'elsewhere'}.test" for n in range(12)]
    async with running(config) as (gateway, _):
        for n, victim in enumerate(victims):
            forged = complaint_mail(f"Complaint {n}.", sender=f"Cheap pills at pills.example <{victim}>", language="en")
            await smtp_send(config.email.smtp.port, forged, mail_from=victim)

        async def all_handled() -> bool:
            status = await gateway.spool.status()  # normalised (mail waits in the inbox while more comes in), answered
            return status.to_normalise == 0 and status.pending_replies == 0

        await wait_for(all_handled, timeout=60)
        suppressed = counter(gateway, "intake_acknowledgements", channel="email", outcome="suppressed")
        records = await read_topic(kafka.bootstrap, topic, expect=24, timeout=60, settle=1)
    assert len(of_type(records, "received")) == 12
    assert len(relay.messages) == 5 and suppressed == 7
    for captured in relay.messages:
        assert captured.message["To"].addresses[0].display_name == ""
        assert "pills" not in str(captured.message["To"])
    assert len([r for r in of_type(records, "acknowledgement_failed") if "suppressed" in r.data["error"]]) == 7


async def _deliver(client: str, port: int, message: bytes, tmp_path: Path) -> tuple[int, str]:
    """The DATA answer's code and text, through smtplib or swaks."""
    if client == "smtplib":
        return await smtp_data(port, message)
    # swaks ends the data with a line break of its own before the final dot: leave the mail's last one to it.
    status, transcript = await swaks(port, message.removesuffix(b"\r\n"), tmp_path, extra=["--suppress-data"])
    answer = re.findall(r"<[-*~]+ +(\d{3}) (.*)", transcript)[-2]  # the last answer is QUIT's
    assert status == 0 or answer[0] != "250", transcript
    return int(answer[0]), answer[1]


@pytest.mark.parametrize("client", ["smtplib", "swaks"])
async def test_lines_far_longer_than_a_thousand_octets_are_taken_in_byte_for_byte(tmp_path: Path, kafka, topic, relay, client):
    # RFC 5321 §4.5.3.1.6 says 1000 octets; real mail does not: a 5xx for it would bounce the complaint.
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    lines = {length: long_line(length) for length in (28_000, 200_000)}
    mails = {
        length: raw_mail(line, message_id=make_msgid(domain="customer.test"), subject=f"Line of {length}")
        for length, line in lines.items()
    }
    async with running(config) as (gateway, _):
        answers = {length: await _deliver(client, config.email.smtp.port, mail, tmp_path) for length, mail in mails.items()}
        records = await read_topic(kafka.bootstrap, topic, expect=4)
        received = {int(r.data["subject"].split()[-1]): r for r in of_type(records, "received")}
        stored = {length: await gateway.spool.raw_message(r.data["raw"]["spool_key"]) for length, r in received.items()}
    assert {length: code for length, (code, _) in answers.items()} == {28_000: 250, 200_000: 250}, answers
    assert sorted(received) == [28_000, 200_000]
    for length, mail in mails.items():
        assert stored[length] is not None and stored[length][0] == mail
        record = received[length].data
        jsonschema.validate(record, SCHEMA)
        assert record["raw"]["size"] == len(mail)
        assert parse_reference(answers[length][1]) == record["reference"]
    assert received[28_000].data["text"] == lines[28_000]
    # The record's text has a limit of its own; the raw message in the spool keeps every byte.
    assert received[200_000].data["text"] == lines[200_000][:100_000]
    assert received[200_000].data["flags"]["truncated"] is True


async def test_a_single_line_over_the_size_limit_gets_552_like_any_oversize_mail(tmp_path: Path, kafka, topic, relay):
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay, smtp={"max_message_bytes": 4096})
    async with running(config) as (gateway, _):
        code, text = await smtp_data(config.email.smtp.port, raw_mail("x" * 20_000, message_id=make_msgid()))
        # A mail within the limit is still taken after the refusal, on a new transaction.
        ok, _ = await smtp_data(config.email.smtp.port, raw_mail(long_line(3000), message_id=make_msgid()))
        stored = (await gateway.spool.status()).messages
    assert (code, ok) == (552, 250), text
    assert stored == 1


async def test_acknowledgements_keep_long_message_ids_whole_and_their_lines_within_998_octets(
    tmp_path: Path, kafka, topic, relay
):
    # Ids of the length Outlook and Gmail write. The email package turns a word longer than a line into
    # RFC 2047 encoded-words, which RFC 2047 §5 forbids in a msg-id: mail clients would lose the thread.
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    message_id = "<AM6PR0402MB33651F2A3B4C5D6E7F8091A2B3C4D5E6F7A8B9C0@AM6PR0402MB3365.eurprd04.prod.outlook.com>"
    earlier = [
        "<CAHk-=wjLsH5rZ0P6a1x2Q3yb9oKf1M4bCq8rYvXw2uT7nD5e6g+abcdefghijklmnop@mail.gmail.com>",
        "<" + "b" * 800 + "@customer.test>",  # the longest our parser keeps is 900
    ]
    # Written by hand: the email package would encode the test's own References the same way.
    mail = raw_mail(complaint_mail().get_content(), message_id=message_id, headers=[f"References: {' '.join(earlier)}"])
    async with running(config):
        await smtp_data(config.email.smtp.port, mail)
        [ack] = await relay.wait_for(1)
    lines = ack.raw.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    header = email.message_from_bytes(ack.raw, policy=compat32)  # as on the wire: encoded-words stay encoded
    assert header["In-Reply-To"].strip() == message_id
    assert header["References"].split() == [*earlier, message_id]
    assert "=?" not in header["In-Reply-To"] + header["References"]


async def test_a_different_mail_under_a_message_id_already_seen_is_a_complaint_of_its_own(tmp_path: Path, kafka, topic, relay):
    # Mailers that reuse ids exist (a form that sends every complaint with the same one, a client's bug):
    # taking the second for a redelivery of the first would answer 250 and drop it.
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    message_id = make_msgid(domain="customer.test")
    texts = ["Paczka 1001 dotarła uszkodzona.", "Zamówienie 2002 w ogóle nie dotarło."]
    async with running(config):
        answers = [await smtp_data(config.email.smtp.port, raw_mail(text, message_id=message_id)) for text in texts]
        acks = await relay.wait_for(2)
        records = await read_topic(kafka.bootstrap, topic, expect=4, settle=2)
    assert [code for code, _ in answers] == [250, 250]
    references = [parse_reference(text) for _, text in answers]
    assert None not in references and references[0] != references[1]
    received = of_type(records, "received")
    assert sorted(r.key for r in received) == sorted(references)
    assert sorted(r.data["text"] for r in received) == sorted(texts)
    assert all(r.data["channel_message_id"].startswith(f"{message_id} sha256:") for r in received)
    # Both acknowledgements thread under the customer's mail: the Message-ID is theirs, whatever we key on.
    assert [ack.message["In-Reply-To"] for ack in acks] == [message_id, message_id]
    assert len(of_type(records, "acknowledged")) == 2


@pytest.mark.parametrize("message_id", [make_msgid(domain="customer.test"), None], ids=["with a Message-ID", "without"])
async def test_a_redelivery_through_other_relays_is_one_complaint_under_one_reference(
    tmp_path: Path, kafka, topic, relay, message_id
):
    # What relays add on the way and how they end lines does not make it another mail; a 250 lost on the way
    # back makes the sender try again, through another MX or a backup relay.
    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    text = "Paczka 1001 dotarła uszkodzona.\nKurier odmówił spisania protokołu."
    copies = [
        raw_mail(text, message_id=message_id, trace=relayed("relay-a")),
        # Another route: other trace fields, bare LF line ends, a space a relay left at a line's end.
        raw_mail(text.replace("\n", "  \n"), message_id=message_id, trace=relayed("backup-mx"), linesep=b"\n"),
        raw_mail(text, message_id=message_id),
    ]
    other = raw_mail("Zamówienie 2002 w ogóle nie dotarło.", message_id=None if message_id is None else make_msgid())
    async with running(config) as (gateway, _):
        answers = [await smtp_data(config.email.smtp.port, copy) for copy in [*copies, other]]
        await relay.wait_for(2)
        records = await read_topic(kafka.bootstrap, topic, expect=4, settle=2)
        duplicates = counter(gateway, "intake_received", channel="email", outcome="duplicate")
    assert [code for code, _ in answers] == [250] * 4
    references = [parse_reference(text) for _, text in answers]
    assert references[0] is not None and references[:3] == [references[0]] * 3
    assert references[3] != references[0]
    assert duplicates == 2
    assert sorted(r.key for r in of_type(records, "received")) == sorted({*references})
    assert len(of_type(records, "acknowledged")) == 2 and len(relay.messages) == 2


_PATH_PIECES = [
    "<", ">", "a", "b.c", "@", "x-y", " ", "  ", "\t", "SIZE=100", "BODY=8BITMIME", "(c)", "..", '"q"', "[1.2.3.4]",
    "-", ".", "é", "=", ":", ",", "a@b.c", "<a@b.c>", "<anna.kowalska@example.pl>", "@x:", "\\", "\x00",
]  # fmt: skip


@settings_of_hypothesis(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PATH_PIECES), max_size=8).map("".join) | st.text(max_size=24))
def test_a_path_is_read_as_aiosmtpd_reads_it_with_or_without_its_parser(arg: str):
    """MAIL FROM and RCPT TO paths in the common form are read without the email package's parser (9 % of an SMTP
    worker's time); whatever the argument, address and parameters come out as aiosmtpd's own reading gives them."""
    from aiosmtpd.smtp import SMTP

    from intake.channels.email.smtp import _Session

    def read(getaddr, arg: str):
        session = SMTP.__new__(_Session)
        session.local_part_limit = 64
        try:
            return getaddr(session, arg)
        except Exception as error:  # aiosmtpd's parser raises on some ("<"): so must the fast path, or not take them
            return type(error)

    assert read(_Session._getaddr, arg) == read(SMTP._getaddr, arg)


def test_the_common_paths_take_the_fast_way():
    from intake.channels.email.smtp import _PLAIN_PATH

    for arg in ["<anna.kowalska@example.pl>", "<a+tag@mail.example.co.uk> SIZE=2048 BODY=8BITMIME", "<x@y>"]:
        assert _PLAIN_PATH.fullmatch(arg), arg
    for arg in ["<>", '<"quoted"@example.com>', "<a@[192.0.2.1]>", "<@relay:a@b.c>", "<a(c)@b.c>", "<a@b.c>  SIZE=1"]:
        assert not _PLAIN_PATH.fullmatch(arg), arg
