"""Nothing silently dead: every long-running part is supervised, restarted after a crash, and shown in /readyz and /metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
from pathlib import Path

import aiohttp
import pytest

from intake.errors import TemporaryFailure
from intake.metrics import Metrics
from intake.pause import pause
from intake.supervisor import Supervisor
from intake.normalizer import webhook as webhook_normalizer
from tests.support.gateway import GatewayProcess, complaint_body, free_port, post_complaint, running, settings
from tests.support.topic import of_type, read_topic, wait_for
from tests.test_webhook import metric


class Crashing:
    """A component that crashes on its first ``crashes`` runs, then runs until stopped."""

    def __init__(self, name: str, crashes: int) -> None:
        self.name = name
        self.crashes = crashes
        self.runs = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()


async def test_a_crashed_component_is_logged_restarted_and_shown_meanwhile(caplog: pytest.LogCaptureFixture):
    metrics = Metrics()
    supervisor = Supervisor(metrics, first_delay=0.3, max_delay=0.3)
    crashing, steady = Crashing("mailbox", crashes=2), Crashing("steady", crashes=0)
    supervisor.add(crashing)
    supervisor.add(steady)
    with caplog.at_level(logging.ERROR, logger="intake.supervisor"):
        await supervisor.start()
        await wait_for(lambda: _true(crashing.runs == 1))
        await asyncio.sleep(0.05)
        restarting = supervisor.state("mailbox")
        await wait_for(lambda: _true(crashing.runs == 3 and supervisor.state("mailbox").state == "ok"), timeout=5)
        after = supervisor.state("mailbox")
        await supervisor.stop(timeout=2)
    assert restarting.state == "restarting" and restarting.detail == "RuntimeError: crash 1"
    assert not restarting.up
    assert after.restarts == 2 and supervisor.state("steady").restarts == 0
    assert steady.runs == 1  # the other component was never disturbed
    crashes = [r for r in caplog.records if getattr(r, "event", "") == "component_crashed"]
    assert [r.component for r in crashes] == ["mailbox", "mailbox"]
    assert crashes[0].exc_info is not None  # the traceback is in the log, at once
    assert metrics.registry.get_sample_value("intake_component_restarts_total", {"component": "mailbox"}) == 2
    assert supervisor.state("mailbox").state == "stopped"


async def _true(value: bool) -> bool:
    return value


class PoisonAware:
    """A reply sender that fails in a way nobody planned for on one payload (like ``int("abc")``) and sends the rest."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_reply(self, payload: dict) -> None:
        if payload["to"] == "poison":
            int(payload["to"])
        self.sent.append(payload["to"])


async def _complaint_with_reply(gateway, to: str) -> str:
    key = f"acme/{to}"
    received_at = dt.datetime.now(dt.timezone.utc)
    outcome = await gateway.reception.receive(
        channel="webhook",
        channel_message_id=webhook_normalizer.channel_message_id("acme", key),
        raw=complaint_body(),
        normalize=lambda: webhook_normalizer.to_complaint(complaint_body(), partner="acme", idempotency_key=key, received_at=received_at),
        received_at=received_at,
        ack="reply",
        reply_payload=lambda complaint, ack: {"to": to},
    )
    return outcome.reference


async def test_a_poison_reply_ends_as_failed_without_blocking_the_others_and_across_a_restart(tmp_path: Path, kafka, topic):
    config = settings(tmp_path, kafka.bootstrap, topic, acknowledgement={"max_attempts": 3, "retry_first_seconds": 0.2})
    sender = PoisonAware()
    async with running(config) as (gateway, _):
        gateway.reply_senders["webhook"] = sender
        references = [await _complaint_with_reply(gateway, to) for to in ("first", "poison", "second")]
        await wait_for(lambda: _true(sender.sent == ["first", "second"]), timeout=10)
        assert gateway.supervisor.state("replies").restarts == 0
    # A restart in the middle of the poison's retries: it is taken up again, and still cannot block anyone.
    async with running(config) as (gateway, _):
        gateway.reply_senders["webhook"] = sender
        references.append(await _complaint_with_reply(gateway, "third"))

        async def settled() -> bool:
            return (await gateway.spool.status()).pending_replies == 0

        await wait_for(settled, timeout=20)
        records = await read_topic(kafka.bootstrap, topic, expect=8)
    assert sender.sent == ["first", "second", "third"]
    [failed] = [r for r in records if r.headers["ce_type"] == "intake.complaint.acknowledgement_failed.v1"]
    assert failed.key == references[1]
    assert "ValueError" in failed.data["error"] and "3 attempts" in failed.data["error"]
    assert {r.key for r in of_type(records, "acknowledged")} == {references[0], references[2], references[3]}


