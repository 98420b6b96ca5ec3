"""The gateway: builds the spool, publisher, channels and web app from settings, and owns their lives."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from intake.channels import email as email_channel
from intake.channels.email.imap import MailboxWatcher
from intake.channels.email.smtp import SmtpListener
from intake.channels.status_page import StatusPage, StatusPageConfig
from intake.channels.telegram import TelegramChannel
from intake.channels.twilio import VIAS as TWILIO_VIAS
from intake.channels.twilio import TwilioChannel, TwilioSender
from intake.channels.web_form import WebFormChannel
from intake.channels.webhook import PartnerCallbackSender, WebhookChannel
from intake.attachments import AttachmentStore
from intake.config import Settings
from intake import topics
from intake.errors import TemporaryFailure
from intake.feedback import SurveyLinks
from intake.http import BODY_TIMEOUT, BodyTooLarge, BodyUnreadable, read_body
from intake.delivery import Delivery
from intake.inbox import Normaliser
from intake.metrics import Metrics
from intake.normalizer import language
from intake.outbound import ConsumerFactory, OutboundConsumer, default_consumer
from intake.pause import pause
from intake.problems import problem
from intake.publisher import Publisher, PublisherSettings, ProducerFactory, default_producer
from intake.reception import Reception
from intake.requests import CustomerRequests
from intake.replies import Replies, ReplySender
from intake.spool import Spool
from intake.conversations import SharedConversations
from intake.supervisor import Component, Supervisor
from intake.twoway import Conversations, OutboundSender
from intake.workers import spools_beyond, worker_spool_path

log = logging.getLogger("intake.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Answered while draining too: the load balancer and the operator need them most then.
_OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_DRAIN_RETRY_AFTER = 5


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp names itself and Python with their versions: a map of what to attack, for nobody's benefit.
    response.headers["Server"] = "intake"


@web.middleware
async def _close_after_an_unfinished_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body that was not received to its end (it did not decompress, its framing broke, it stalled, or it was refused
    before it all came) leaves the connection in no state for another request: aiohttp closes it after the answer, or
    drains what is left for as long as it lingers. The answer says so (Connection: close), before it is written: a
    client that pools connections would otherwise send its next request on one about to close, and get no answer."""
    try:
        response = await handler(request)
    except web.HTTPException as error:  # aiohttp's own refusals (413 from client_max_size) are responses too
        if _unfinished(request):
            error.force_close()
        raise
    if _unfinished(request):
        response.force_close()
    return response


def _unfinished(request: web.Request) -> bool:
    return request.content.exception() is not None or not request.content.is_eof()


class Housekeeping:
    """A component: keeps the spool fit to take complaints (its reserve, its WAL, early pruning near its bound,
    and a full disk noticed as soon as it has room again) and forgets raw messages past retention."""

    name = "housekeeping"

    def __init__(
        self,
        spool: Spool,
        retention_seconds: float,
        *,
        interval: float = 3600.0,
        tick: float = 10.0,
        route_retention_seconds: float = 400 * 86400,
        command_retention_seconds: float = 30 * 86400,
    ) -> None:
        self._spool = spool
        self._retention = retention_seconds
        self._route_retention = route_retention_seconds
        self._command_retention = command_retention_seconds
        self._interval = interval
        self._tick = tick
        self._stopping = asyncio.Event()
        self.spool_error: str | None = None

    async def run(self) -> None:
        next_prune = 0.0
        while not self._stopping.is_set():
            try:
                early = await self._spool.housekeep()
                if time.monotonic() >= next_prune:
                    pruned = await self._spool.prune(time.time() - self._retention)
                    pruned += await self._spool.prune_conversations(
                        routes_before=time.time() - self._route_retention, commands_before=time.time() - self._command_retention
                    )
                    next_prune = time.monotonic() + self._interval
                    if pruned:
                        log.info("pruned raw messages past retention", extra={"event": "pruned", "count": pruned})
            except TemporaryFailure as error:
                # Reported by the spool's own fault in /readyz; tried again at the next tick.
                self.spool_error = str(error)[:300]
            else:
                self.spool_error = None
                if early:
                    log.warning("raw messages pruned inside retention to make room", extra={"event": "pruned_early", "count": early})
            # Faster while the spool is in trouble: readiness comes back as soon as the disk has room.
            await pause(self._stopping, self._tick if self._spool.fault is None else min(self._tick, 1.0))

    def health(self) -> str | None:
        return None if self.spool_error is None else f"spool: {self.spool_error}"

    async def stop(self) -> None:
        self._stopping.set()


