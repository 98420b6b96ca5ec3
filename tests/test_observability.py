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


async def test_responses_do_not_name_server_versions(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        servers = set()
        for path in ("/healthz", "/readyz", "/metrics", "/no-such-page"):
            async with http.get(f"{base}{path}") as response:
                servers.add(response.headers.get("Server"))
        async with http.post(f"{base}/webhook/acme", data=b"{}") as response:
            servers.add(response.headers.get("Server"))
    assert servers == {"intake"}
