"""Prometheus metrics of one app, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Produce latency on loopback is around a millisecond; a slow broker shows up in the upper buckets.
PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class IngressMetrics:
    """Requests by status, produce latency and body bytes."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self._by_status: dict[int, Any] = {}
        self.requests = Counter(
            "ingress_requests",
            "Webhook requests answered, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
            "ingress_produce_seconds",
            "Time from handing a record to the producer until Kafka acknowledged it (or failed).",
            buckets=PRODUCE_BUCKETS,
            registry=self.registry,
        )
        self.received_bytes = Counter(
            "ingress_received_bytes", "Body bytes read from webhook requests.", registry=self.registry
        )
        self.produced_bytes = Counter(
            "ingress_produced_bytes", "Body bytes acknowledged by Kafka.", registry=self.registry
        )

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
