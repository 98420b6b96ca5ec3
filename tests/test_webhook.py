"""The partner webhook end to end, against the real Kafka broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import jsonschema
import pytest

from intake.channels.webhook import signature
from intake.normalizer.record import json_schema
from tests.support.gateway import PARTNER, SECRET, GatewayProcess, complaint_body, post_complaint, running, settings, signed_headers
from tests.support.raw_http import post_in_two_segments
from tests.support.topic import of_type, read_topic, wait_for

SCHEMA = json_schema()
CE_HEADERS = {"ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_dataschema", "ce_subject", "content-type"}


def assert_no_duplicate_ce_id(records) -> None:
    counts = Counter(r.headers["ce_id"] for r in records)
    assert [ce for ce, n in counts.items() if n > 1] == []


async def test_a_complaint_is_on_the_topic_once_as_a_cloudevent(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        status, answer = await post_complaint(http, base, complaint_body(), "order-1001")
        assert status == 202
        assert answer["acknowledgement"]["locale"] == "pl"
        assert answer["reference"] in answer["acknowledgement"]["short"]
        records = await read_topic(kafka.bootstrap, topic, expect=2)

    received = of_type(records, "received")
    assert len(received) == 1
    record = received[0]
    assert record.key == answer["reference"]
    assert CE_HEADERS <= set(record.headers)
    assert record.headers["ce_specversion"] == "1.0"
    assert record.headers["ce_id"] == answer["id"]
    assert record.headers["ce_source"] == "urn:intake/webhook"
    assert record.headers["content-type"] == "application/json"
    jsonschema.validate(record.data, SCHEMA)
    assert record.data["reference"] == answer["reference"]
    assert record.data["complainant"]["phone"] == "+48601234567"
    acknowledged = of_type(records, "acknowledged")
    assert len(acknowledged) == 1 and acknowledged[0].key == answer["reference"]
    assert_no_duplicate_ce_id(records)


async def test_the_same_idempotency_key_twice_is_one_complaint(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        first = await post_complaint(http, base, complaint_body(), "retry-me")
        second = await post_complaint(http, base, complaint_body(), "retry-me")
        reused = await post_complaint(http, base, complaint_body("Another complaint"), "retry-me")
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)

    assert first[0] == second[0] == 202
    assert first[1]["reference"] == second[1]["reference"]
    assert second[1]["duplicate"] is True
    assert reused[0] == 422 and reused[1]["type"] == "/problems/idempotency-key-reused"
    assert len(of_type(records, "received")) == 1
    assert_no_duplicate_ce_id(records)


async def test_a_follow_up_is_keyed_by_the_complaint_it_follows(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        _, first = await post_complaint(http, base, complaint_body(), "case-1")
        status, follow = await post_complaint(http, base, complaint_body("Still no refund.", follows_up=first["reference"]), "case-1-b")
        records = await read_topic(kafka.bootstrap, topic, expect=4)
    assert status == 202 and follow["reference"] == first["reference"]
    [followed] = of_type(records, "followed_up")
    [received] = of_type(records, "received")
    assert followed.key == received.key == first["reference"]
    assert followed.partition == received.partition and followed.offset > received.offset
    jsonschema.validate(followed.data, SCHEMA)


@pytest.mark.parametrize(
    "case, status",
    [("bad signature", 401), ("stale timestamp", 401), ("unknown partner", 401), ("not json", 400),
     ("invalid fields", 422), ("no idempotency key", 400), ("too large", 413)],
)
async def test_bad_requests_are_refused_and_nothing_is_published(tmp_path: Path, kafka, topic, case, status):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        body, partner, headers = complaint_body(), "acme", None
        if case == "bad signature":
            headers = signed_headers(body, "k", secret="not-the-partners-secret-000")
        elif case == "stale timestamp":
            headers = signed_headers(body, "k", timestamp=int(time.time()) - 3600)
        elif case == "unknown partner":
            partner = "mallory"
        elif case == "not json":
            body = b"{not json"
        elif case == "invalid fields":
            body = json.dumps({"text": "", "complainant": {"email": "nope"}}).encode()
        elif case == "too large":
            body = complaint_body("x" * 300_000)
        headers = headers or signed_headers(body, "k")
        if case == "no idempotency key":
            del headers["Idempotency-Key"]
        async with http.post(f"{base}/webhook/{partner}", data=body, headers=headers) as response:
            assert response.status == status
            assert response.content_type == "application/problem+json"
            problem = await response.json(content_type=None)
        assert problem["status"] == status
        if case == "invalid fields":
            assert {"text", "complainant.email"} <= {e["field"] for e in problem["errors"]}
        spool = await gateway.spool.status()
        assert spool.messages == 0
    assert await read_topic(kafka.bootstrap, topic, expect=1, timeout=2) == []


def hmac_hex(secret: str, message: bytes) -> str:
    """What a partner computes, written out here so that the tests pin the wire format, not just our helper."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def migrating_headers(body: bytes, key: str, *, stamp: str | None = None) -> dict[str, str]:
    """A partner moving from v1 to v2 sends both signatures, comma-separated."""
    stamp = stamp or str(int(time.time()))
    v1 = hmac_hex(SECRET, f"{stamp}.".encode() + body)
    v2 = hmac_hex(SECRET, f"{stamp}.{key}.".encode() + body)
    return {
        "Content-Type": "application/json",
        "Intake-Timestamp": stamp,
        "Intake-Signature": f"v1={v1}, v2={v2}",
        "Idempotency-Key": key,
    }