async def test_a_crashed_publisher_is_restarted_and_readyz_says_so_meanwhile(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        gateway.supervisor.first_delay = 2.0
        real = gateway.publisher._publish
        crashes = 0

        async def crash_once(batch):
            nonlocal crashes
            if not crashes:
                crashes += 1
                raise RuntimeError("unforeseen")
            await real(batch)

        gateway.publisher._publish = crash_once
        status, answer = await post_complaint(http, base, complaint_body(), "crash-1")

        async def restarting() -> bool:
            async with http.get(f"{base}/readyz") as response:
                body = await response.json()
            return body["components"]["publisher"].startswith("restarting: RuntimeError")

        await wait_for(restarting, timeout=5)
        async with http.get(f"{base}/readyz") as response:
            ready = await response.json()
            ready_status = response.status
        async with http.get(f"{base}/metrics") as response:
            page = await response.text()
        records = await read_topic(kafka.bootstrap, topic, expect=2, timeout=30)
    assert status == 202
    # Still taking complaints in (the spool keeps them), and honest about not publishing.
    assert ready_status == 200 and ready["status"] == "degraded"
    assert ready["kafka"]["mode"] == "spooling"
    assert metric(page, 'intake_component_up{component="publisher"}') == 0
    assert metric(page, "intake_kafka_up") == 0
    assert [r.key for r in of_type(records, "received")] == [answer["reference"]]


async def test_the_publisher_waits_out_a_spool_that_cannot_record_and_resumes_without_a_restart(tmp_path: Path, kafka, topic):
    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (gateway, base), aiohttp.ClientSession() as http:
        real = gateway.spool.mark_published
        failures = 0

        async def disk_full(seqs):
            nonlocal failures
            if failures < 3:
                failures += 1
                raise TemporaryFailure("spool write failed: database or disk is full")
            await real(seqs)

        gateway.spool.mark_published = disk_full
        answers = [await post_complaint(http, base, complaint_body(f"n{n}"), f"full-{n}") for n in range(3)]

        async def degraded() -> bool:
            async with http.get(f"{base}/readyz") as response:
                return (await response.json())["components"]["publisher"].startswith("degraded: spool")

        await wait_for(degraded, timeout=10)
        await wait_for(lambda: _true(gateway.spool.pending_events_count == 0), timeout=30)
        async with http.get(f"{base}/readyz") as response:
            after = await response.json()
        records = await read_topic(kafka.bootstrap, topic, expect=6)
    assert gateway.supervisor.state("publisher").restarts == 0
    assert after["components"]["publisher"] == "ok"
    assert {r.key for r in of_type(records, "received")} == {a["reference"] for _, a in answers}
    # Kafka had the first batch before the spool could say so: it was not sent again meanwhile.
    assert len(of_type(records, "received")) == 3


async def test_sigterm_answers_every_keep_alive_request_while_draining(tmp_path: Path, kafka, topic):
    port = free_port()
    config = tmp_path / "intake.toml"
    config.write_text(
        f"""
log_format = "text"
drain_seconds = 1.5
[http]
port = {port}
[spool]
path = "{tmp_path / 'spool.sqlite3'}"
[kafka]
bootstrap_servers = "{kafka.bootstrap}"
topic = "{topic}"
[webhook.partners.acme]
secrets = ["s3cret-for-tests-only-0123456789"]
"""
    )
    gateway = GatewayProcess(config, port)
    gateway.start()
    await gateway.wait_healthy()
    answered: list[int] = []
    unanswered: list[str] = []
    refused = 0
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal refused
        # One keep-alive connection per client, as a partner's HTTP pool holds them.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    status, _ = await post_complaint(http, gateway.base, complaint_body(), f"drain-{n}-{i}")
                    answered.append(status)
                    if status == 503:  # a partner's retry policy: wait as asked (another replica would take it)
                        await pause(stop, 5)
                except aiohttp.ClientConnectorError:
                    refused += 1  # the listener is gone: the client knows nothing was sent, and goes elsewhere
                    await asyncio.sleep(0.05)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
                    unanswered.append(repr(error))

    clients = [asyncio.create_task(client(n)) for n in range(16)]
    await asyncio.sleep(1.0)
    gateway.process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(gateway.process.wait, 30)
    stop.set()
    await asyncio.gather(*clients)
    accepted = answered.count(202)
    assert exit_code == 0
    assert unanswered == []
    assert accepted > 0 and 503 in answered and set(answered) <= {202, 503}
    records = await read_topic(kafka.bootstrap, topic, expect=2 * accepted, timeout=30)
    # Every complaint answered 202 was published before the process ended.
    assert len(of_type(records, "received")) == accepted
