"""The consumers' contract: `intake asyncapi` is a valid AsyncAPI 3.0 document, and what is published matches it."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import jsonschema
import pytest

from intake.normalizer.errors import InvalidMessage
from tests.support.gateway import complaint_body, post_complaint, running, settings
from tests.support.topic import read_topic, wait_for

SPEC = Path(__file__).parent / "browser" / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"


def asyncapi(*env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "intake.cli", "asyncapi"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "INTAKE_CONFIG": "", **dict(e.split("=", 1) for e in env)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_document_is_valid_asyncapi_3_and_names_the_configured_topics():
    if not SPEC.exists():
        pytest.fail(f"{SPEC} is missing: `make test` installs it from npm (tests/browser/package.json)")
    document = asyncapi("INTAKE_KAFKA__TOPIC=cases.in", "INTAKE_KAFKA__PARTITIONS=24")
    jsonschema.Draft7Validator(json.loads(SPEC.read_text())).validate(document)
    assert document["channels"]["complaints"]["address"] == "cases.in"
    assert document["channels"]["complaints"]["bindings"]["kafka"]["partitions"] == 24
    assert document["channels"]["deadLetters"]["address"] == "complaints.dead-letter"


def test_a_broken_document_is_caught_by_the_validation():
    """The validation above can fail: an operation without its action is refused."""
    document = asyncapi()
    del document["operations"]["publishComplaints"]["action"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(json.loads(SPEC.read_text())).validate(document)


async def test_every_published_event_matches_its_message_in_the_document(tmp_path: Path, kafka, topic):
    document = asyncapi(f"INTAKE_KAFKA__TOPIC={topic}", f"INTAKE_KAFKA__DEAD_LETTER_TOPIC={topic}.dead-letter")
    messages = {
        address: list(channel["messages"].values()) for address, channel in ((c["address"], c) for c in document["channels"].values())
    }
    from tests.test_outbound import RecordingSender, command, produce

    sender = RecordingSender()
    config = settings(tmp_path, kafka.bootstrap, topic)
    async with (
        running(config, prepare=lambda gateway: gateway.outbound_senders.update(webhook=sender)) as (gateway, base),
        aiohttp.ClientSession() as http,
    ):
        status, answer = await post_complaint(http, base, complaint_body(complainant={"customer_id": "cust-1", "locale": "en"}), "asyncapi-1")
        assert status == 202
        reference = answer["reference"]
        follow_up = complaint_body("One more thing.", follows_up=reference)
        assert (await post_complaint(http, base, follow_up, "asyncapi-2"))[0] == 202
        # Two-way: a survey delivered (its outcome), answered (feedback), and a status asked for.
        await produce(kafka.bootstrap, config.kafka.outbound_topic, [command("survey", reference, nps=False, comment=False)])
        await wait_for(lambda: _open(gateway, reference), timeout=30)
        # The partner's customer who complained answers (the partner's customer id tells them from its other customers).
        answer_body = complaint_body("4", follows_up=reference, complainant={"customer_id": "cust-1", "locale": "en"})
        assert (await post_complaint(http, base, answer_body, "asyncapi-3"))[0] == 202
        assert (await post_complaint(http, base, complaint_body("status", follows_up=reference), "asyncapi-4"))[0] == 202

        def unreadable():
            raise InvalidMessage("no text part could be decoded")

        await gateway.reception.receive(
            channel="email",
            channel_message_id="<unreadable@example.com>",
            raw=b"\x00 not mail",
            normalize=unreadable,
            received_at=dt.datetime.now(dt.timezone.utc),
            ack="reply",
            dead_letter_invalid=True,
        )
        records = await read_topic(kafka.bootstrap, topic, expect=9)
        dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
    seen_types = set()
    for address, batch in ((topic, records), (f"{topic}.dead-letter", dead)):
        for record in batch:
            [message] = [m for m in messages[address] if record.headers["ce_type"] in m["headers"]["properties"]["ce_type"]["enum"]]
            jsonschema.validate(record.headers, message["headers"])
            jsonschema.validate(record.key, message["bindings"]["kafka"]["key"])
            jsonschema.Draft202012Validator(message["payload"]["schema"], format_checker=jsonschema.FormatChecker()).validate(record.data)
            seen_types.add(record.headers["ce_type"])
    assert seen_types == {
        "intake.complaint.received.v1",
        "intake.complaint.followed_up.v1",
        "intake.complaint.acknowledged.v1",
        "intake.message.dead_lettered.v1",
        "intake.reply.delivered.v1",
        "intake.feedback.received.v1",
        "intake.status.requested.v1",
    }


async def _open(gateway, reference: str) -> bool:
    return await gateway.spool.open_survey(reference) is not None