def test_the_signature_helper_signs_v2_over_timestamp_idempotency_key_and_body():
    body = complaint_body()
    assert signature(SECRET, "1700000000", body, idempotency_key="order-7") == "v2=" + hmac_hex(SECRET, b"1700000000.order-7." + body)
    assert signature(SECRET, "1700000000", body) == "v1=" + hmac_hex(SECRET, b"1700000000." + body)


async def test_a_captured_request_replayed_with_a_new_idempotency_key_is_refused(tmp_path: Path, kafka, topic):
    body = complaint_body()
    captured = migrating_headers(body, "order-2001")
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        async with http.post(f"{base}/webhook/acme", data=body, headers=captured) as response:
            assert response.status == 202
        # Within the replay window, the same timestamp, body and signatures: only the key is new.
        async with http.post(f"{base}/webhook/acme", data=body, headers={**captured, "Idempotency-Key": "order-2001-again"}) as response:
            assert response.status == 401
            assert (await response.json(content_type=None))["type"] == "/problems/unauthenticated"
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
        assert (await gateway.spool.status()).messages == 1
    assert len(of_type(records, "received")) == 1


async def test_a_v1_signature_is_refused_unless_the_partner_is_still_migrating(tmp_path: Path, kafka, topic):
    body = complaint_body()
    stamp = str(int(time.time()))
    v1_only = {**migrating_headers(body, "order-v1", stamp=stamp), "Intake-Signature": "v1=" + hmac_hex(SECRET, f"{stamp}.".encode() + body)}
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        async with http.post(f"{base}/webhook/acme", data=body, headers=v1_only) as response:
            assert response.status == 401
            assert "v2" in (await response.json(content_type=None))["detail"]
        assert (await gateway.spool.status()).messages == 0

    (tmp_path / "migrating").mkdir()
    migrating = settings(tmp_path / "migrating", kafka.bootstrap, topic, webhook={"partners": {"acme": {"secrets": [SECRET], "accept_v1": True}}})
    async with running(migrating) as (gateway, base), aiohttp.ClientSession() as http:
        async with http.post(f"{base}/webhook/acme", data=body, headers=v1_only) as response:
            assert response.status == 202
        # v2 works for a migrating partner too.
        status, _ = await post_complaint(http, base, complaint_body("Signed v2."), "order-v2")
        assert status == 202
        records = await read_topic(kafka.bootstrap, topic, expect=4)
    assert sorted(r.data["text"] for r in of_type(records, "received")) == ["My parcel arrived broken.", "Signed v2."]


async def test_a_signature_header_that_is_not_ascii_is_refused_401(tmp_path: Path, kafka, topic):
    body = complaint_body()
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        for offered in ("v1=\u00e9" + "0" * 63, "v2=\u0660" * 3):
            headers = {**signed_headers(body, "non-ascii"), "Intake-Signature": offered}
            async with http.post(f"{base}/webhook/acme", data=body, headers=headers) as response:
                assert response.status == 401, offered
        assert (await gateway.spool.status()).messages == 0


def _arabic_indic(number: int) -> str:
    return "".join(chr(0x0660 + int(digit)) for digit in str(number))


@pytest.mark.parametrize(
    "stamp",
    [
        pytest.param(lambda: "179617315\u00b2", id="superscript two"),
        pytest.param(lambda: "9" * 400, id="400 digits"),
        pytest.param(lambda: "9" * 5000, id="5000 nines"),
        pytest.param(lambda: _arabic_indic(int(time.time())), id="the current time in Arabic-Indic digits"),
        pytest.param(lambda: "1_" + str(int(time.time()))[1:], id="digits with an underscore"),
        pytest.param(lambda: "", id="empty"),
    ],
)
async def test_a_timestamp_that_is_not_ascii_unix_seconds_is_refused_401_even_when_signed(tmp_path: Path, kafka, topic, stamp):
    body = complaint_body()
    timestamp = stamp()
    headers = {**signed_headers(body, "odd-stamp"), "Intake-Timestamp": timestamp}
    headers["Intake-Signature"] = signature(SECRET, timestamp, body, idempotency_key="odd-stamp")
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        async with http.post(f"{base}/webhook/acme", data=body, headers=headers) as response:
            assert response.status == 401
            assert response.content_type == "application/problem+json"
        assert (await gateway.spool.status()).messages == 0


