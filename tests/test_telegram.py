"""The Telegram bot channel end to end: PTB against a local Bot API stand-in, the real Kafka broker behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from intake.channels.telegram import SECRET_HEADER, help_text
from intake.normalizer import telegram as normalize
from intake.normalizer.errors import InvalidMessage
from intake.normalizer.record import json_schema
from intake.normalizer.reference import reference_for
from tests.support.gateway import GatewayProcess, free_port, running, settings
from tests.support.raw_http import post_in_two_segments
from tests.support.telegram_api import BOT_ID, TOKEN, TelegramApi, bot_user, message, photo_sizes, user
from tests.support.topic import Record, of_type, read_topic, wait_for

# RetryAfter's own constructor reads its deprecated int-valued retry_after (PTB 22.2+); nothing of ours to change.
pytestmark = pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:telegram.warnings.PTBDeprecationWarning")

SCHEMA = json_schema()
SECRET = "tg-webhook-secret_0123456789"
LRI, PDI = "\u2066", "\u2069"


def telegram_settings(tmp_path: Path, kafka: Any, topic: str, api: TelegramApi, *, http: dict[str, Any] | None = None, **options: Any) -> Any:
    telegram = {
        "enabled": True,
        "token": TOKEN,
        "api_url": api.url,
        "webhook_secret": SECRET,
        "poll_timeout_seconds": 2,
        "retry_initial_seconds": 0.2,
        "request_timeout_seconds": 5,
        **options,
    }
    return settings(tmp_path, kafka.bootstrap, topic, telegram=telegram, attachments={"directory": str(tmp_path / "attachments")}, http=http or {})


async def post_update(http: aiohttp.ClientSession, base: str, update: dict[str, Any], *, secret: str | None = SECRET) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    async with http.post(f"{base}/telegram/webhook", data=json.dumps(update, ensure_ascii=False).encode(), headers=headers) as response:
        return response.status


def assert_no_duplicate_ce_id(records: list[Record]) -> None:
    counts = Counter(r.headers["ce_id"] for r in records)
    assert [ce for ce, n in counts.items() if n > 1] == []


def ref(chat_id: int, message_id: int) -> str:
    return reference_for("telegram", f"{chat_id}:{message_id}")


# --- webhook mode ---------------------------------------------------------------------------


async def test_webhook_update_with_the_right_secret_is_on_the_topic_once(tmp_path: Path, kafka, topic):
    customer = user(5550001, language_code="pl")
    update = {"update_id": 800_100, "message": message(customer, 41, text="Paczka przyszła rozbita.")}
    api = TelegramApi()
    async with api, aiohttp.ClientSession() as http:
        public = {"public_base_url": "https://complaints.example.com"}
        config = telegram_settings(tmp_path, kafka, topic, api, mode="webhook", set_webhook=True, http=public)
        async with running(config) as (gateway, base):
            # setWebhook at start: our public URL, the secret Telegram is to send back, only the updates we read.
            await wait_for(lambda: _true(api.webhook is not None))
            assert api.webhook == {
                "url": "https://complaints.example.com/telegram/webhook",
                "secret_token": SECRET,
                "allowed_updates": ["message", "edited_message", "callback_query"],
            }
            assert await post_update(http, base, update) == 200
            assert await gateway.spool.has_message(f"telegram:{customer['id']}:41")  # 200 only after the spool write
            records = await read_topic(kafka.bootstrap, topic, expect=2)

    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    reference = ref(customer["id"], 41)
    assert received.key == reference == received.data["reference"]
    assert received.headers["ce_source"] == "urn:intake/telegram"
    data = received.data
    assert data["channel"] == "telegram" and data["channel_message_id"] == f"{customer['id']}:41"
    assert data["text"] == "Paczka przyszła rozbita."
    assert data["complainant"] == {"name": "Ewa Nowak", "handle": str(customer["id"]), "preferred_contact": "telegram", "locale": "pl"}
    assert data["origin"] == {"bot": str(BOT_ID), "chat_type": "private"}
    assert "ewa_n" not in received.value.decode()  # the username is personal data the record does without
    assert len(of_type(records, "acknowledged")) == 1
    assert_no_duplicate_ce_id(records)


async def _true(value: bool) -> bool:
    return value


async def test_a_wrong_secret_is_refused_403_and_nothing_published(tmp_path: Path, kafka, topic):
    customer = user(5550002)
    update = {"update_id": 800_200, "message": message(customer, 7, text="Complaint")}
    async with TelegramApi() as api, running(telegram_settings(tmp_path, kafka, topic, api, mode="webhook")) as (gateway, base):
        async with aiohttp.ClientSession() as http:
            assert await post_update(http, base, update, secret="not-the-secret") == 403
            assert await post_update(http, base, update, secret=SECRET[:-1]) == 403
            assert await post_update(http, base, update, secret=None) == 403
        assert (await gateway.spool.status()).messages == 0
    assert await read_topic(kafka.bootstrap, topic, expect=1, timeout=2) == []
    assert api.sent == []


async def test_the_same_update_delivered_twice_is_recorded_once(tmp_path: Path, kafka, topic):
    customer = user(5550003, language_code="en")
    first = {"update_id": 800_300, "message": message(customer, 12, text="The meter reading is wrong.")}
    # The same message under another update_id: what a switch between webhook and polling can deliver.
    again = {**first, "update_id": 800_301}
    async with TelegramApi() as api, running(telegram_settings(tmp_path, kafka, topic, api, mode="webhook")) as (_gateway, base):
        async with aiohttp.ClientSession() as http:
            statuses = [await post_update(http, base, body) for body in (first, first, again)]
        records = await read_topic(kafka.bootstrap, topic, expect=2, settle=2)
    assert statuses == [200, 200, 200]
    assert len(of_type(records, "received")) == 1
    assert len(of_type(records, "acknowledged")) == 1
    assert len(api.sent) == 1  # one acknowledgement for one complaint
    assert_no_duplicate_ce_id(records)


async def test_a_webhook_update_that_arrives_in_two_segments_is_read_whole(tmp_path: Path, kafka, topic):
    customer = user(5550009, language_code="en")
    update = {"update_id": 800_900, "message": message(customer, 3, text="The router I bought stopped working. " * 40)}
    body = json.dumps(update).encode()
    headers = {"Content-Type": "application/json", SECRET_HEADER: SECRET}
    async with TelegramApi() as api, running(telegram_settings(tmp_path, kafka, topic, api, mode="webhook")) as (gateway, base):
        status, _ = await post_in_two_segments(f"{base}/telegram/webhook", headers, body)
        assert status == 200
        assert await gateway.spool.has_message(f"telegram:{customer['id']}:3")
        records = await read_topic(kafka.bootstrap, topic, expect=2)
    [received] = of_type(records, "received")
    assert received.data["text"] == update["message"]["text"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"update_id": ' + b"9" * 5000 + b"}", id="5000-digit update_id"),
        pytest.param(b'{"update_id": ' + b"9" * 400 + b', "message": {}}', id="400-digit update_id"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested too deep"),
        pytest.param(b'{"update_id": true, "message": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}, "text": "x"}}', id="true"),
        pytest.param(b'{"update_id": -1}', id="negative"),
        pytest.param(b'{"update_id": 1e3}', id="a float"),
        pytest.param(b'{"update_id": "800000"}', id="a string"),
        pytest.param(b'\xff\xfe{"update_id": 1}', id="not UTF-8"),
    ],
)
async def test_a_webhook_body_without_a_plain_update_id_is_refused_400(tmp_path: Path, kafka, topic, body: bytes):
    headers = {"Content-Type": "application/json", SECRET_HEADER: SECRET}
    async with TelegramApi() as api, running(telegram_settings(tmp_path, kafka, topic, api, mode="webhook")) as (gateway, base):
        async with aiohttp.ClientSession() as http, http.post(f"{base}/telegram/webhook", data=body, headers=headers) as response:
            assert response.status == 400
            assert response.content_type == "application/problem+json"
        assert (await gateway.spool.status()).messages == 0


async def test_webhook_answers_503_when_the_update_cannot_be_stored(tmp_path: Path, kafka, topic):
    # Kafka out of reach and room for one event: the second update finds the spool full.
    unreachable = f"127.0.0.1:{free_port()}"
    async with TelegramApi() as api:
        config = telegram_settings(tmp_path, kafka, topic, api, mode="webhook")
        config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"bootstrap_servers": unreachable}),
                                           "spool": config.spool.model_copy(update={"max_pending_events": 1})})
        async with running(config) as (gateway, base), aiohttp.ClientSession() as http:
            first = await post_update(http, base, {"update_id": 800_400, "message": message(user(5550004), 1, text="one")})
            async with http.post(
                f"{base}/telegram/webhook",
                data=json.dumps({"update_id": 800_401, "message": message(user(5550005), 1, text="two")}),
                headers={SECRET_HEADER: SECRET, "Content-Type": "application/json"},
            ) as response:
                second, retry_after = response.status, response.headers.get("Retry-After")
            assert (await gateway.spool.status()).messages == 1
    assert first == 200
    assert second == 503 and retry_after  # Telegram delivers it again later


# --- long polling -----------------------------------------------------------------------------


async def test_polling_takes_in_enqueued_updates_and_stops_promptly(tmp_path: Path, kafka, topic):
    customers = [user(5560000 + n, language_code="de") for n in range(3)]
    async with TelegramApi() as api:
        # Telegram is briefly unreachable at first: the loop backs off and carries on.
        api.fail("getUpdates", 2, status=502, description="Bad Gateway")
        for n, customer in enumerate(customers):
            await api.enqueue(message=message(customer, 100 + n, text=f"Beschwerde {n}"))
        # Not complaints, but their offsets must move on too.
        await api.enqueue(edited_message={**message(customers[0], 100, text="Beschwerde 0 (bearbeitet)"), "edit_date": int(time.time())})
        await api.enqueue(message=message(customers[1], 150, sticker={"file_id": "st", "file_unique_id": "stu", "type": "regular", "width": 512, "height": 512, "is_animated": False, "is_video": False}))
        last = await api.enqueue(callback_query={"id": "1", "from": customers[2], "chat_instance": "x"})
        config = telegram_settings(tmp_path, kafka, topic, api, mode="polling", poll_timeout_seconds=25)
        async with running(config) as (gateway, _base):
            records = await read_topic(kafka.bootstrap, topic, expect=6, timeout=30)
            await wait_for(lambda: _true(api.pending == 0))  # every update confirmed, none left behind
            assert await gateway.spool.cursor(f"telegram:{BOT_ID}") == str(last["update_id"] + 1)
            assert api.allowed_updates == ["message", "edited_message", "callback_query"]
            stopping = time.monotonic()
        stop_seconds = time.monotonic() - stopping  # with a 25-second long poll open
    received = of_type(records, "received")
    assert sorted(r.data["text"] for r in received) == ["Beschwerde 0", "Beschwerde 1", "Beschwerde 2"]
    for record in received:
        jsonschema.validate(record.data, SCHEMA)
    assert stop_seconds < 5, stop_seconds
    assert_no_duplicate_ce_id(records)


async def test_start_is_answered_and_not_published(tmp_path: Path, kafka, topic):
    persian = user(5570001, first_name="Sara", last_name=None, username=None, language_code="fa")
    async with TelegramApi() as api:
        start = await api.enqueue(message=message(persian, 1, text="/start"))
        await api.enqueue(message=message(persian, 2, text=f"/help@{bot_user()['username']}"))
        config = telegram_settings(tmp_path, kafka, topic, api, mode="polling")
        async with running(config) as (gateway, _base):
            sent = await api.wait_sent(2)
            await wait_for(lambda: _true(api.pending == 0))
            assert (await gateway.spool.status()).messages == 0
            assert int(await gateway.spool.cursor(f"telegram:{BOT_ID}")) > start["update_id"] + 1
        assert await read_topic(kafka.bootstrap, topic, expect=1, timeout=2) == []
    assert [s.chat_id for s in sent] == [persian["id"], persian["id"]]
    assert sent[0].text == help_text("fa") and "شکایت" in sent[0].text
    assert help_text("fa") != help_text("en")


async def test_an_update_that_cannot_be_read_is_dead_lettered_and_the_rest_still_come_in(tmp_path: Path, kafka, topic):
    customer = user(5580001)
    async with TelegramApi() as api:
        # A message without chat or date: PTB cannot parse it, and Bot.get_updates would fail the whole batch.
        await api.enqueue(message={"message_id": 1, "text": "broken"})
        await api.enqueue(message=message(customer, 2, text="A readable complaint"))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            records = await read_topic(kafka.bootstrap, topic, expect=2)
            dead = await read_topic(kafka.bootstrap, f"{topic}.dead-letter", expect=1)
    assert [r.data["text"] for r in of_type(records, "received")] == ["A readable complaint"]
    assert len(dead) == 1 and dead[0].data["channel"] == "telegram"


async def test_polling_gateway_killed_mid_stream_takes_every_update_exactly_once(tmp_path: Path, kafka, topic):
    total = 30
    port = free_port()
    # Small, slow batches: the stream takes a few seconds, so the kill lands in the middle of it.
    async with TelegramApi(answer_delay=0.15) as api:
        config = tmp_path / "intake.toml"
        config.write_text(
            f"""
