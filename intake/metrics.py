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
        self.published = Counter(
            "intake_published", "Events Kafka has acknowledged, by event type.", ["type"], registry=self.registry
        )
        self.publish_failures = Counter(
            "intake_publish_failures", "Failed attempts to publish an event (it stays in the spool).", registry=self.registry
        )
        self.acknowledgements = Counter(
            "intake_acknowledgements",
            "Acknowledgements by channel and outcome (sent, retried, failed, suppressed).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.acknowledgement_latency = Histogram(
            "intake_acknowledgement_latency_seconds",
            "From receiving a complaint to its acknowledgement going out, by channel.",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )
        self.spool_pending_events = Gauge(
            "intake_spool_pending_events", "Events in the spool not yet acknowledged by Kafka.", registry=self.registry
        )
        self.spool_pending_bytes = Gauge(
            "intake_spool_pending_bytes", "Bytes of events in the spool not yet acknowledged by Kafka.", registry=self.registry
        )
        self.publish_lag = Gauge(
            "intake_publish_lag_seconds", "Age of the oldest event not yet on Kafka (0 when none).", registry=self.registry
        )
        self.kafka_up = Gauge("intake_kafka_up", "1 while Kafka acknowledges writes, 0 while intake only spools.", registry=self.registry)