async def test_complaints_taken_while_kafka_is_down_are_published_once_it_returns(tmp_path: Path, kafka, topic):
    broker = kafka.require_control()
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        await post_complaint(http, base, complaint_body("before the outage"), "before")
        await wait_for(lambda: _published(gateway, 2))
        broker.stop()
        try:
            answers = [await post_complaint(http, base, complaint_body(f"during the outage {n}"), f"during-{n}") for n in range(20)]
            assert all(status == 202 for status, _ in answers)
            follow_up = await post_complaint(
                http, base, complaint_body("and another thing", follows_up=answers[3][1]["reference"]), "during-3-b"
            )
            assert follow_up[0] == 202

            async def reported_down() -> bool:
                async with http.get(f"{base}/readyz") as response:
                    body = await response.json()
                    return (
                        response.status == 200
                        and body["accepting"]
                        and body["kafka"]["available"] is False
                        and body["components"]["publisher"].startswith("degraded: kafka unavailable")
                    )

            await wait_for(reported_down, timeout=30)

            # Sends Kafka leaves unanswered are failed attempts, and the metric an alert reads says so
            # (counted once a send has stalled, which may be after readiness already says degraded).
            async def failures_counted() -> bool:
                async with http.get(f"{base}/metrics") as response:
                    page = await response.text()
                return metric(page, "intake_publish_failures_total") >= 1 and metric(page, "intake_kafka_up") == 0

            await wait_for(failures_counted, timeout=30)
        finally:
            broker.start()
        records = await read_topic(kafka.bootstrap, topic, expect=44, timeout=90)

    received = of_type(records, "received")
    assert {r.key for r in received} == {a["reference"] for _, a in answers} | {received[0].key}
    assert len(received) == 21
    assert_no_duplicate_ce_id(records)
    # The backlog drains in order per key: the follow-up comes after the complaint it follows.
    [followed] = of_type(records, "followed_up")
    [original] = [r for r in received if r.key == answers[3][1]["reference"]]
    assert followed.partition == original.partition and followed.offset > original.offset
    for record in received:
        jsonschema.validate(record.data, SCHEMA)


