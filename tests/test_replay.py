"""Replaying dead letters after a fix (``intake spool dead-letters replay``), beside a running gateway or before it starts.

A normaliser bug is the case replay exists for: the message was kept with its raw bytes and answered 2xx; once the
code is fixed, replaying it publishes the complaint it always was, under the same id and reference, and answers the
customer where the channel answers later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from intake.normalizer import webhook as webhook_normalizer
from intake.normalizer.reference import complaint_id
from tests.support.gateway import complaint_body, post_complaint, running, settings
from tests.support.mail import complaint_mail, email_settings, smtp_send
from tests.support.topic import of_type, read_topic, wait_for


def intake(config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTAKE_CONFIG": "", "INTAKE_SPOOL__PATH": str(config.spool.path)}
    return subprocess.run([sys.executable, "-m", "intake.cli", *args], capture_output=True, text=True, timeout=60, env=env)


def broken(*args, **kwargs):
    raise RuntimeError("a normaliser bug")


async def _dead_letters(gateway) -> int:
    return (await gateway.spool.status()).dead_letters


async def test_a_webhook_complaint_dead_lettered_by_a_bug_is_published_after_the_fix_once(
    tmp_path: Path, kafka, topic, monkeypatch: pytest.MonkeyPatch
):
    config = settings(tmp_path, kafka.bootstrap, topic)
    fixed = webhook_normalizer.to_complaint
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        monkeypatch.setattr(webhook_normalizer, "to_complaint", broken)
        status, answer = await post_complaint(http, base, complaint_body(), "replay-1")
        assert status == 202 and await _dead_letters(gateway) == 1
        monkeypatch.setattr(webhook_normalizer, "to_complaint", fixed)

        replayed = intake(config, "spool", "dead-letters", "replay", "webhook:acme/replay-1")
        assert replayed.returncode == 0, replayed.stderr
        assert json.loads(replayed.stdout)["queued"] == ["webhook:acme/replay-1"]

        async def published() -> bool:
            return await _dead_letters(gateway) == 0 and (await gateway.spool.status()).pending_events == 0

        await wait_for(published, timeout=20)
        again = intake(config, "spool", "dead-letters", "replay", "webhook:acme/replay-1")
        listed = json.loads(intake(config, "spool", "dead-letters", "list").stdout)
        records = await read_topic(kafka.bootstrap, topic, expect=1, settle=1.5)
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1, settle=0.5)
        # What the partner is told of a redelivery now is the complaint, not the dead letter.
        status, redelivered = await post_complaint(http, base, complaint_body(), "replay-1")
    [received] = of_type(records, "received")
    assert received.data["id"] == str(complaint_id("webhook", "acme/replay-1")) == received.headers["ce_id"]
    assert received.data["reference"] == answer["reference"] == dead[0].data["reference"]
    assert received.data["text"] == "My parcel arrived broken."
    assert len(dead) == 1, "the replay publishes no second dead letter"
    assert listed == []
    assert again.returncode == 1 and json.loads(again.stdout)["not_dead_letters_or_queued_already"] == ["webhook:acme/replay-1"]
    assert status == 202 and redelivered["reference"] == answer["reference"]


async def test_a_mail_dead_lettered_by_a_bug_is_published_and_acknowledged_after_the_fix(
    tmp_path: Path, kafka, topic, relay, monkeypatch: pytest.MonkeyPatch
):
    from intake.normalizer import email as mail_normalizer

    config = email_settings(tmp_path, kafka.bootstrap, topic, relay)
    fixed = mail_normalizer.to_complaint
    mail = complaint_mail()
    async with running(config) as (gateway, _):
        monkeypatch.setattr(mail_normalizer, "to_complaint", broken)
        await smtp_send(config.email.smtp.port, mail)

        async def dead_lettered() -> bool:
            return await _dead_letters(gateway) == 1

        await wait_for(dead_lettered)
        assert relay.messages == [], "a dead letter is not acknowledged: we do not know what it says"
        [letter] = json.loads(intake(config, "spool", "dead-letters", "list").stdout)
        monkeypatch.setattr(mail_normalizer, "to_complaint", fixed)

        assert intake(config, "spool", "dead-letters", "replay", "--all", "--channel", "email").returncode == 0
        [ack] = await relay.wait_for(1)
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=1.5)
    [received] = of_type(records, "received")
    assert received.data["reference"] == letter["reference"]
    assert received.data["raw"]["spool_key"] == letter["key"]
    assert ack.message["In-Reply-To"] == mail["Message-ID"] and letter["reference"] in ack.message["Subject"]
    assert len(of_type(records, "acknowledged")) == 1


async def test_a_dead_letter_that_still_fails_stays_one_with_the_newest_reason(
    tmp_path: Path, kafka, topic, monkeypatch: pytest.MonkeyPatch
):
    config = settings(tmp_path, kafka.bootstrap, topic)
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        monkeypatch.setattr(webhook_normalizer, "to_complaint", broken)
        await post_complaint(http, base, complaint_body(), "replay-2")

        def still_broken(*args, **kwargs):
            raise KeyError("another bug")

        monkeypatch.setattr(webhook_normalizer, "to_complaint", still_broken)
        assert intake(config, "spool", "dead-letters", "replay", "--all").returncode == 0

        async def retried() -> bool:
            [letter] = json.loads(intake(config, "spool", "dead-letters", "list").stdout)
            return "KeyError" in letter["error"]

        await wait_for(retried, timeout=20)
        status = await gateway.spool.status()
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1, settle=1.5)
    assert status.dead_letters == 1 and status.to_normalise == 0
    assert len(dead) == 1 and "RuntimeError" in dead[0].data["error"]


async def test_dead_letters_queued_while_the_gateway_is_down_are_replayed_when_it_starts(
    tmp_path: Path, kafka, topic, monkeypatch: pytest.MonkeyPatch
):
    config = settings(tmp_path, kafka.bootstrap, topic)
    fixed = webhook_normalizer.to_complaint
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        monkeypatch.setattr(webhook_normalizer, "to_complaint", broken)
        for key in ("replay-3", "replay-4"):
            await post_complaint(http, base, complaint_body(), key)
    monkeypatch.setattr(webhook_normalizer, "to_complaint", fixed)
    queued = json.loads(intake(config, "spool", "dead-letters", "replay", "--all").stdout)["queued"]
    assert queued == ["webhook:acme/replay-3", "webhook:acme/replay-4"]
    assert json.loads(intake(config, "spool", "dead-letters", "replay", "--all").stdout)["queued"] == [], "queued once"
    async with running(config) as (gateway, _):

        async def replayed() -> bool:
            status = await gateway.spool.status()
            return status.dead_letters == 0 and status.pending_events == 0 and status.to_normalise == 0

        await wait_for(replayed, timeout=20)
    records = await read_topic(kafka.bootstrap, topic, expect=2, settle=1.0)
    assert sorted(r.data["channel_message_id"] for r in of_type(records, "received")) == ["acme/replay-3", "acme/replay-4"]
