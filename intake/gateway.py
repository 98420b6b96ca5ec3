"""The gateway: builds the spool, publisher, channels and web app from settings, and owns their lives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import time
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from channels import email as email_channel
from channels.telegram import TelegramChannel
from channels.twilio import TwilioChannel
from channels.web_form import WebFormChannel
from channels.webhook import WebhookChannel
from intake.attachments import AttachmentStore
from intake.config import Settings
from intake.errors import TemporaryFailure
from intake.metrics import Metrics
from intake.publisher import Publisher, PublisherSettings, ProducerFactory, default_producer
from intake.reception import Reception
from intake.replies import Replies, ReplySender
from intake.spool import Spool

log = logging.getLogger("intake.gateway")


class Service(Protocol):
    """A channel's long-running part (a listener, a mailbox watcher, a poller)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop taking new messages and finish the one in hand."""


class Gateway:
    """One gateway process: everything ``intake serve`` runs."""

    def __init__(
        self,
        settings: Settings,
        *,
        producer_factory: ProducerFactory = default_producer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.spool = Spool(
            settings.spool.path,
            max_pending_events=settings.spool.max_pending_events,
            max_pending_bytes=settings.spool.max_pending_bytes,
            synchronous=settings.spool.synchronous,
        )
        kafka = settings.kafka
        self.publisher = Publisher(
            self.spool,
            PublisherSettings(
                bootstrap_servers=kafka.bootstrap_servers,
                client_id=kafka.client_id,
                window=kafka.window,
                linger_ms=kafka.linger_ms,
                max_request_size=kafka.max_request_size,
                send_timeout=kafka.send_timeout_seconds,
                stall_after=kafka.stall_seconds,
                shutdown_flush_timeout=settings.shutdown_grace_seconds,
                security=kafka.security(),
            ),
            self.metrics,
            producer_factory,
        )
        self.reception = Reception(
            self.spool,
            self.metrics,
            topic=kafka.topic,
            dead_letter_topic=kafka.dead_letter_topic,
            source=settings.source,
            acknowledgement=settings.acknowledgement,
        )
        self.attachments = AttachmentStore(
            settings.attachments.directory, max_bytes=settings.attachments.max_bytes, max_count=settings.attachments.max_count
        )
        self.reply_senders: dict[str, ReplySender] = {}
        self.replies = Replies(self.spool, self.reception, self.metrics, self.reply_senders, clock=clock)
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []

        self.app = web.Application(client_max_size=max(settings.webhook.max_body_bytes, 1024 * 1024))
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics_page)
        # Background loops of channels (IMAP, Telegram polling, SMTP listener): started and stopped with the gateway.
        self.services: list[Service] = []
        if settings.webhook.enabled:
            self.app.router.add_routes(WebhookChannel(settings.webhook, self.reception, clock).routes())
        # Channels follow, each wired in one block.
        if settings.web_form.enabled:
            web_form = WebFormChannel(
                settings.web_form,
                http=settings.http,
                acknowledgement=settings.acknowledgement,
                reception=self.reception,
                attachments=self.attachments,
                reply_senders=self.reply_senders,
                email_domain=settings.email.relay.domain,
                clock=clock,
            )
            self.app.router.add_routes(web_form.routes())
        if settings.email.enabled:
            email = email_channel.build(settings, self)
            self.services.extend(email.services)
            if email.sender is not None:
                self.reply_senders["email"] = email.sender
        if settings.twilio.enabled:
            twilio = TwilioChannel(
                settings.twilio, self.reception, self.attachments, self.metrics, public_base_url=settings.http.public_base_url, clock=clock
            )
            self.app.router.add_routes(twilio.routes())
            self.services.append(twilio)
        if settings.telegram.enabled:
            telegram = TelegramChannel(
                settings.telegram, self.reception, self.attachments, public_base_url=settings.http.public_base_url, clock=clock
            )
            self.app.router.add_routes(telegram.routes())
            self.services.append(telegram)
            self.reply_senders["telegram"] = telegram

    # --- life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start the background loops; the HTTP side is started by the caller."""
        await self.spool.open()
        for service in self.services:
            await service.start()
        self._tasks = [
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self.replies.run(), name="replies"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        status = await self.spool.status()
        log.info(
            "gateway started",
            extra={"event": "started", "pending_events": status.pending_events, "pending_replies": status.pending_replies},
        )

    async def stop(self) -> None:
        """Finish in-flight work, flush what Kafka will take within the grace period, close the spool."""
        self.draining = True
        for service in reversed(self.services):
            await service.stop()
        await self.replies.stop()
        await self.publisher.stop()
        grace = self.settings.shutdown_grace_seconds + 5
        for task in self._tasks:
            if task.get_name() == "housekeeping":
                task.cancel()
        done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("background task failed", extra={"event": "task_failed", "task": task.get_name()}, exc_info=task.exception())
        await self.spool.close()
        log.info("gateway stopped", extra={"event": "stopped"})

    async def _housekeeping(self) -> None:
        retention = self.settings.spool.retention_hours * 3600
        while True:
            pruned = await self.spool.prune(time.time() - retention)
            if pruned:
                log.info("pruned raw messages past retention", extra={"event": "pruned", "count": pruned})
            await asyncio.sleep(3600)

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully."""
        await self.start()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.settings.shutdown_grace_seconds)
        await runner.setup()
        http = self.settings.http
        site = web.TCPSite(runner, http.host, http.port)
        await site.start()
        log.info("listening", extra={"event": "listening", "host": http.host, "port": http.port})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down", extra={"event": "shutting_down"})
        self.draining = True
        # Stops accepting connections and lets in-flight requests finish, then the loops.
        await runner.cleanup()
        await self.stop()

    # --- operations endpoints ---------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready means: can take complaints in. Kafka being down does not stop that; it is reported."""
        spool_full = self.spool.is_full()
        ready = not self.draining and not spool_full
        body = {
            "ready": ready,
            "accepting": ready,
            "draining": self.draining,
            "kafka": {
                "available": self.publisher.kafka_available,
                "error": self.publisher.last_error,
                "mode": "publishing" if self.publisher.kafka_available else "spooling",
            },
            "spool": {
                "full": spool_full,
                "pending_events": self.spool.pending_events_count,
                "capacity_events": self.spool.max_pending_events,
                "pending_bytes": self.spool.pending_bytes_count,
            },
        }
        return web.Response(
            status=200 if ready else 503, body=json.dumps(body).encode(), content_type="application/json"
        )

    async def metrics_page(self, request: web.Request) -> web.Response:
        self.metrics.spool_pending_events.set(self.spool.pending_events_count)
        self.metrics.spool_pending_bytes.set(self.spool.pending_bytes_count)
        with contextlib.suppress(TemporaryFailure, sqlite3.Error):  # a scrape must not fail for a busy spool
            status = await self.spool.status()
            self.metrics.publish_lag.set(status.oldest_pending_age or 0.0)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
