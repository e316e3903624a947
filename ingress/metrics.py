"""Prometheus metrics of one app, in a registry of its own (several apps can live in one process).

Every name starts with `METRIC_PREFIX`, as the consumer's start with `exam_events_consumer_`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

METRIC_PREFIX = "exam_events_ingress_"
# Produce latency on loopback is around a millisecond; a slow broker shows up in the upper buckets.
PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class IngressMetrics:
    """Requests by status, produce latency, body bytes, and Kafka known to be unreachable."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self._by_status: dict[int, Any] = {}
        self.requests = Counter(
            f"{METRIC_PREFIX}requests",
            "Webhook requests answered, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
            f"{METRIC_PREFIX}produce_seconds",
            "Time from handing a record to the producer until Kafka acknowledged it (or failed).",
            buckets=PRODUCE_BUCKETS,
            registry=self.registry,
        )
        self.received_bytes = Counter(
            f"{METRIC_PREFIX}received_bytes", "Body bytes read from webhook requests.", registry=self.registry
        )
        self.produced_bytes = Counter(
            f"{METRIC_PREFIX}produced_bytes", "Body bytes acknowledged by Kafka.", registry=self.registry
        )
        self.kafka_unreachable = Gauge(
            f"{METRIC_PREFIX}kafka_unreachable",
            "1 while Kafka is known to be unreachable (webhooks get 503 at once), else 0.",
            registry=self.registry,
        )
        self.fast_refusals = Counter(
            f"{METRIC_PREFIX}fast_refusals",
            "503s answered without trying to produce, Kafka being known to be unreachable.",
            registry=self.registry,
        )

    def track_kafka(self, unreachable: Callable[[], object]) -> None:
        """Read the unreachable gauge from `unreachable()` (truthy while unreachable) at each scrape."""
        self.kafka_unreachable.set_function(lambda: 1.0 if unreachable() else 0.0)

    def count_request(self, status: int) -> None:
        """Count one answered request."""
        child = self._by_status.get(status)
        if child is None:
            # Looking up a labelled child costs a lock and a tuple per call: keep one per status.
            child = self._by_status[status] = self.requests.labels(str(status))
        child.inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
