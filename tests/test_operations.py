"""Operating the gateway: the CLI, configuration, metrics, logs without personal data, dead letters, replies."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from intake import logs
from intake.config import load
from intake.errors import Rejected, TemporaryFailure
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import Complaint
from tests.support.gateway import complaint_body, post_complaint, running, settings
from tests.support.topic import of_type, read_topic, wait_for


def intake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "intake.cli", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_schema_command_prints_the_shipped_schema():
    result = intake("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$id"] == "urn:intake:schema:complaint:v1"
    assert "reference" in schema["required"]


def test_check_config_names_the_bad_option(tmp_path: Path):
    config = tmp_path / "intake.toml"
    config.write_text('[kafka]\nbootstrap_servers = "b:9092"\n[webhook.partners.acme]\nsecrets = ["short"]\n[http]\nport = "eighty"\n')
    result = intake("--config", str(config), "check-config")
    assert result.returncode == 2
    assert "webhook.partners.acme.secrets" in result.stderr and "http.port" in result.stderr
    assert "short" not in result.stderr  # a secret is never echoed back


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "intake.toml"
    config.write_text('[kafka]\nbootstrap_servers = "from-file:9092"\ntopic = "from-file"\n')
    monkeypatch.setenv("INTAKE_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    loaded = load(config)
    assert loaded.kafka.bootstrap_servers == "from-env:9092"
    assert loaded.kafka.topic == "from-file"


def test_defaults_start_with_no_configuration_at_all(tmp_path: Path):
    result = intake("check-config", env={"INTAKE_CONFIG": ""})
    assert result.returncode == 0, result.stderr
    assert '"kafka": "127.0.0.1:9092"' in result.stdout


def test_logs_mask_addresses_and_phone_numbers():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("could not reach ewa.nowak@example.com on +48 601 234 567", extra={"recipient": "jan@example.org"})
    entry = json.loads(stream.getvalue())
    assert "example.com" not in entry["message"] and "601" not in entry["message"]
    assert entry["recipient"] == "[email]"
    assert "C-7K3M-9QXA" == logs.redact("C-7K3M-9QXA")  # references stay readable
    for harmless in ("2026-11-21 20:01:02,123", "listening on 127.0.0.1:8080", "pruned 1500000 messages", "uid 7:41"):
        assert logs.redact(harmless) == harmless
    for phone in ("+48 601 234 567", "(030) 1234-5678", "+1-202-555-0143", "0601234567"):
        assert logs.redact(f"call {phone} now") == "call [phone] now"
    assert "ABCdef" not in logs.redact("GET /bot123456789:ABCdefGHIjklMNOpqrSTUvwxYZ0123456789/getMe")


def test_text_logs_keep_timestamps_and_mask_personal_data():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger("test.text")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("mail from %s refused", "jan@example.org", extra={"peer": "127.0.0.1"})
    line = stream.getvalue()
    assert "[email]" in line and "jan@" not in line
    assert "peer=127.0.0.1" in line and "[phone]" not in line


async def test_a_message_the_normalizer_rejects_goes_to_the_dead_letter_topic(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base):

        def broken() -> Complaint:
            raise InvalidMessage("no text part could be decoded")

        outcome = await gateway.reception.receive(
            channel="email",
            channel_message_id="<broken@example.com>",
            raw=b"\x00\x01 not mail",
            normalize=broken,
            received_at=dt.datetime.now(dt.timezone.utc),
            ack="reply",
            dead_letter_invalid=True,
        )
        records = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
        kept = await gateway.spool.raw_message("email:<broken@example.com>")
    assert outcome.dead_lettered
    [record] = records
    assert record.headers["ce_type"] == "intake.message.dead_lettered.v1"
    assert record.data["spool_key"] == "email:<broken@example.com>"
    assert record.data["error"] == "no text part could be decoded"
    assert kept is not None and kept[0] == b"\x00\x01 not mail" and kept[2] == "dead_letter"


class FlakySender:
    """A channel whose outbound side fails a given number of times, then delivers."""

    def __init__(self, failures: int, permanent: bool = False) -> None:
        self.failures = failures
        self.permanent = permanent
        self.sent: list[dict] = []

    async def send_reply(self, payload: dict) -> None:
        if self.failures:
            self.failures -= 1
            raise (Rejected if self.permanent else TemporaryFailure)("relay said no")
        self.sent.append(payload)


async def _reply_through(gateway, sender: FlakySender, key: str) -> None:
    gateway.reply_senders["webhook"] = sender
    gateway.replies._first_retry = 0.05
    await gateway.reception.receive(
        channel="webhook",
        channel_message_id=key,
        raw=complaint_body(),
        normalize=lambda: __import__("intake.normalizer.webhook", fromlist=["x"]).to_complaint(
            complaint_body(), partner="acme", idempotency_key=key, received_at=dt.datetime.now(dt.timezone.utc)
        ),
        received_at=dt.datetime.now(dt.timezone.utc),
        ack="reply",
        reply_payload=lambda complaint, ack: {"to": "customer", "text": ack.short},
    )


async def test_a_reply_that_fails_for_now_is_retried_and_then_recorded(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base):
        sender = FlakySender(failures=2)
        await _reply_through(gateway, sender, "acme/flaky")

        async def sent() -> bool:
            return len(sender.sent) == 1 and (await gateway.spool.status()).pending_replies == 0

        await wait_for(sent)
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    [acknowledged] = of_type(records, "acknowledged")
    assert acknowledged.data["reference"] in sender.sent[0]["text"]


async def test_a_reply_refused_for_good_is_recorded_as_failed(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base):
        sender = FlakySender(failures=1, permanent=True)
        await _reply_through(gateway, sender, "acme/refused")
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    assert sender.sent == []
    [failed] = [r for r in records if r.headers["ce_type"] == "intake.complaint.acknowledgement_failed.v1"]
    assert failed.data["error"] == "relay said no"


async def test_metrics_and_spool_status_count_per_channel(tmp_path: Path, kafka, topic):
    config = settings(tmp_path, kafka.bootstrap, topic)
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        await post_complaint(http, base, complaint_body(), "metrics-1")
        await post_complaint(http, base, complaint_body(), "metrics-1")
        async with http.get(f"{base}/metrics") as response:
            page = await response.text()
    assert 'intake_received_total{channel="webhook",outcome="accepted"} 1.0' in page
    assert 'intake_received_total{channel="webhook",outcome="duplicate"} 1.0' in page
    assert "intake_spool_pending_events" in page and "intake_publish_lag_seconds" in page
    status = intake("spool", "status", env={"INTAKE_SPOOL__PATH": str(config.spool.path)})
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["messages"] == 1


def test_a_language_without_a_catalog_falls_back_to_the_configured_default():
    from intake.config import AcknowledgementConfig
    from intake.reception import Reception
    from intake.normalizer import webhook

    reception = Reception(
        None, None, topic="t", dead_letter_topic="d", source="urn:t",  # type: ignore[arg-type]
        acknowledgement=AcknowledgementConfig(default_locale="pl"),
    )
    body = complaint_body(complainant={"locale": "it"}, language="it")
    complaint = webhook.to_complaint(body, partner="acme", idempotency_key="k", received_at=dt.datetime.now(dt.timezone.utc))
    assert reception.acknowledgement_for(complaint).locale == "pl"
