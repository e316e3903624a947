"""At-least-once handling of one batch: route, publish everything, await every ack, then commit.

Commit points are ours (AckPolicy.MANUAL): FastStream's policies either skip a failed batch or
retry it in a tight loop. A batch is committed only after every record it led to is acknowledged
by Kafka; a broker error leaves it uncommitted and re-publishes the whole batch with backoff, so its
partitions never skip a record. Handlers are pure and event ids deterministic, so a re-publish
gives the same records again (duplicates with identical `ce_id`, never a loss).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumer.metrics import ConsumerMetrics
from consumer.plan import BatchPlan, RawRecord, plan_batch
from consumer.sender import RecordSender, publish_all
from consumer.settings import ConsumerSettings
from handlers import RoutingTable

log = structlog.get_logger("consumer")

Offsets = Mapping[tuple[str, int], int]
CommitOffsets = Callable[[Offsets], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]
# Which of these (topic, partition)s this member still owns (assigned, and still a group member).
Owned = Callable[[set[tuple[str, int]]], set[tuple[str, int]]]

# From this many failed publish attempts of one batch on, each failure is logged as an error.
ERROR_AFTER_ATTEMPTS = 10


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): doubling from `initial`, capped."""
    return float(min(maximum, initial * 2 ** min(attempt - 1, 62)))