class Gateway:
    """One gateway process: everything ``intake serve`` runs, or one of its workers (``intake.workers``).

    Worker ``worker`` of ``workers`` has its own spool (``worker_spool_path``). Worker 0 also runs
    what must run once per gateway: the pull channels (IMAP mailboxes, Telegram long polling), and
    the draining of spools left by workers beyond the current count."""

    def __init__(
        self,
        settings: Settings,
        *,
        producer_factory: ProducerFactory = default_producer,
        consumer_factory: ConsumerFactory = default_consumer,
        clock: Callable[[], float] = time.time,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.workers = workers
        self.metrics = Metrics()
        self.spool = Spool.from_config(settings.spool.model_copy(update={"path": worker_spool_path(settings.spool.path, worker)}))
        # Exported so that an alert on the spool filling reads the replica's own limits, not a copy of them.
        self.metrics.spool_capacity_events.set(settings.spool.max_pending_events)
        self.metrics.spool_capacity_bytes.set(settings.spool.max_pending_bytes)
        kafka = settings.kafka
        self._publisher_settings = PublisherSettings(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=kafka.client_id,
            window=kafka.window,
            linger_ms=kafka.linger_ms,
            max_request_size=kafka.max_request_size,
            send_timeout=kafka.send_timeout_seconds,
            stall_after=kafka.stall_seconds,
            shutdown_flush_timeout=settings.shutdown_grace_seconds,
            security=kafka.security(),
        )
        self._producer_factory = producer_factory
        self.publisher = Publisher(
            self.spool,
            self._publisher_settings,
            self.metrics,
            producer_factory,
            topics_check=lambda: topics.ensure(kafka, create=kafka.create_topics),
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
        # What downstream's commands go out through, by the via a message goes out on (intake.twoway).
        self.outbound_senders: dict[str, OutboundSender] = {}
        ack = settings.acknowledgement
        self.replies = Replies(
            self.spool,
            self.reception,
            self.metrics,
            self.reply_senders,
            max_attempts=ack.max_attempts,
            first_retry=ack.retry_first_seconds,
            max_retry=ack.retry_max_seconds,
            clock=clock,
        )
        self.draining = False
        # Added in the order they start; stopped in reverse: channels first, the publisher last, so what they
        # took in during shutdown still reaches Kafka.
        self.supervisor = Supervisor(self.metrics)
        self.supervisor.add(self.publisher)
        self.supervisor.add(self.replies)
        outbound = settings.outbound
        self.supervisor.add(
            Housekeeping(
                self.spool,
                settings.spool.retention_hours * 3600,
                route_retention_seconds=outbound.route_retention_days * 86400,
                command_retention_seconds=outbound.command_retention_days * 86400,
            )
        )
        # Two-way: downstream's commands, delivered on the complaint's channel. Channels fill in their senders below
        # (keyed by channel: email, telegram, sms, whatsapp, webhook), as they do reply_senders.
        self.outbound_senders: dict[str, OutboundSender] = {}
        self.outbound: OutboundConsumer | None = None
        self.delivery: Delivery | None = None
        # What every worker's spool knows of a complaint's conversation, read as one: a complaint taken in by one
        # worker is answered, asked about and surveyed through any other (intake.conversations).
        self.conversations: Conversations = self.spool
        if workers > 1:
            others = [worker_spool_path(settings.spool.path, i) for i in range(workers) if i != worker]
            self.conversations = SharedConversations(self.spool, [*others, *spools_beyond(settings.spool.path, workers)])
        self.reception.conversations = self.conversations
        # One consumer per gateway, in worker 0, like the pull channels; its commands and their statuses and
        # surveys are kept in worker 0's spool, the routes found wherever they are.
        if outbound.enabled and worker == 0:
            self.outbound = OutboundConsumer(
                self.spool,
                self.metrics,
                kafka,
                source=settings.source,
                consumer_factory=consumer_factory,
                clock=clock,
                routes=self.conversations.route if workers > 1 else None,
            )
            self.delivery = Delivery(
                self.spool,
                self.metrics,
                self.outbound_senders,
                outbound,
                topic=kafka.topic,
                source=settings.source,
                clock=clock,
                conversations=self.conversations,
            )
            self.supervisor.add(self.delivery)
            self.supervisor.add(self.outbound)
        # After the publisher and replies, before the channels: on stop, what the listeners took in last is normalised.
        self.normaliser = Normaliser(self.spool, self.reception, clock=clock)
        self.supervisor.add(self.normaliser)
        # Spools of workers a former run had and this one has not: published and answered from here.
        self.left_spools: list[Spool] = []
        if worker == 0:
            for path in spools_beyond(settings.spool.path, workers):
                self._drain(path, clock)

        self._max_body = max(settings.webhook.max_body_bytes, 1024 * 1024)
        self.app = web.Application(
            client_max_size=self._max_body,
            middlewares=[_close_after_an_unfinished_body, self._refuse_while_draining, self._count_refusals],
        )
        self.app[BODY_TIMEOUT] = settings.http.body_timeout_seconds
        # Which channel each route belongs to, for counting what is refused on every channel in one place.
        self._route_channel: dict[web.AbstractResource, str] = {}
        self.app.on_response_prepare.append(_plain_server_header)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics_page)
        # Long-running parts of channels (SMTP listener, IMAP watchers, Telegram bot, Twilio's media client).
        self.services: list[Component] = []
        if settings.webhook.enabled:
            self._add_channel_routes("webhook", WebhookChannel(settings.webhook, self.reception, clock).routes())
            if any(partner.callback_url for partner in settings.webhook.partners.values()):
                self.outbound_senders["webhook"] = PartnerCallbackSender(settings.webhook, clock=clock)
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
                csrf_key_path=settings.spool.path.with_name("web-form-csrf.key"),
                clock=clock,
            )
            self._add_channel_routes("web_form", web_form.routes())
        # Two-way (issue 10): status requests and survey answers among messages, the /status and /survey pages.
        # Over every worker's spool (self.conversations); the survey links' key is kept beside it, shared by every worker.
        self.survey_links = SurveyLinks.kept_beside(settings.spool.path, settings.http.public_base_url)
        if self.delivery is not None:
            self.delivery.survey_links = self.survey_links
        self.reception.requests = CustomerRequests(
            self.conversations, topic=kafka.topic, source=settings.source, default_locale=settings.acknowledgement.default_locale
        )
        status_page = StatusPage(
            self.conversations,
            links=self.survey_links,
            metrics=self.metrics,
            topic=kafka.topic,
            source=settings.source,
            http=settings.http,
            acknowledgement=settings.acknowledgement,
            config=StatusPageConfig(
                trusted_proxy_hops=settings.web_form.trusted_proxy_hops, default_phone_region=settings.web_form.default_phone_region
            ),
            clock=clock,
        )
        self._add_channel_routes("status_page", status_page.routes(static=not settings.web_form.enabled))
        self.relay_connection = None
        if settings.email.enabled:
            email = email_channel.build(settings, self)
            self.relay_connection = email.connection
            self.services.extend(service for service in email.services if self._runs_here(service))
            if email.sender is not None:
                self.reply_senders["email"] = email.sender
            if email.outbound is not None:
                self.outbound_senders["email"] = email.outbound
        if settings.twilio.enabled:
            twilio = TwilioChannel(
                settings.twilio, self.reception, self.attachments, self.metrics, public_base_url=settings.http.public_base_url, clock=clock
            )
            self._add_channel_routes("twilio", twilio.routes())
            self.services.append(twilio)
        # Sending needs no webhook: a web form complaint with only a phone number is acknowledged by SMS all the same.
        self.twilio_sender: TwilioSender | None = None
        if settings.twilio.sending:
            self.twilio_sender = TwilioSender(settings.twilio)
            self.reply_senders["sms"] = self.twilio_sender
            for via in TWILIO_VIAS:
                self.outbound_senders[via] = self.twilio_sender
        # Long polling has one owner per bot; its complaints, and so its replies, are all in worker 0's spool.
        if settings.telegram.enabled and (settings.telegram.mode == "webhook" or worker == 0):
            telegram = TelegramChannel(
                settings.telegram,
                self.reception,
                self.attachments,
                public_base_url=settings.http.public_base_url,
                clock=clock,
                # Survey presses are recorded where the survey's answers are (intake.conversations).
                conversations=self.conversations,
                metrics=self.metrics,
                topic=settings.kafka.topic,
                source=settings.source,
            )
            self._add_channel_routes("telegram", telegram.routes())
            self.services.append(telegram)
            self.reply_senders["telegram"] = telegram
            self.outbound_senders["telegram"] = telegram

    def _runs_here(self, service: Component) -> bool:
        """A mailbox has one watcher per gateway, in worker 0; push listeners run in every worker, on a shared port."""
        if isinstance(service, SmtpListener):
            service.reuse_port = self.workers > 1
        return self.worker == 0 or not isinstance(service, MailboxWatcher)

    def _drain(self, path: Path, clock: Callable[[], float]) -> None:
        """Publish and answer what a spool of a worker beyond the current count still holds. Its raw
        messages stay in its file (dead letters, redeliveries within retention are then new)."""
        spool = Spool.from_config(self.settings.spool.model_copy(update={"path": path}))
        publisher = Publisher(spool, self._publisher_settings, self.metrics, self._producer_factory)
        publisher.name = f"publisher:{path.name}"
        ack = self.settings.acknowledgement
        replies = Replies(
            spool, self.reception, self.metrics, self.reply_senders, max_attempts=ack.max_attempts,
            first_retry=ack.retry_first_seconds, max_retry=ack.retry_max_seconds, clock=clock,
        )  # fmt: skip
        replies.name = f"replies:{path.name}"
        self.supervisor.add(publisher)
        self.supervisor.add(replies)
        self.left_spools.append(spool)
        log.info("draining the spool of a former worker", extra={"event": "spool_left_over", "path": str(path)})

    async def _adopt_inbox(self, left: Spool) -> None:
        """Move what a left-over spool has yet to normalise into this worker's inbox. Not one transaction
        across two files: a crash between the two writes normalises a message twice, and the second is a
        duplicate of the first by its channel's key."""
        while batch := await left.to_normalise(float("inf"), limit=100):
            for message in batch:
                await self.spool.take_in(message.channel, message.raw, context=message.context, received_at=message.received_at)
            await left.forget_inbox([message.id for message in batch])

    # --- life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start every component under the supervisor; the HTTP side is started by the caller."""
        await self.spool.open()
        for spool in self.left_spools:
            await spool.open()
            await self._adopt_inbox(spool)
        if self.settings.webhook.partners:
            # A partner's complaint without a language is guessed by the model: loaded now (0.8 s), not by the first
            # complaint, in the event loop, while every other request on this worker waits. Email and Twilio load it too.
            await asyncio.to_thread(language.model)
        for service in self.services:
            self.supervisor.add(service)
        await self.supervisor.start()
        status = await self.spool.status()
        log.info(
            "gateway started",
            extra={"event": "started", "pending_events": status.pending_events, "pending_replies": status.pending_replies},
        )

    async def stop(self) -> None:
        """Stop the channels, then the replies, then flush what Kafka will take within the grace period; close the spool."""
        self.draining = True
        await self.supervisor.stop(timeout=self.settings.shutdown_grace_seconds + 5)
        if self.twilio_sender is not None:  # after every loop that sends through it has stopped
            await self.twilio_sender.close()
        if self.relay_connection is not None:  # its idle sessions, likewise
            await self.relay_connection.close()
        if isinstance(self.conversations, SharedConversations):
            self.conversations.close()
        await self.spool.close()
        for spool in self.left_spools:
            await spool.close()
        log.info("gateway stopped", extra={"event": "stopped"})

    def http_runner(self) -> web.AppRunner:
        """The gateway's HTTP server. aiohttp keeps a connection that never sends a whole request for an hour unless
        told otherwise (its keep-alive timer, started when the connection is made, is the only bound on headers)."""
        return web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=self.settings.shutdown_grace_seconds,
            keepalive_timeout=self.settings.http.idle_timeout_seconds,
        )

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully."""
        await self.start()
        runner = self.http_runner()
        await runner.setup()
        http = self.settings.http
        # Workers share the port: the kernel spreads connections across their sockets.
        site = web.TCPSite(runner, http.host, http.port, reuse_port=self.workers > 1 or None)
        await site.start()
        siblings = await self._serve_own_metrics() if self.workers > 1 else None
        # What start-up made (modules, catalogs, schemas, phone metadata: about 98 000 objects) lives as long as the
        # process: kept out of the collector's reach, a full collection walks only what requests make. Measured once at
        # 700 complaints/s: the longest full collection 42 ms without, 16 ms with; such pauses make the p99.
        gc.freeze()
        log.info("listening", extra={"event": "listening", "host": http.host, "port": http.port, "worker": self.worker})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down", extra={"event": "shutting_down"})
        self.draining = True
        # While draining, every request is answered (503 and Retry-After) and its connection closed, so a client
        # on a keep-alive connection is never left without an answer when the listener goes.
        await asyncio.sleep(self.settings.drain_seconds)
        # Stops accepting connections and lets in-flight requests finish, then the loops.
        await runner.cleanup()
        if siblings is not None:
            self._metrics_port_file(self.worker).unlink(missing_ok=True)
            await siblings.cleanup()
        await self.stop()

    # --- operations endpoints ---------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @web.middleware
    async def _refuse_while_draining(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.draining and request.path not in _OPERATIONS_PATHS:
            # The body is read first: closing on a client still writing it would leave that client with an error, not an answer.
            with contextlib.suppress(BodyTooLarge, BodyUnreadable, asyncio.TimeoutError):
                await asyncio.wait_for(read_body(request, self._max_body), timeout=_DRAIN_RETRY_AFTER)
            response: web.StreamResponse = problem(
                503, "Shutting down", "this gateway is stopping; send it again (to another replica)", retry_after=_DRAIN_RETRY_AFTER
            )
        else:
            response = await handler(request)
        if self.draining:
            response.force_close()
        return response

    def _add_channel_routes(self, channel: str, routes: list[web.RouteDef]) -> None:
        for route in self.app.router.add_routes(routes):
            self._route_channel[route.resource] = channel

    @web.middleware
    async def _count_refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:  # aiohttp's own refusals (413 from client_max_size, 405)
            self._refused(request, error.status)
            raise
        self._refused(request, response.status)
        return response

    def _refused(self, request: web.Request, status: int) -> None:
        channel = self._route_channel.get(request.match_info.route.resource) if request.match_info.route.resource else None
        if channel is not None and 400 <= status < 500:
            self.metrics.refused.labels(channel=channel, status=str(status)).inc()

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready means: complaints can be taken in and kept. Kafka being down does not stop that; it is reported,
        and so is every component that is degraded or restarting."""
        spool_full = self.spool.is_full()
        fault = self.spool.fault
        ready = not self.draining and not spool_full and fault is None
        components = self.supervisor.states()
        publisher = self.supervisor.state(self.publisher.name)
        publishing = publisher.state == "ok" and self.publisher.kafka_available
        body: dict[str, object] = {
            "ready": ready,
            "accepting": ready,
            "draining": self.draining,
            "status": "ok" if ready and all(c.state == "ok" for c in components) else "degraded" if ready else "not ready",
            "components": {c.name: c.describe() for c in components},
            "kafka": {
                "available": publishing,
                "error": None if publishing else (self.publisher.last_error or publisher.describe()),
                "mode": "publishing" if publishing else "spooling",
                "topics": {report.name: report.state for report in self.publisher.topics},
            },
            "spool": {
                "full": spool_full,
                "writable": fault is None,
                "fault": fault,
                "pending_events": self.spool.pending_events_count,
                "capacity_events": self.spool.max_pending_events,
                "pending_bytes": self.spool.pending_bytes_count,
            },
        }
        return ready, body

    async def readyz(self, request: web.Request) -> web.Response:
        ready, body = self.readiness()
        self._update_component_gauges(ready)
        return web.Response(status=200 if ready else 503, body=json.dumps(body).encode(), content_type="application/json")

    def _update_component_gauges(self, ready: bool) -> None:
        for state in self.supervisor.states():
            self.metrics.component_up.labels(component=state.name).set(1 if state.up else 0)
            self.metrics.component_degraded.labels(component=state.name).set(1 if state.state == "degraded" else 0)
        self.metrics.ready.set(1 if ready else 0)
        self.metrics.spool_writable.set(1 if self.spool.fault is None else 0)
        publishing = self.supervisor.state(self.publisher.name).state == "ok" and self.publisher.kafka_available
        self.metrics.kafka_up.set(1 if publishing else 0)

    async def _own_metrics(self) -> bytes:
        self._update_component_gauges(self.readiness()[0])
        self.metrics.spool_pending_events.set(self.spool.pending_events_count)
        self.metrics.spool_pending_bytes.set(self.spool.pending_bytes_count)
        with contextlib.suppress(TemporaryFailure):  # a scrape must not fail for a busy spool
            status = await self.spool.status()
            self.metrics.publish_lag.set(status.oldest_pending_age or 0.0)
        return generate_latest(self.metrics.registry)

    async def metrics_page(self, request: web.Request) -> web.Response:
        """This process's metrics; with workers, every worker's, each sample labelled with its ``worker``:
        a scrape reaches one worker through the shared port, and must see them all."""
        own = await self._own_metrics()
        if self.workers == 1:
            return web.Response(body=own, headers={"Content-Type": CONTENT_TYPE_LATEST})
        pages = {self.worker: own.decode()}
        others = [index for index in range(self.workers) if index != self.worker]
        fetched = await asyncio.gather(*(self._sibling_metrics(index) for index in others))
        pages.update({index: page for index, page in zip(others, fetched, strict=True) if page is not None})
        return web.Response(body=_labelled(pages), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- metrics across workers ---------------------------------------------------

    def _metrics_port_file(self, index: int) -> Path:
        path = self.settings.spool.path
        return path.with_name(f"{path.stem}.worker-{index}.metrics-port")

    async def _serve_own_metrics(self) -> web.AppRunner:
        """A loopback listener of this worker's own metrics, for its siblings; its port in a file beside the spool."""
        app = web.Application()

        async def own(request: web.Request) -> web.Response:
            return web.Response(body=await self._own_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", own)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.settings.http.idle_timeout_seconds)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        target = self._metrics_port_file(self.worker)
        scratch = target.with_name(f"{target.name}.{os.getpid()}")
        scratch.write_text(str(port))
        scratch.replace(target)  # a sibling never reads half a number
        return runner

    async def _sibling_metrics(self, index: int) -> str | None:
        """Another worker's own page; None while it is not there (restarting): its samples are then missing."""
        try:
            port = int(self._metrics_port_file(index).read_text())
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    return await response.text() if response.status == 200 else None
        except (OSError, ValueError, aiohttp.ClientError, asyncio.TimeoutError):
            return None


class _Families:
    """A collector of metric families already read, for rendering them in one exposition."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _labelled(pages: dict[int, str]) -> bytes:
    """Several workers' pages as one, each sample with a ``worker`` label, each family once."""
    families: dict[str, Metric] = {}
    for index, page in sorted(pages.items()):
        try:
            read = list(text_string_to_metric_families(page))
        except ValueError:  # not a worker's page (a stale port file, the port since taken by another program)
            log.warning("a worker's metrics could not be read", extra={"event": "worker_metrics_unreadable", "worker": index})
            continue
        for family in read:
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            merged.samples.extend(sample._replace(labels={**sample.labels, "worker": str(index)}) for sample in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))  # type: ignore[arg-type]
    return generate_latest(registry)
