"""What an operator sees of every complaint: one log line, acknowledgement figures on every channel, no versions on show."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from tests.support.gateway import complaint_body, post_complaint, running, settings


async def test_every_accepted_complaint_is_logged_and_its_inline_acknowledgement_counted(
    tmp_path: Path, kafka, topic, caplog: pytest.LogCaptureFixture
):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        with caplog.at_level(logging.INFO, logger="intake.reception"):
            status, answer = await post_complaint(http, base, complaint_body(), "logged-1")
            await post_complaint(http, base, complaint_body(), "logged-1")
        async with http.get(f"{base}/metrics") as response:
            page = await response.text()
    assert status == 202
    lines = [r for r in caplog.records if getattr(r, "event", "") == "received"]
    assert [(r.channel, r.reference, r.outcome) for r in lines] == [
        ("webhook", answer["reference"], "accepted"),
        ("webhook", answer["reference"], "duplicate"),
    ]
    # Nothing the customer wrote or who they are: the body's name, address and text are in no field of the line.
    for record in lines:
        flat = json.dumps(record.__dict__, default=str)
        assert "Ewa" not in flat and "ewa@example.com" not in flat and "parcel" not in flat
    # A redelivery is not acknowledged twice, and not counted twice.
    assert 'intake_acknowledgements_total{channel="webhook",outcome="sent"} 1.0' in page
    assert 'intake_acknowledgement_latency_seconds_count{channel="webhook"} 1.0' in page
    # The spool's own limits, for the alert on it filling.
    assert "intake_spool_capacity_events 100000.0" in page and "intake_spool_capacity_bytes 5.36870912e+08" in page


async def test_responses_do_not_name_server_versions(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        servers = set()
        for path in ("/healthz", "/readyz", "/metrics", "/no-such-page"):
            async with http.get(f"{base}{path}") as response:
                servers.add(response.headers.get("Server"))
        async with http.post(f"{base}/webhook/acme", data=b"{}") as response:
            servers.add(response.headers.get("Server"))
    assert servers == {"intake"}


async def test_refusals_are_counted_on_every_http_channel(tmp_path: Path, kafka, topic):
    from tests.support.gateway import free_port

    config = settings(
        tmp_path,
        kafka.bootstrap,
        topic,
        telegram={"enabled": True, "token": "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ", "mode": "webhook", "webhook_secret": "s3cret",
                  "api_url": f"http://127.0.0.1:{free_port()}"},
    )
    async with running(config) as (_, base), aiohttp.ClientSession() as http:
        body = complaint_body()
        forged = {"Content-Type": "application/json", "Intake-Timestamp": "1", "Intake-Signature": "v2=00", "Idempotency-Key": "k"}
        async with http.post(f"{base}/webhook/acme", data=body, headers=forged) as response:
            assert response.status == 401
        async with http.post(f"{base}/telegram/webhook", data=b"{}", headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as response:
            assert response.status == 403
        async with http.get(f"{base}/metrics") as response:
            page = await response.text()
    assert 'intake_refused_total{channel="webhook",status="401"} 1.0' in page
    assert 'intake_refused_total{channel="telegram",status="403"} 1.0' in page


async def test_mail_for_an_address_that_is_not_ours_is_refused_and_counted(tmp_path: Path, kafka, topic, relay):
    import asyncio
    import smtplib

    from tests.support.mail import counter, email_settings

    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)

    def stranger() -> int:
        with smtplib.SMTP("127.0.0.1", config.email.smtp.port, timeout=10) as client:
            client.ehlo()
            client.mail("someone@example.net")
            return client.rcpt("victim@elsewhere.example")[0]

    async with running(config) as (gateway, _):
        code = await asyncio.to_thread(stranger)
        refused = counter(gateway, "intake_refused", channel="email", status="550")
    assert code == 550 and refused == 1