log_format = "text"
shutdown_grace_seconds = 5
[http]
port = {port}
[spool]
path = "{tmp_path / 'spool.sqlite3'}"
[attachments]
directory = "{tmp_path / 'attachments'}"
[kafka]
topic = "{topic}"
dead_letter_topic = "{topic}.dead-letter"
stall_seconds = 1.0
[telegram]
enabled = true
token = "{TOKEN}"
api_url = "{api.url}"
poll_timeout_seconds = 2
poll_limit = 3
retry_initial_seconds = 0.2
"""
        )
        for n in range(total):
            await api.enqueue(message=message(user(5590000 + n), 1000 + n, text=f"complaint {n}"))
        gateway = GatewayProcess(config, port)
        # First life without Kafka: what it took in can only be in its spool when it dies, so every record on the
        # topic afterwards was published once, and a duplicate could only come from taking an update in twice.
        gateway.start(env={"INTAKE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
        try:
            await gateway.wait_healthy()
            try:
                await api.wait_sent(10, timeout=60)  # ten customers have their reference: their updates are stored
            except TimeoutError as error:
                raise TimeoutError(f"{error}; the gateway's log:\n{gateway.log.read_text()[-4000:]}") from None
            gateway.kill()
            acknowledged_before_kill = len({s.reply_to_message_id for s in api.sent})
            left_at_kill = api.pending
            gateway.start(env={"INTAKE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap})
            await gateway.wait_healthy()
            records = await read_topic(kafka.bootstrap, topic, expect=2 * total, timeout=90, settle=3)
            await wait_for(lambda: _true(api.pending == 0))
        finally:
            if gateway.process is not None and gateway.process.poll() is None:
                assert gateway.terminate() == 0, gateway.log.read_text()[-3000:]

    received = of_type(records, "received")
    assert 10 <= acknowledged_before_kill < total
    assert left_at_kill > 0  # the kill really left updates for the second life
    assert sorted(r.data["text"] for r in received) == sorted(f"complaint {n}" for n in range(total))
    assert len(of_type(records, "acknowledged")) == total
    assert_no_duplicate_ce_id(records)


async def test_a_rejected_token_is_retried_and_never_logged(tmp_path: Path, kafka, topic, caplog):
    wrong = "7000000001:AAH-revoked-token-of-this-bot-0123456"
    async with TelegramApi() as api:
        with caplog.at_level(logging.DEBUG):
            async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling", token=wrong)):
                await wait_for(lambda: _true(api.unauthorized >= 2))  # backs off and asks again
    assert any(getattr(r, "event", None) == "telegram_bad_token" for r in caplog.records)
    secret = wrong.split(":", 1)[1]
    # httpx logs request URLs, which carry the token; PTB puts it into InvalidToken's message.
    assert [r.name for r in caplog.records if secret in r.getMessage() or secret in str(vars(r))] == []


# --- acknowledgements ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "description", "retry_after"),
    [(429, "Too Many Requests: retry after 1", 1), (502, "Bad Gateway", None)],
    ids=["flood-control", "bad-gateway"],
)
async def test_the_acknowledgement_is_a_reply_in_the_customers_language(tmp_path: Path, kafka, topic, status, description, retry_after):
    persian = user(5600001, first_name="Sara", last_name="Ahmadi", language_code="fa")
    async with TelegramApi() as api:
        # A temporary failure on the first try: the reply waits in the spool and goes out on a retry.
        api.fail("sendMessage", 1, status=status, description=description, retry_after=retry_after)
        await api.enqueue(message=message(persian, 77, text="قبض من اشتباه است"))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            [sent] = await api.wait_sent(1, timeout=30)
            records = await read_topic(kafka.bootstrap, topic, expect=2)
    reference = ref(persian["id"], 77)
    assert sent.chat_id == persian["id"]
    assert sent.reply_to_message_id == 77
    assert f"{LRI}{reference}{PDI}" in sent.text and "شکایت" in sent.text
    assert api.calls["sendMessage"] == 2
    [acknowledged] = of_type(records, "acknowledged")
    assert acknowledged.data["locale"] == "fa" and acknowledged.data["channel"] == "telegram"


@pytest.mark.parametrize("refusal", ["blocked", "chat not found"])
async def test_an_acknowledgement_telegram_refuses_is_recorded_as_failed_and_not_retried(tmp_path: Path, kafka, topic, refusal):
    customer = user(5610001)
    async with TelegramApi() as api:
        if refusal == "blocked":
            api.blocked.add(customer["id"])  # 403 Forbidden: bot was blocked by the user
        else:
            api.fail("sendMessage", 1, status=400, description="Bad Request: chat not found")
        await api.enqueue(message=message(customer, 5, text="Complaint, then I blocked the bot"))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            records = await read_topic(kafka.bootstrap, topic, expect=2)
    [failed] = of_type(records, "acknowledgement_failed")
    assert refusal in failed.data["error"].lower()
    assert api.sent == [] and api.calls["sendMessage"] == 1


async def test_a_reply_to_our_acknowledgement_is_a_follow_up(tmp_path: Path, kafka, topic):
    customer = user(5620001, language_code="en")
    async with TelegramApi() as api:
        await api.enqueue(message=message(customer, 10, text="My order never arrived."))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            [acknowledgement] = await api.wait_sent(1)
            # The customer answers our acknowledgement with Telegram's "reply".
            await api.enqueue(message=message(customer, 12, text="Still nothing.", reply_to_message=acknowledgement.message))
            # And later writes anew, quoting the reference.
            original = ref(customer["id"], 10)
            await api.enqueue(message=message(customer, 15, text=f"About {original.lower()}: any news?"))
            sent = await api.wait_sent(3)
            records = await read_topic(kafka.bootstrap, topic, expect=6)
    [received] = of_type(records, "received")
    follow_ups = of_type(records, "followed_up")
    assert len(follow_ups) == 2
    for record in follow_ups:
        jsonschema.validate(record.data, SCHEMA)
        assert record.key == original == record.data["follows_up"]
        assert record.partition == received.partition and record.offset > received.offset
    assert received.key == original
    assert all("added your message to complaint" in s.text and original in s.text for s in sent[1:])


def album(customer: dict[str, Any], first_id: int, group_id: str, caption: str, count: int = 3) -> list[dict[str, Any]]:
    """An album as Telegram delivers it: one message per photo, consecutive ids, one media_group_id, one caption."""
    return [
        message(
            customer,
            first_id + n,
            media_group_id=group_id,
            photo=photo_sizes(f"AgAC-{group_id}-{n}", f"AQAD-{group_id}-{n}"),
            **({"caption": caption} if n == 0 else {}),
        )
        for n in range(count)
    ]


def assert_one_complaint_per_album(records: list[Record], first: dict[str, Any], group_id: str, count: int) -> None:
    [received] = [r for r in of_type(records, "received") if r.data["channel_message_id"] == f"{first['chat']['id']}:{first['message_id']}"]
    assert received.data["attachments"] == [{"content_type": "image/jpeg", "size": 81_000, "location": f"tg-file:AgAC-{group_id}-0"}]
    parts = [r for r in of_type(records, "followed_up") if r.key == received.key]
    assert sorted(r.data["attachments"][0]["location"] for r in parts) == [f"tg-file:AgAC-{group_id}-{n}" for n in range(1, count)]
    for part in parts:
        jsonschema.validate(part.data, SCHEMA)
        assert part.data["follows_up"] == received.data["reference"] and part.data["text"] == ""
        assert part.partition == received.partition and part.offset > received.offset  # in order behind the complaint


async def test_an_album_is_one_complaint_and_one_acknowledgement(tmp_path: Path, kafka, topic):
    customer = user(5625001, language_code="en")
    photos = album(customer, 20, "13601234567890001", "Three photos of the broken parcel")
    async with TelegramApi() as api:
        for part in photos:
            await api.enqueue(message=part)
        await api.enqueue(message=message(customer, 30, text="And the courier was rude."))  # alone: a complaint of its own
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            sent = await api.wait_sent(2)
            # The same album part again under a new update_id (a switch between webhook and polling): a duplicate.
            await api.enqueue(message=photos[1])
            records = await read_topic(kafka.bootstrap, topic, expect=6, settle=2)
    assert_one_complaint_per_album(records, photos[0], "13601234567890001", 3)
    assert len(of_type(records, "received")) == 2
    assert len(of_type(records, "followed_up")) == 2
    assert len(of_type(records, "acknowledged")) == 2
    assert sorted(s.reply_to_message_id for s in sent) == [20, 30]  # the album answered under its first photo, once
    assert len(api.sent) == 2
    assert_no_duplicate_ce_id(records)


async def test_an_album_posted_at_once_to_the_webhook_is_one_complaint(tmp_path: Path, kafka, topic):
    customer = user(5625002, language_code="de")
    photos = album(customer, 50, "13601234567890002", "Das Paket kam so an", count=5)
    async with TelegramApi() as api, running(telegram_settings(tmp_path, kafka, topic, api, mode="webhook")) as (_gateway, base):
        async with aiohttp.ClientSession() as http:
            # Telegram may deliver an album's updates on parallel connections: all five at once.
            statuses = await asyncio.gather(*(post_update(http, base, {"update_id": 801_000 + n, "message": part}) for n, part in enumerate(photos)))
        records = await read_topic(kafka.bootstrap, topic, expect=6, settle=2)
        await api.wait_sent(1)
    assert statuses == [200] * 5
    [received] = of_type(records, "received")
    assert len(of_type(records, "followed_up")) == 4
    assert {r.key for r in records} == {received.key}
    assert len(of_type(records, "acknowledged")) == 1 and len(api.sent) == 1
    assert_no_duplicate_ce_id(records)


# --- what a message carries ---------------------------------------------------------------------


async def test_a_photo_with_a_caption_becomes_an_attachment(tmp_path: Path, kafka, topic):
    customer = user(5630001)
    async with TelegramApi() as api:
        await api.enqueue(message=message(customer, 3, caption="The box as it arrived", photo=photo_sizes("AgAC-photo", "AQAD-photo")))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            records = await read_topic(kafka.bootstrap, topic, expect=2)
    [received] = of_type(records, "received")
    jsonschema.validate(received.data, SCHEMA)
    assert received.data["text"] == "The box as it arrived"
    # Only the largest of the sizes Telegram made, described where it lives: nothing was downloaded.
    assert received.data["attachments"] == [{"content_type": "image/jpeg", "size": 81_000, "location": "tg-file:AgAC-photo"}]


async def test_a_document_is_downloaded_into_the_attachment_store_when_configured(tmp_path: Path, kafka, topic):
    customer = user(5640001)
    invoice = b"%PDF-1.4 invoice 2024-117\n" * 50
    async with TelegramApi() as api:
        api.add_file(invoice, file_id="BQAC-doc", file_unique_id="AgAD-doc", file_path="documents/file_7.pdf")
        document = {"file_id": "BQAC-doc", "file_unique_id": "AgAD-doc", "file_name": "../../invoice.pdf", "mime_type": "application/pdf", "file_size": len(invoice)}
        await api.enqueue(message=message(customer, 4, caption="Charged twice", document=document))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling", download_files=True)):
            records = await read_topic(kafka.bootstrap, topic, expect=2)
    [received] = of_type(records, "received")
    [attachment] = received.data["attachments"]
    assert attachment["filename"] == "invoice.pdf" and attachment["content_type"] == "application/pdf"
    assert attachment["location"].startswith("file://")
    stored = Path(attachment["location"].removeprefix("file://"))
    assert stored.read_bytes() == invoice and attachment["size"] == len(invoice)


async def test_a_shared_contact_sets_the_phone(tmp_path: Path, kafka, topic):
    customer = user(5650001)
    own = {"phone_number": "48601234567", "first_name": "Ewa", "user_id": customer["id"]}
    someone_else = {"phone_number": "+48 22 111 22 33", "first_name": "Jan", "user_id": 999}
    async with TelegramApi() as api:
        await api.enqueue(message=message(customer, 20, contact=own))
        await api.enqueue(message=message(customer, 21, contact=someone_else))
        async with running(telegram_settings(tmp_path, kafka, topic, api, mode="polling")):
            records = await read_topic(kafka.bootstrap, topic, expect=4)
    by_message = {r.data["channel_message_id"]: r.data for r in of_type(records, "received")}
    assert by_message[f"{customer['id']}:20"]["complainant"]["phone"] == "+48601234567"
    assert "phone" not in by_message[f"{customer['id']}:21"]["complainant"]  # a third party's number is not the complainant's


# --- the normalizer alone (pure) ------------------------------------------------------------------

RECEIVED_AT = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def _raw(**update: Any) -> bytes:
    return json.dumps({"update_id": 1, **update}).encode()


@pytest.mark.parametrize(
    ("text", "kind", "command"),
    [("/start", "command", "start"), ("/START@intake_test_bot", "command", "start"), ("/start C-7K3M-9QXA", "command", "start"),
     ("/help", "command", "help"), ("/refund now", "complaint", None), ("start", "complaint", None)],
)
def test_commands_are_told_from_complaints(text: str, kind: str, command: str | None) -> None:
    classified = normalize.classify(normalize.parse(_raw(message=message(user(), 1, text=text))))
    assert (classified.kind, classified.command) == (kind, command)


def test_a_reply_to_a_persian_acknowledgement_finds_the_reference() -> None:
    original = ref(5550001, 9)
    ours = message(user(), 10, text=f"شکایت شما با کد پیگیری {LRI}{original}{PDI} ثبت شد.")
    ours["from"] = bot_user()
    complaint = normalize.to_complaint(
        _raw(message=message(user(), 11, text="هنوز خبری نیست", reply_to_message=ours)), received_at=RECEIVED_AT, bot_id=BOT_ID
    )
    assert complaint.follows_up == original and complaint.key == original
    # A reply to someone else's message that happens to hold a reference is not enough.
    ours["from"] = user(42, first_name="Mallory")
    other = normalize.to_complaint(_raw(message=message(user(), 12, text="hm", reply_to_message=ours)), received_at=RECEIVED_AT, bot_id=BOT_ID)
    assert other.follows_up is None


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"update_id": "1"}', _raw(message={"message_id": 1})])
def test_what_is_not_an_update_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidMessage):
        normalize.parse(raw)


def test_a_message_from_a_bot_is_recorded_but_flagged_automated() -> None:
    complaint = normalize.to_complaint(_raw(message=message(user(is_bot=True), 1, text="beep")), received_at=RECEIVED_AT, bot_id=BOT_ID)
    assert complaint.flags.automated is True
