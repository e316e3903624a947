"""Prometheus metrics of the consumer, in a registry of its own (one per app, so tests can build several)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "exam_events_consumer"


@dataclass(frozen=True)
class ConsumerMetrics:
    """Every metric the consumer exposes on /metrics."""

    registry: CollectorRegistry
    consumed: Counter
    emitted: Counter
    dead_lettered: Counter
    unrouted: Counter
    revoked: Counter
    handler_seconds: Histogram
    batch_seconds: Histogram
    batches: Counter
    publish_retries: Counter
    commit_failures: Counter
    batch_failures: Counter
    assigned_partitions: Gauge
    assignments: Counter
    consume_task_crashes: Gauge
    batches_dropped: Counter
    gap_rewinds: Counter
    producer_replacements: Gauge
    in_flight_batch_seconds: Gauge
    seconds_since_progress: Gauge

    @classmethod
    def create(cls) -> ConsumerMetrics:
        """Fresh metrics in a fresh registry."""
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            consumed=Counter(
                f"{PREFIX}_records_consumed",
                "Raw webhook records read from the raw topic.",
                registry=registry,
            ),
            emitted=Counter(
                f"{PREFIX}_events_emitted",
                "Derived events acknowledged by Kafka, per CloudEvents type.",
                ["type"],
                registry=registry,
            ),
            dead_lettered=Counter(
                f"{PREFIX}_records_dead_lettered",
                "Raw records sent to the dead-letter topic, per error type.",
                ["error_type"],
                registry=registry,
            ),
            unrouted=Counter(
                f"{PREFIX}_records_unrouted",
                "Raw records sent to the unrouted topic (unknown or missing meta.eventName).",
                registry=registry,
            ),
            revoked=Counter(
                f"{PREFIX}_attempts_revoked",
                "Results-released webhooks of revoked attempts (no events on purpose).",
                registry=registry,
            ),
            handler_seconds=Histogram(
                f"{PREFIX}_handler_seconds",
                "Time to decode, route and handle one raw record.",
                buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
                registry=registry,
            ),
            batch_seconds=Histogram(
                f"{PREFIX}_batch_seconds",
                "Time from receiving a batch to committing it, retries included.",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                registry=registry,
            ),
            batches=Counter(f"{PREFIX}_batches", "Batches handled and committed.", registry=registry),
            publish_retries=Counter(
                f"{PREFIX}_publish_retries",
                "Re-publish attempts of a batch after a broker error (the batch stays uncommitted).",
                registry=registry,
            ),
            commit_failures=Counter(
                f"{PREFIX}_commit_failures",
                "Commits that failed after publishing (e.g. after a rebalance); inputs are redelivered.",
                registry=registry,
            ),
            batch_failures=Counter(
                f"{PREFIX}_batch_failures",
                "Batches whose handling crashed (a bug); each is rewound and read again.",
                registry=registry,
            ),
            assigned_partitions=Gauge(
                f"{PREFIX}_assigned_partitions",
                "Raw-topic partitions assigned to this process.",
                registry=registry,
            ),
            assignments=Counter(
                f"{PREFIX}_partition_assignments",
                "Partition assignments received (one per rebalance this process took part in).",
                registry=registry,
            ),
            consume_task_crashes=Gauge(
                f"{PREFIX}_consume_task_crashes",
                "Consume loop tasks that ended with an error (FastStream restarts them; > 0 is a bug).",
                registry=registry,
            ),
            batches_dropped=Counter(
                f"{PREFIX}_batches_dropped",
                "Batches dropped uncommitted while retrying because this member lost their partitions.",
                registry=registry,
            ),
            gap_rewinds=Counter(
                f"{PREFIX}_gap_rewinds",
                "Batches that started past the previous one of their partition (records not handled); "
                "rewound instead of skipped.",
                registry=registry,
            ),
            producer_replacements=Gauge(
                f"{PREFIX}_producer_replacements",
                "Producers replaced because their sender task had died.",
                registry=registry,
            ),
            in_flight_batch_seconds=Gauge(
                f"{PREFIX}_in_flight_batch_seconds",
                "Age of the batch in flight (0 when none): grows while a batch keeps failing to publish.",
                registry=registry,
            ),
            seconds_since_progress=Gauge(
                f"{PREFIX}_seconds_since_progress",
                "Seconds since the last batch was finished (committed or dropped), or since start.",
                registry=registry,
            ),
        )