def metric(page: str, name: str) -> float:
    """One sample's value from a Prometheus text page."""
    [line] = [line for line in page.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


async def _published(gateway, count: int) -> bool:
    return gateway.spool.pending_events_count == 0 and sum(
        s.value for m in gateway.metrics.published.collect() for s in m.samples if s.name.endswith("_total")
    ) >= count


async def test_a_full_spool_answers_503_and_recovers_when_it_drains(tmp_path: Path, kafka, topic):
    broker = kafka.require_control()
    config = settings(tmp_path, kafka.bootstrap, topic, spool={"max_pending_events": 6})
    async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
        await post_complaint(http, base, complaint_body(), "warm-up")
        await wait_for(lambda: _published(gateway, 2))
        broker.stop()
        try:
            statuses = [(await post_complaint(http, base, complaint_body(f"n{n}"), f"n-{n}"))[0] for n in range(3)]
            full_status, full_body = await post_complaint(http, base, complaint_body("one too many"), "too-many")
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["spool"]["full"] is True
        finally:
            broker.start()
        await wait_for(lambda: _published(gateway, 8), timeout=90)
        after_status, _ = await post_complaint(http, base, complaint_body("one too many"), "too-many")
    assert statuses == [202, 202, 202]
    assert full_status == 503 and full_body["type"] == "/problems/try-again-later"
    assert after_status == 202


async def test_a_complaint_answered_202_survives_kill_9_and_is_published_once(tmp_path: Path, kafka, topic):
    from tests.support.gateway import free_port

    port = free_port()
    config = tmp_path / "intake.toml"
    config.write_text(
        f"""
log_format = "text"
[http]
port = {port}
[spool]
path = "{tmp_path / 'spool.sqlite3'}"
[kafka]
topic = "{topic}"
[webhook.partners.acme]
secrets = ["s3cret-for-tests-only-0123456789"]
"""
    )
    gateway = GatewayProcess(config, port)
    # First life: Kafka unreachable, so the complaint can only be in the spool when the process dies.
    dead_port = free_port()
    gateway.start(env={"INTAKE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead_port}"})
    await gateway.wait_healthy()
    async with aiohttp.ClientSession() as http:
        status, answer = await post_complaint(http, gateway.base, complaint_body(), "kill-9")
    gateway.kill()
    assert status == 202
    assert await read_topic(kafka.bootstrap, topic, expect=1, timeout=2) == []

    gateway.start(env={"INTAKE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap})
    try:
        await gateway.wait_healthy()
        records = await read_topic(kafka.bootstrap, topic, expect=2, timeout=60, settle=2)
    finally:
        assert gateway.terminate() == 0, gateway.log.read_text()[-2000:]
    [received] = of_type(records, "received")
    assert received.key == answer["reference"]
    assert_no_duplicate_ce_id(records)


async def test_a_body_that_arrives_in_two_segments_is_read_whole(tmp_path: Path, kafka, topic):
    # A signature over the first segment alone would not match: the whole body has to be read before checking it.
    body = complaint_body("Sent over a slow link, " + "in pieces. " * 200 + "The end.")
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (_gateway, base):
        status, answer = await post_in_two_segments(f"{base}/webhook/acme", signed_headers(body, "split-1"), body)
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    assert status == 202, answer
    [received] = of_type(records, "received")
    assert received.data["reference"] == json.loads(answer)["reference"]
    assert received.data["text"].endswith("in pieces. The end.")


def test_the_language_of_a_complaint_is_read_from_its_text_not_copied_from_the_locale():
    import datetime as dt

    from intake.normalizer import webhook as webhook_normalizer

    def language(body: bytes) -> str | None:
        complaint = webhook_normalizer.to_complaint(body, partner="acme", idempotency_key="k", received_at=dt.datetime.now(dt.timezone.utc))
        return complaint.language

    german = "Mein Paket kam beschädigt an, und der Kundendienst hat meine E-Mails seit zwei Wochen nicht beantwortet."
    # A Polish customer (locale pl, answered in Polish) writing in German: the complaint is in German.
    assert language(complaint_body(german)) == "de"
    assert json.loads(complaint_body(german))["complainant"]["locale"] == "pl"
    # Too short to tell: unknown, not the locale.
    assert language(complaint_body("ok")) is None
    # A partner that says what language it is, is believed.
    assert language(complaint_body(german, language="fr")) == "fr"


def test_the_language_model_is_loaded_before_the_first_partner_complaint(tmp_path: Path):
    # Loading it takes about a second, during which the first complaint would hold the event loop and every request
    # on the worker with it. A fresh process: in this one another test has loaded it already.
    program = f"""
import asyncio, sys
from intake.gateway import Gateway
from intake.normalizer import language
from tests.support.gateway import settings

async def main():
    gateway = Gateway(settings(__import__("pathlib").Path({str(tmp_path)!r}), "127.0.0.1:9", "unused"))
    assert not language._loaded
    await gateway.start()
    try:
        print("loaded" if language._loaded else "not loaded")
    finally:
        await gateway.stop()

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "loaded"


def _compressed(body: bytes, coding: str) -> bytes:
    import gzip

    import brotli
    from backports import zstd

    return {"gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress}[coding](body)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_a_body_in_any_content_coding_a_client_sends_is_taken_in(tmp_path: Path, kafka, topic, coding: str):
    """gzip, Brotli and Zstandard, as HTTP clients and partners' proxies send them: signed over the JSON itself, read
    after aiohttp has undone the coding. Without the Brotli and zstd modules aiohttp refused br and zstd with a 400, and
    the partner retried the same refused complaint for as long as it retries."""
    body = complaint_body(f"My parcel arrived broken, sent with {coding}.")
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        headers = {**signed_headers(body, f"coded-{coding}"), "Content-Encoding": coding}
        async with http.post(f"{base}/webhook/{PARTNER}", data=_compressed(body, coding), headers=headers) as response:
            assert response.status == 202, await response.text()
            reference = (await response.json())["reference"]
        # Undecodable bytes in that coding are the sender's to fix: 400, nothing stored.
        broken = {**signed_headers(body, f"broken-{coding}"), "Content-Encoding": coding}
        async with http.post(f"{base}/webhook/{PARTNER}", data=b"\x00not " + coding.encode() + b" at all" * 20, headers=broken) as response:
            assert response.status == 400
        # A small body that decodes to more than the limit is refused as the limit says, never held whole.
        bomb = json.dumps({"text": "x" * (2 * 1024 * 1024)}).encode()
        large = {**signed_headers(bomb, f"bomb-{coding}"), "Content-Encoding": coding}
        async with http.post(f"{base}/webhook/{PARTNER}", data=_compressed(bomb, coding), headers=large) as response:
            assert response.status == 413
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    [received] = of_type(records, "received")
    assert received.key == reference and received.data["text"] == f"My parcel arrived broken, sent with {coding}."
