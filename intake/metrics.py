"""Prometheus metrics per channel: what ISO 10004 monitoring needs from the front door."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per gateway, so two gateways in one process (tests, benchmarks) do not mix figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "intake_received",
            "Messages received, by channel and outcome (accepted, duplicate, rejected, failed, automated).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.refused = Counter(
            "intake_refused",
            "Requests a channel refused, by channel and HTTP status (401/403 bad signature or secret, 400/413/415/422 bad "
            "content, 429 rate limit); for email, 550 for a recipient that is not ours.",
            ["channel", "status"],
            registry=self.registry,
        )
        self.published = Counter(
            "intake_published", "Events Kafka has acknowledged, by event type.", ["type"], registry=self.registry
        )
        self.publish_failures = Counter(
            "intake_publish_failures", "Failed attempts to publish (the events stay in the spool): errors, sends Kafka left unanswered for kafka.stall_seconds, and connection attempts while events wait.", registry=self.registry
        )
        self.acknowledgements = Counter(
            "intake_acknowledgements",
            "Acknowledgements by channel and outcome (sent, retried, failed, suppressed).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.acknowledgements_suppressed = Counter(
            "intake_acknowledgements_suppressed",
            "Acknowledgements not sent, by channel and the limit that held them back (recipient, domain, total, "
            "role_address): how loops with auto-responders and backscatter attempts die out.",
            ["channel", "limit"],
            registry=self.registry,
        )
        self.acknowledgement_latency = Histogram(
            "intake_acknowledgement_latency_seconds",
            "From receiving a complaint to its acknowledgement going out, by channel.",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )
        # Two-way (intake.delivery, the survey answers): ISO 10002 keeping the complainant informed, ISO 10004 satisfaction.
        self.outbound_commands = Counter(
            "intake_outbound_commands",
            "Commands consumed from the outbound topic, by kind (message, status, survey) and outcome (stored, duplicate, rejected).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.outbound_deliveries = Counter(
            "intake_outbound_deliveries",
            "Commands delivered to complainants, by the channel they went out on, kind and outcome (delivered, retried, failed).",
            ["channel", "kind", "outcome"],
            registry=self.registry,
        )
        self.surveys_sent = Counter(
            "intake_surveys_sent", "Satisfaction surveys sent, by channel.", ["channel"], registry=self.registry
        )
        self.surveys_answered = Counter(
            "intake_surveys_answered", "Satisfaction surveys answered (first answer per survey), by channel.", ["channel"], registry=self.registry
        )
        # CSAT = share of scores 4 and 5 = 1 - bucket(le=3)/count; NPS = promoters (9, 10) minus detractors (le=6), in percent of count.
        self.csat_score = Histogram(
            "intake_csat_score", "Satisfaction scores (1-5), by channel.", ["channel"], buckets=(1, 2, 3, 4, 5), registry=self.registry
        )
        self.nps_score = Histogram(
            "intake_nps_score", "Likelihood to recommend (0-10), by channel.", ["channel"], buckets=(6, 8, 10), registry=self.registry
        )
        self.spool_pending_events = Gauge(
            "intake_spool_pending_events", "Events in the spool not yet acknowledged by Kafka.", registry=self.registry
        )
        self.spool_pending_bytes = Gauge(
            "intake_spool_pending_bytes", "Bytes of events in the spool not yet acknowledged by Kafka.", registry=self.registry
        )
        self.spool_capacity_events = Gauge(
            "intake_spool_capacity_events", "spool.max_pending_events: unpublished events at which channels push back.", registry=self.registry
        )
        self.spool_capacity_bytes = Gauge(
            "intake_spool_capacity_bytes", "spool.max_pending_bytes: unpublished bytes at which channels push back.", registry=self.registry
        )
        self.publish_lag = Gauge(
            "intake_publish_lag_seconds", "Age of the oldest event not yet on Kafka (0 when none).", registry=self.registry
        )
        self.kafka_up = Gauge("intake_kafka_up", "1 while Kafka acknowledges writes, 0 while intake only spools.", registry=self.registry)
        self.component_up = Gauge(
            "intake_component_up",
            "1 while a long-running part of the gateway (publisher, replies, each listener, mailbox, poller) runs, "
            "0 while it is restarting after a crash or stopped.",
            ["component"],
            registry=self.registry,
        )
        self.component_degraded = Gauge(
            "intake_component_degraded",
            "1 while a running component reports it cannot do its work fully (Kafka away, a mailbox unreachable, the spool failing).",
            ["component"],
            registry=self.registry,
        )
        self.component_restarts = Counter(
            "intake_component_restarts", "Restarts of a component after it crashed.", ["component"], registry=self.registry
        )
        self.ready = Gauge(
            "intake_ready", "1 while the gateway takes complaints in and can keep them (what /readyz answers).", registry=self.registry
        )
        self.spool_writable = Gauge(
            "intake_spool_writable", "0 while the spool's last write failed (disk full, I/O error), else 1.", registry=self.registry
        )