class BatchProcessor:
    """Handles batches one at a time; exactly one batch is in flight, so its offsets are the commit."""

    def __init__(
        self,
        *,
        settings: ConsumerSettings,
        table: RoutingTable,
        sender: RecordSender,
        commit: CommitOffsets,
        metrics: ConsumerMetrics,
        owned: Owned = lambda partitions: partitions,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._table = table
        self._derived_topics = settings.derived_topics
        self._sender = sender
        self._commit = commit
        self._metrics = metrics
        self._owned = owned
        self._sleep = sleep
        self._in_flight_since: float | None = None
        self.last_progress = time.monotonic()

    def in_flight_seconds(self) -> float:
        """How long the batch in flight has been running (0 when none is)."""
        since = self._in_flight_since
        return 0.0 if since is None else time.monotonic() - since

    async def process(self, records: Sequence[RawRecord]) -> bool:
        """Route, publish until acknowledged, then commit. Only cancellation escapes.

        Returns False when the batch was dropped uncommitted because this member no longer owns any of
        its partitions (evicted from the group while retrying): their new owner reads them again.
        """
        if not records:
            return True
        self._in_flight_since = time.monotonic()
        try:
            return await self._process(records)
        finally:
            self._in_flight_since = None
            self.last_progress = time.monotonic()

    async def _process(self, records: Sequence[RawRecord]) -> bool:
        started = time.perf_counter()
        settings, metrics = self._settings, self._metrics
        plan = plan_batch(
            records,
            self._table,
            self._derived_topics,
            dlq_topic=settings.dlq_topic,
            unrouted_topic=settings.unrouted_topic,
        )
        metrics.consumed.inc(len(records))
        for seconds in plan.handler_seconds:
            metrics.handler_seconds.observe(seconds)
        ranges = _offset_ranges(records)

        attempt = 0
        while True:
            try:
                await publish_all(self._sender, plan.outgoing)
                break
            except Exception as exc:  # any publish failure: keep the batch, retry it
                attempt += 1
                delay = backoff_delay(
                    attempt, settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
                )
                metrics.publish_retries.inc()
                level = log.error if attempt >= ERROR_AFTER_ATTEMPTS else log.warning
                level(
                    "publish failed; batch not committed, retrying",
                    error=repr(exc)[:500],
                    attempt=attempt,
                    retry_in_seconds=delay,
                    in_flight_seconds=round(self.in_flight_seconds(), 1),
                    records=len(plan.outgoing),
                    offsets=ranges,
                )
                await self._sleep(delay)
                partitions = {(record.topic, record.partition) for record in records}
                if not self._owned(partitions):
                    metrics.batches_dropped.inc()
                    log.warning(
                        "this member no longer owns the batch's partitions; dropped uncommitted, "
                        "their new owner reads them again",
                        attempt=attempt,
                        offsets=ranges,
                    )
                    return False

        self._record_outcomes(plan)
        await self._commit_or_warn(plan.next_offsets, ranges)
        metrics.batches.inc()
        metrics.batch_seconds.observe(time.perf_counter() - started)
        log.info(
            "batch committed",
            records=len(records),
            offsets=ranges,
            emitted=sum(plan.emitted.values()),
            dead_lettered=sum(plan.dead_lettered.values()),
            unrouted=plan.count("unrouted"),
            revoked=plan.count("revoked"),
            publish_attempts=attempt + 1,
        )
        return True

    async def _commit_or_warn(self, offsets: Offsets, ranges: dict[str, str]) -> None:
        """Commit; a failure only costs redelivery (outputs are already acknowledged), so never crash."""
        try:
            await self._commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            self._metrics.commit_failures.inc()
            log.warning(
                "commit failed after publishing; these inputs will be redelivered (same ce_id)",
                error=repr(exc)[:500],
                offsets=ranges,
            )

    def _record_outcomes(self, plan: BatchPlan) -> None:
        """Count and log what happened to each record, now that Kafka has acknowledged it."""
        metrics = self._metrics
        for event_type, count in plan.emitted.items():
            metrics.emitted.labels(type=event_type).inc(count)
        for error_type, count in plan.dead_lettered.items():
            metrics.dead_lettered.labels(error_type=error_type).inc(count)
        for outcome in plan.outcomes:
            coordinates = {
                "topic": outcome.source.topic,
                "partition": outcome.source.partition,
                "offset": outcome.source.offset,
                "event_name": outcome.event_name,
            }
            if outcome.kind == "emitted":
                log.debug("events emitted", ce_ids=list(outcome.ce_ids), **coordinates)
            elif outcome.kind == "revoked":
                metrics.revoked.inc()
                log.info("attempt revoked; no events", **coordinates)
            elif outcome.kind == "unrouted":
                metrics.unrouted.inc()
                log.warning("no handler; sent to unrouted topic", reason=outcome.detail, **coordinates)
            else:
                log.warning(
                    "invalid webhook; sent to dead-letter topic", error_type=outcome.detail, **coordinates
                )


def _offset_ranges(records: Sequence[RawRecord]) -> dict[str, str]:
    """`topic/partition` -> `first-last` offsets of the batch, for logs."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for record in records:
        name = f"{record.topic}/{record.partition}"
        first.setdefault(name, record.offset)
        last[name] = record.offset
    return {name: f"{first[name]}-{last[name]}" for name in first}


async def commit_assigned(consumer: Any, offsets: Offsets) -> None:
    """Commit the offsets of partitions this consumer still owns.

    Explicit offsets, not `KafkaMessage.ack()`: ack commits every consumed position, which is right only
    while one batch is in flight; naming the batch's own offsets keeps that true by construction.
    A partition revoked meanwhile belongs to another member now, which re-reads it from its commit.
    """
    assigned = consumer.assignment()
    owned = {
        tp: offset
        for (topic, partition), offset in offsets.items()
        if (tp := TopicPartition(topic, partition)) in assigned
    }
    if len(owned) < len(offsets):
        log.warning(
            "partitions were revoked while their batch was in flight; their new owner re-reads them",
            revoked=sorted(f"{t}/{p}" for (t, p) in offsets if TopicPartition(t, p) not in owned),
        )
    if owned:
        await consumer.commit(owned)


class InFlightBatch(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Tracks the batch in flight; a rebalance waits (bounded) for it to commit before giving partitions up.

    aiokafka rebalances in the background; without this wait a batch finishing mid-rebalance could
    not commit, and its records would be handled twice.
    """

    def __init__(
        self,
        wait_seconds: float,
        metrics: ConsumerMetrics,
        on_assigned: Callable[[], None] = lambda: None,
    ) -> None:
        self._wait_seconds = wait_seconds
        self._metrics = metrics
        self._on_assigned = on_assigned
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Mark a batch as in flight for the duration of the block."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called by aiokafka before a rebalance: let the in-flight batch commit first."""
        if not self._idle.is_set():
            log.info("rebalance: waiting for the in-flight batch to commit", wait_seconds=self._wait_seconds)
            try:
                await asyncio.wait_for(self._idle.wait(), self._wait_seconds)
            except TimeoutError:
                log.warning("rebalance: in-flight batch still running; its inputs may be redelivered")
        self._metrics.assigned_partitions.set(0)
        if revoked:
            log.info("partitions revoked", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Called by aiokafka after a rebalance."""
        self._on_assigned()
        self._metrics.assignments.inc()
        self._metrics.assigned_partitions.set(len(assigned))
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


CommittedOffset = Callable[[TopicPartition], Awaitable[int | None]]


class OffsetGuard:
    """Refuses a batch that starts past where the previous batch of its partition ended.

    FastStream swallows errors raised before our handler runs (a middleware, the parser): the fetch
    position has then moved past records nobody handled, and the next commit would skip them. The
    guard remembers, per partition, the offset after the last handled batch (or, after an assignment,
    the committed offset) and reports a batch that starts later, so the handler rewinds instead.
    Offsets without records (transaction markers, compaction) also leave gaps: a gap still there after
    one rewind to the same offset is accepted.
    """

    def __init__(self, committed: CommittedOffset) -> None:
        self._committed = committed
        self._next: dict[TopicPartition, int | None] = {}
        self._rewound: dict[TopicPartition, int] = {}

    def forget(self) -> None:
        """After an assignment: positions restart from the committed offsets, expectations too."""
        self._next.clear()
        self._rewound.clear()

    async def gaps(self, records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
        """Partition -> offset the batch should have started at, for each partition it starts past."""
        found: dict[TopicPartition, int] = {}
        for tp, (first, _last) in _partition_spans(records).items():
            if tp not in self._next:
                try:
                    self._next[tp] = await self._committed(tp)
                except Exception:  # no expectation is the old behaviour, not a reason to fail the batch
                    self._next[tp] = None
            expected = self._next[tp]
            if expected is not None and first > expected and self._rewound.get(tp) != expected:
                found[tp] = expected
        self._rewound.update(found)
        return found

    def handled(self, records: Sequence[RawRecord]) -> None:
        """The batch was handled: each of its partitions continues after its last record."""
        for tp, (_first, last) in _partition_spans(records).items():
            self._next[tp] = last + 1
            self._rewound.pop(tp, None)

    def drop(self, records: Sequence[RawRecord]) -> None:
        """The batch was not handled (rewound): expect its partitions to restart where it started."""
        for tp, (first, _last) in _partition_spans(records).items():
            if self._next.get(tp) is None or first < (self._next[tp] or 0):
                self._next[tp] = first


def _partition_spans(records: Sequence[RawRecord]) -> dict[TopicPartition, tuple[int, int]]:
    """Partition -> (first, last) offset of the batch's records."""
    spans: dict[TopicPartition, tuple[int, int]] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        first, last = spans.get(tp, (record.offset, record.offset))
        spans[tp] = (min(first, record.offset), max(last, record.offset))
    return spans
