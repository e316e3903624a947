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
    event_name_conflicts: Counter
    revoked: Counter
    handler_seconds: Histogram
    batch_seconds: Histogram
    batches: Counter
    publish_retries: Counter
    outputs_rejected: Counter
    partitioner_cache_bytes: Gauge
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
    transactions: Counter
    transactions_aborted: Counter
    producers_fenced: Counter
    acquire_failures: Counter
    stale_records_skipped: Counter
    duplicates_suppressed: Counter
    dedup_entries: Gauge
    dedup_bytes: Gauge
    dedup_forgotten_early: Counter
    dedup_restore_seconds: Histogram
    partition_lag: Gauge
    group_lag: Gauge

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
            event_name_conflicts=Counter(
                f"{PREFIX}_event_name_conflicts",
                "Raw records whose meta.eventName differs from their event-name header (the "
                "subscription URL's event name); routed by meta.eventName.",
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
            outputs_rejected=Counter(
                f"{PREFIX}_outputs_rejected",
                "Publishes the broker refused for good (record too large or invalid): the records are "
                "handled again in halves until the refused webhook is alone; it is dead-lettered "
                "(OutputRejected).",
                registry=registry,
            ),
            partitioner_cache_bytes=Gauge(
                f"{PREFIX}_partitioner_cache_bytes",
                "Bytes held by the partitioner's key-hash cache (bounded: consumer.sender.KeyPartitioner).",
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
            transactions=Counter(
                f"{PREFIX}_transactions_committed",
                "Exactly-once: transactions committed (one per raw partition of a batch).",
                registry=registry,
            ),
            transactions_aborted=Counter(
                f"{PREFIX}_transactions_aborted",
                "Exactly-once: transactions abandoned uncommitted (broker error, timeout, lost partition); "
                "their records are read again.",
                ["reason"],
                registry=registry,
            ),
            producers_fenced=Counter(
                f"{PREFIX}_producers_fenced",
                "Exactly-once: transactions refused because a newer producer of the partition (its next "
                "owner) fenced ours, or the broker timed the transaction out.",
                registry=registry,
            ),
            acquire_failures=Counter(
                f"{PREFIX}_partition_acquire_failures",
                "Exactly-once: failed attempts to start a partition's producer, read its committed offset "
                "or restore its dedup store.",
                registry=registry,
            ),
            stale_records_skipped=Counter(
                f"{PREFIX}_stale_records_skipped",
                "Exactly-once: fetched records before the partition's committed offset (already committed "
                "by this member or an earlier owner), skipped.",
                registry=registry,
            ),
            duplicates_suppressed=Counter(
                f"{PREFIX}_duplicates_suppressed",
                "Exactly-once: derived events not published again because their ce_id was published "
                "within the dedup window (a webhook posted twice), per type.",
                ["type"],
                registry=registry,
            ),
            dedup_bytes=Gauge(
                f"{PREFIX}_dedup_bytes",
                "Exactly-once: memory of this member's dedup stores (entries x bytes per entry); at most "
                "CONSUMER_DEDUP_MAX_BYTES.",
                registry=registry,
            ),
            dedup_forgotten_early=Counter(
                f"{PREFIX}_dedup_forgotten_early",
                "Exactly-once: ids forgotten before their window ended because the stores reached "
                "CONSUMER_DEDUP_MAX_BYTES; a re-post of such a webhook is published again.",
                registry=registry,
            ),
            dedup_entries=Gauge(
                f"{PREFIX}_dedup_entries",
                "Exactly-once: ce_ids held by this process's dedup stores.",
                registry=registry,
            ),
            dedup_restore_seconds=Histogram(
                f"{PREFIX}_dedup_restore_seconds",
                "Exactly-once: time to bring a partition's dedup store up to date from its changelog.",
                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                registry=registry,
            ),
            partition_lag=Gauge(
                f"{PREFIX}_partition_lag",
                "Records of an assigned raw partition not committed yet: log end (last stable offset) "
                "minus the committed offset; refreshed every few seconds.",
                ["topic", "partition"],
                registry=registry,
            ),
            group_lag=Gauge(
                f"{PREFIX}_group_lag",
                "Sum of partition_lag over the partitions assigned to this process (sum over instances "
                "for the group's lag).",
                registry=registry,
            ),
        )
