"""Prometheus metrics of the LRS forwarder, in a registry of its own (tests build several)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "exam_events_lrs_forward"


@dataclass(frozen=True)
class ForwarderMetrics:
    """Every metric the forwarder exposes on /metrics."""

    registry: CollectorRegistry
    consumed: Counter
    forwarded: Counter
    already_stored: Counter
    dead_lettered: Counter
    request_seconds: Histogram
    requests: Counter
    retries: Counter
    batches: Counter
    batch_seconds: Histogram
    batches_dropped: Counter
    commit_failures: Counter
    dead_letter_retries: Counter
    assigned_partitions: Gauge
    in_flight_batch_seconds: Gauge
    partition_lag: Gauge
    group_lag: Gauge

    @classmethod
    def create(cls) -> ForwarderMetrics:
        """Fresh metrics in a fresh registry."""
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            consumed=Counter(
                f"{PREFIX}_statements_consumed", "Statement records read from the topic.", registry=registry
            ),
            forwarded=Counter(
                f"{PREFIX}_statements_forwarded",
                "Statements the LRS stored (listed in its 200 answer).",
                registry=registry,
            ),
            already_stored=Counter(
                f"{PREFIX}_statements_already_stored",
                "Statements the LRS already held: `identical` (204, or not among the ids of a 200) or "
                "`conflict` (409: the same id with other content); counted as delivered.",
                ["kind"],
                registry=registry,
            ),
            dead_lettered=Counter(
                f"{PREFIX}_statements_dead_lettered",
                "Statements sent to the dead-letter topic, per reason (`http_422`, ..., `not_json_object`).",
                ["reason"],
                registry=registry,
            ),
            request_seconds=Histogram(
                f"{PREFIX}_lrs_request_seconds",
                "Time of one POST to the LRS, failed ones included.",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                registry=registry,
            ),
            requests=Counter(
                f"{PREFIX}_lrs_requests",
                "POSTs to the LRS, per verdict (accepted, conflict, refused, retry).",
                ["verdict"],
                registry=registry,
            ),
            retries=Counter(
                f"{PREFIX}_retries",
                "Batches sent again after a 5xx, a retried 4xx (401, 429, ...), a timeout or a connection "
                "error, per reason (`http_503`, `timeout`, `connection`, ...).",
                ["reason"],
                registry=registry,
            ),
            batches=Counter(f"{PREFIX}_batches", "Batches delivered and committed.", registry=registry),
            batch_seconds=Histogram(
                f"{PREFIX}_batch_seconds",
                "Time from fetching a batch to committing it, retries included.",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
                registry=registry,
            ),
            batches_dropped=Counter(
                f"{PREFIX}_batches_dropped",
                "Batches given up uncommitted while retrying (every partition lost, or shutdown); read "
                "again later.",
                registry=registry,
            ),
            commit_failures=Counter(
                f"{PREFIX}_commit_failures",
                "Offset commits that failed after delivery (e.g. a rebalance): the statements are "
                "delivered again, which the LRS answers as already stored.",
                registry=registry,
            ),
            dead_letter_retries=Counter(
                f"{PREFIX}_dead_letter_retries",
                "Dead-letter produces tried again because Kafka did not acknowledge them.",
                registry=registry,
            ),
            assigned_partitions=Gauge(
                f"{PREFIX}_assigned_partitions",
                "Statement-topic partitions assigned to this process.",
                registry=registry,
            ),
            in_flight_batch_seconds=Gauge(
                f"{PREFIX}_in_flight_batch_seconds",
                "Age of the batch in flight (0 when none): grows while the LRS keeps failing.",
                registry=registry,
            ),
            partition_lag=Gauge(
                f"{PREFIX}_partition_lag",
                "Statements of an assigned partition not committed yet (log end minus committed offset).",
                ["topic", "partition"],
                registry=registry,
            ),
            group_lag=Gauge(
                f"{PREFIX}_group_lag",
                "Sum of partition_lag over the partitions assigned to this process.",
                registry=registry,
            ),
        )
