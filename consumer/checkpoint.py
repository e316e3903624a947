"""THE COMMIT POINT of the consumer, for both processing guarantees (CONSUMER_PROCESSING_GUARANTEE).

Each batch from the raw topic goes through the same four steps, in this order:

1. plan: route every record through the pure handlers (`consumer.plan.plan_batch`): the derived
   events, dead-letter and unrouted records to publish, and the offset after each partition's last
   record. Exactly-once also leaves out events whose ce_id the partition's dedup store holds.
2. publish: hand every record to Kafka without awaiting each one (`consumer.sender.queue_records`).
3. at-least-once (`AtLeastOnceCheckpoint`): await every acknowledgement, then commit the offsets.
   exactly-once (`ExactlyOnceCheckpoint`), per raw partition, in that partition's own transaction:
   await every acknowledgement, add the input offsets to the transaction
   (`send_offsets_to_transaction`), commit the transaction. The derived, dead-letter, unrouted and
   dedup-changelog records and the offsets become visible together, or not at all.
4. record outcomes: metrics and logs; exactly-once also the dedup store and where the partition
   continues.

With tracing on (`common.tracing`), step 1 starts each record's `consume` and `derive` spans, step 2
the `publish` spans and the derived records' trace headers (`consumer.plan.BatchTrace`), step 3 runs
in a `commit` span, and the consume spans end once their batch is committed (failed, with the
error's type, when it was abandoned, dropped or crashed).

Nothing is committed before every record of its batch is acknowledged. A failure before step 4
commits nothing: at-least-once re-publishes the batch with backoff (duplicates with the same ce_id,
never a loss); exactly-once abandons the transaction (it is aborted, or fenced by the partition's
next producer), acquires the partition again (`consumer.transactions`), rewinds to the committed
offset and retries with backoff.

No single webhook may stop its partition: step 1 dead-letters a webhook whose derived records would
not fit their topics (`OutputTooLarge`, from the max.message.bytes read at start-up). When the
broker still refuses records for good (`consumer.sender.is_rejection`: too large, invalid), retrying
cannot help: the batch is halved until the webhook whose outputs are refused is alone (exactly-once:
one transaction per part, the failed ones aborted; about 2 x log2(n) of them), and that webhook is
planned as a dead letter (`OutputRejected`). Broker and network errors are retried without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
)

from common import tracing as otel
from common.tracing import Tracing
from consumer.group import GroupMember
from consumer.metrics import ConsumerMetrics
from consumer.plan import BatchPlan, BatchTrace, OutgoingRecord, RawRecord, Rejections, plan_batch
from consumer.sender import (
    KeyPartitioner,
    PublishError,
    RecordSender,
    await_acks,
    is_rejection,
    publish_all,
    queue_records,
)
from consumer.settings import ConsumerSettings
from consumer.transactions import PartitionState, PartitionTransactions
from handlers import RoutingTable

log = structlog.get_logger("consumer")

Offsets = Mapping[tuple[str, int], int]
CommitOffsets = Callable[[Offsets], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]
# Which of these (topic, partition)s this member still owns (assigned, and still a group member).
Owned = Callable[[set[tuple[str, int]]], set[tuple[str, int]]]

# Reads the output topics' max.message.bytes again; True when a limit changed.
RefreshLimits = Callable[[], Awaitable[bool]]

# From this many failed publish attempts of one batch on, each failure is logged as an error.
ERROR_AFTER_ATTEMPTS = 10


async def _limits_unchanged() -> bool:
    return False


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
        tracing: Tracing = otel.NO_TRACING,
        output_limits: Mapping[str, int] | None = None,
        refresh_limits: RefreshLimits = _limits_unchanged,
    ) -> None:
        self._settings = settings
        self._table = table
        self._derived_topics = settings.derived_topics
        # Topic -> max.message.bytes, filled in by the start-up check (consumer.topics).
        self._output_limits = output_limits if output_limits is not None else {}
        self._refresh_limits = refresh_limits
        self._sender = sender
        self._commit = commit
        self._metrics = metrics
        self._owned = owned
        self._sleep = sleep
        self._tracing = tracing
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
        self._metrics.consumed.inc(len(records))
        try:
            return await self._process(records)
        finally:
            self._in_flight_since = None
            self.last_progress = time.monotonic()

    async def _process(self, records: Sequence[RawRecord], rejected: Rejections | None = None) -> bool:
        started = time.perf_counter()
        settings = self._settings
        plan = plan_batch(
            records,
            self._table,
            self._derived_topics,
            dlq_topic=settings.dlq_topic,
            unrouted_topic=settings.unrouted_topic,
            output_limits=self._output_limits,
            rejected=rejected,
            tracing=self._tracing,
            group_id=settings.group_id,
        )
        try:
            done = await self._publish_and_commit(records, plan, started, isolate=not rejected)
        except OutputsRejected as exc:
            plan.trace.finish(exc)
            return await self._after_rejection(records, exc)
        except BaseException as exc:  # a crash or a cancellation: the spans say so, then it goes on
            plan.trace.finish(exc)
            raise
        plan.trace.finish(None if done else "PartitionLost")
        return done

    async def _after_rejection(self, records: Sequence[RawRecord], exc: OutputsRejected) -> bool:
        """The broker refused records of the batch for good; nothing of it is committed.

        A topic's limit lowered since start-up: plan the batch again with the limits read now (a
        record that does not fit is then `OutputTooLarge`, batches are cut to fit). Else, one
        record: plan it again as a dead letter. Several: handle each half of them on its own
        (committed on its own; a half refused again is halved again), so only the webhook whose
        outputs are refused is dead-lettered, in about 2 x log2(n) publishes. Outputs of the others
        that were acknowledged already are published again (same ce_ids).
        """
        self._metrics.outputs_rejected.inc()
        if exc.limits_changed:
            return await self._process(records)
        if len(records) == 1:
            record = records[0]
            return await self._process(records, {(record.partition, record.offset): exc.reason})
        log.warning(
            "outputs_rejected",
            hint="the broker refused records for good; handling each half of the batch on its own",
            reason=exc.reason,
            offsets=_offset_ranges(records),
        )
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            if not await self._process(half):
                return False
        return True

    async def _publish_and_commit(
        self, records: Sequence[RawRecord], plan: BatchPlan, started: float, *, isolate: bool = True
    ) -> bool:
        """Publish until acknowledged (retrying with backoff), then commit.

        A publish the broker refused for good reads the output topics' limits again; it raises
        `OutputsRejected` when one changed, or with `isolate`; else (the dead letter of a refused
        record, refused too) it is retried like any error.
        """
        settings, metrics = self._settings, self._metrics
        for seconds in plan.handler_seconds:
            metrics.handler_seconds.observe(seconds)
        ranges = _offset_ranges(records)
        # Queued as they are from now on, retries included: a retried record keeps its traceparent.
        outgoing = plan.trace.start_publish(plan.outgoing)

        attempt = 0
        while True:
            try:
                await publish_all(self._sender, outgoing)
                break
            except Exception as exc:  # any publish failure: keep the batch, retry it
                if is_rejection(exc):
                    changed = await self._refresh_limits()
                    if isolate or changed:
                        raise OutputsRejected(exc, limits_changed=changed) from exc
                attempt += 1
                delay = backoff_delay(
                    attempt, settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
                )
                metrics.publish_retries.inc()
                level = log.error if attempt >= ERROR_AFTER_ATTEMPTS else log.warning
                level(
                    "publish_failed",
                    hint="batch not committed; retrying with backoff",
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
                        "batch_dropped",
                        hint="this member no longer owns the batch's partitions; their new owner "
                        "reads them again",
                        attempt=attempt,
                        offsets=ranges,
                    )
                    return False

        plan.trace.published()
        record_outcomes(plan, self._metrics)
        await self._commit_or_warn(plan.next_offsets, ranges, plan.trace)
        metrics.batches.inc()
        metrics.batch_seconds.observe(time.perf_counter() - started)
        log.info(
            "batch_committed",
            records=len(records),
            offsets=ranges,
            emitted=sum(plan.emitted.values()),
            dead_lettered=sum(plan.dead_lettered.values()),
            unrouted=plan.count("unrouted"),
            revoked=plan.count("revoked"),
            publish_attempts=attempt + 1,
        )
        return True

    async def _commit_or_warn(self, offsets: Offsets, ranges: dict[str, str], trace: BatchTrace) -> None:
        """Commit; a failure only costs redelivery (outputs are already acknowledged), so never crash."""
        try:
            with trace.committing({otel.MESSAGING_DESTINATION_NAME: self._settings.raw_topic}):
                await self._commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            trace.finish(exc)  # published, but read and traced again by whoever commits them
            self._metrics.commit_failures.inc()
            log.warning(
                "commit_failed",
                hint="after publishing; these inputs will be redelivered (same ce_id)",
                error=repr(exc)[:500],
                offsets=ranges,
            )


class Checkpoint(Protocol):
    """Handles one batch of raw records from start to commit; only cancellation escapes."""

    async def commit(self, records: Sequence[RawRecord]) -> None: ...

    def in_flight_seconds(self) -> float: ...

    @property
    def last_progress(self) -> float: ...


class AtLeastOnceCheckpoint:
    """At-least-once: publish, await every acknowledgement, then commit the batch's offsets.

    Around `BatchProcessor` (steps 1-4): the offset guard, which rewinds a batch that starts past
    unhandled records, and a safety net that rewinds a batch whose handling crashed (a bug), so it
    is read again rather than skipped by the next commit.
    """

    def __init__(
        self,
        *,
        settings: ConsumerSettings,
        processor: BatchProcessor,
        guard: OffsetGuard,
        member: GroupMember,
        metrics: ConsumerMetrics,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._guard = guard
        self._member = member
        self._metrics = metrics
        self._sleep = sleep
        self._failures = 0

    def in_flight_seconds(self) -> float:
        """How long the batch in flight has been running (0 when none is)."""
        return self._processor.in_flight_seconds()

    @property
    def last_progress(self) -> float:
        """time.monotonic() when the last batch was finished (committed or dropped)."""
        return self._processor.last_progress

    async def commit(self, records: Sequence[RawRecord]) -> None:
        """Steps 1-4 for one batch (see the module docstring)."""
        settings, metrics = self._settings, self._metrics
        try:
            gaps = await self._guard.gaps(records)
            if gaps:
                # Records before this batch were never handled (FastStream dropped a batch before
                # our handler ran): committing this one would skip them. Read them first.
                metrics.gap_rewinds.inc()
                log.error(
                    "batch_gap_rewind",
                    hint="the batch starts past unhandled records; rewinding to read them first",
                    rewind_to={f"{tp.topic}/{tp.partition}": offset for tp, offset in gaps.items()},
                )
                self._member.seek_or_die(gaps)
                return
            if await self._processor.process(records):
                self._guard.handled(records)
            else:
                self._guard.drop(records)
                self._member.seek_or_die(earliest_offsets(records))
            self._failures = 0
        except Exception:
            # A bug outside the per-record guard. FastStream would fetch on, and the next commit
            # would skip this batch: rewind its partitions instead, so it is read again.
            self._failures += 1
            metrics.batch_failures.inc()
            log.exception("batch_handling_crashed", hint="rewinding to re-read it", records=len(records))
            self._guard.drop(records)
            self._member.seek_or_die(earliest_offsets(records))
            await self._sleep(
                backoff_delay(
                    self._failures, settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
                )
            )


class PartitionLost(Exception):
    """This member no longer owns the partition (revoked, or evicted from the group)."""


class OutputsRejected(Exception):
    """The broker refused records of a batch for good (`consumer.sender.is_rejection`)."""

    def __init__(self, error: BaseException, *, limits_changed: bool = False) -> None:
        super().__init__(str(error))
        cause = error.__cause__ or error
        self.reason = f"the broker refused a derived record: {type(cause).__name__}"
        # The output topics' limits were read again and one had changed: plan again against them.
        self.limits_changed = limits_changed


class ExactlyOnceCheckpoint:
    """Exactly-once: per raw partition of a batch, one transaction for its outputs and its offsets.

    For each partition (partitions run concurrently, each on its own producer):
    - acquire the partition if needed (`PartitionTransactions.ready`); skip records before its
      committed offset, rewind a batch that starts after it;
    1. plan, leaving out events whose ce_id the partition's dedup store holds;
    2. begin the transaction; queue the outputs and the new ce_ids' changelog records;
    3. await every acknowledgement, `send_offsets_to_transaction`, check the partition is still ours,
       commit the transaction; all within the batch deadline (half the transaction timeout);
    4. record outcomes: the dedup store learns the new ids, the partition continues after the batch.
    Any failure before step 4 abandons the transaction (aborted, bounded; a fenced or undecided one
    is left to the partition's next producer, which aborts or completes it), drops the producer so
    the partition is acquired afresh, rewinds to the first unhandled record and waits with backoff.
    """

    def __init__(
        self,
        *,
        settings: ConsumerSettings,
        table: RoutingTable,
        partitions: PartitionTransactions,
        member: GroupMember,
        metrics: ConsumerMetrics,
        clock: Callable[[], float] = time.time,
        tracing: Tracing = otel.NO_TRACING,
        output_limits: Mapping[str, int] | None = None,
        partitioner: KeyPartitioner | None = None,
        refresh_limits: RefreshLimits = _limits_unchanged,
    ) -> None:
        self._settings = settings
        self._table = table
        self._derived_topics = settings.derived_topics
        # Topic -> max.message.bytes, filled in by the start-up check (consumer.topics).
        self._output_limits = output_limits if output_limits is not None else {}
        self._partitions = partitions
        self._member = member
        self._metrics = metrics
        self._clock = clock
        self._tracing = tracing
        self._partitioner = partitioner or KeyPartitioner()
        self._refresh_limits = refresh_limits
        self._in_flight_since: float | None = None
        self._interrupted = asyncio.Event()
        self.last_progress = time.monotonic()

    def in_flight_seconds(self) -> float:
        """How long the batch in flight has been running (0 when none is)."""
        since = self._in_flight_since
        return 0.0 if since is None else time.monotonic() - since

    def interrupt(self) -> None:
        """A rebalance is starting: end backoff waits now, so the in-flight batch finishes quickly."""
        self._interrupted.set()

    def resume(self) -> None:
        """The rebalance is over: backoff waits wait again."""
        self._interrupted.clear()

    async def commit(self, records: Sequence[RawRecord]) -> None:
        """Steps 1-4 for each raw partition of the batch, concurrently (see the class docstring)."""
        if not records:
            return
        self._in_flight_since = time.monotonic()
        try:
            self._metrics.consumed.inc(len(records))
            by_partition: dict[TopicPartition, list[RawRecord]] = {}
            for record in records:
                by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
            await asyncio.gather(*(self._commit_partition(tp, recs) for tp, recs in by_partition.items()))
        finally:
            self._in_flight_since = None
            self.last_progress = time.monotonic()

    async def _commit_partition(self, tp: TopicPartition, records: list[RawRecord]) -> None:
        state = await self._partitions.ready(tp)
        if state is None:
            if self._member.owned({tp}):
                # Acquiring failed (the broker away): read these records again after a pause.
                self._member.seek_or_die({tp: records[0].offset})
                await self._backoff(self._partitions.failures(tp))
            else:
                self._metrics.batches_dropped.inc()
                log.info(
                    "partition_not_owned", hint="its records are left to its new owner", partition=_name(tp)
                )
            return
        unhandled = self._unhandled(state, records)
        while unhandled:
            chunk = _next_chunk(state, unhandled)
            if not await self._commit_records(state, chunk):
                return
            unhandled = unhandled[len(chunk) :]
            if state.isolate_through is not None and chunk[-1].offset >= state.isolate_through:
                state.isolate_through = None

    async def _commit_records(self, state: PartitionState, unhandled: list[RawRecord]) -> bool:
        """Steps 1-4 for records of one partition; False when the transaction was abandoned."""
        tp = state.tp
        started = time.perf_counter()
        settings = self._settings
        plan = plan_batch(
            unhandled,
            self._table,
            self._derived_topics,
            dlq_topic=settings.dlq_topic,
            unrouted_topic=settings.unrouted_topic,
            published=state.store,
            output_limits=self._output_limits,
            rejected=state.rejected or None,
            tracing=self._tracing,
            group_id=settings.group_id,
        )
        for seconds in plan.handler_seconds:
            self._metrics.handler_seconds.observe(seconds)
        next_offset = unhandled[-1].offset + 1
        try:
            async with asyncio.timeout(settings.transaction_deadline_seconds):
                changelog_end = await self._transact(state, plan, next_offset)
        except BaseException as exc:
            plan.trace.finish(exc)  # the records are read, planned and traced again
            if not isinstance(exc, Exception):
                raise
            await self._abandon(state, exc, unhandled)
            return False
        plan.trace.finish()
        # 4. Committed: the outputs, the changelog records and the offsets are visible together.
        state.next_offset = next_offset
        state.failures = 0
        if state.rejected:
            state.rejected = {key: why for key, why in state.rejected.items() if key[1] >= next_offset}
        now_ms = int(self._clock() * 1000)
        state.store.add((key for key, _, _ in plan.new_ids), now_ms)
        if changelog_end is not None:
            state.store.changelog_position = max(state.store.changelog_position, changelog_end)
        state.store.expire(now_ms)
        self._partitions.bound_stores()
        self._metrics.transactions.inc()
        self._metrics.batches.inc()
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        record_outcomes(plan, self._metrics)
        log.info(
            "transaction_committed",
            partition=_name(tp),
            offsets=f"{unhandled[0].offset}-{unhandled[-1].offset}",
            records=len(unhandled),
            emitted=sum(plan.emitted.values()),
            duplicates=sum(plan.duplicates.values()),
            dead_lettered=sum(plan.dead_lettered.values()),
            unrouted=plan.count("unrouted"),
            revoked=plan.count("revoked"),
        )
        return True

    def _unhandled(self, state: PartitionState, records: list[RawRecord]) -> list[RawRecord]:
        """The records to handle: none before the partition's committed offset, none after a gap."""
        expected = state.next_offset
        if expected is None:  # nothing was ever committed: wherever the fetch starts is the beginning
            return records
        fresh = [record for record in records if record.offset >= expected]
        if len(fresh) < len(records):
            # Committed already (by this member before a re-acquire, or by an earlier owner).
            self._metrics.stale_records_skipped.inc(len(records) - len(fresh))
        if fresh and fresh[0].offset > expected and state.rewound_to != expected:
            # Records between the committed offset and this batch were not handled: read them first.
            # A gap still there after one rewind holds no records (retention, transaction markers).
            state.rewound_to = expected
            self._metrics.gap_rewinds.inc()
            log.warning(
                "batch_gap_rewind",
                hint="the batch starts past the committed offset; rewinding to read the records between",
                partition=_name(state.tp),
                committed=expected,
                first=fresh[0].offset,
            )
            self._member.seek_or_die({state.tp: expected})
            return []
        return fresh

    async def _transact(self, state: PartitionState, plan: BatchPlan, next_offset: int) -> int | None:
        """Steps 2-3: one transaction; returns the changelog offset after its last record (if any)."""
        producer = state.producer.current
        if producer is None:
            raise PublishError("the partition's producer is gone")
        await producer.begin_transaction()
        outgoing = plan.trace.start_publish(plan.outgoing)
        futures = await queue_records(
            producer, outgoing, self._partitioner, state.producer.watch, self._output_limits
        )
        changelog = [
            OutgoingRecord(
                self._settings.dedup_topic, ce_id.encode(), ce_type.encode(), (), state.tp.partition
            )
            for _, ce_id, ce_type in plan.new_ids
        ]
        changelog_futures = await queue_records(
            producer, changelog, self._partitioner, state.producer.watch, self._output_limits
        )
        await await_acks([*futures, *changelog_futures])
        plan.trace.published()
        with plan.trace.committing(
            {
                otel.MESSAGING_DESTINATION_NAME: state.tp.topic,
                otel.MESSAGING_DESTINATION_PARTITION_ID: str(state.tp.partition),
                "exam_events.transactional_id": self._settings.transactional_id(state.tp.partition),
            }
        ):
            await producer.send_offsets_to_transaction({state.tp: next_offset}, self._settings.group_id)
            if not self._member.owned({state.tp}):
                raise PartitionLost(f"{_name(state.tp)} was revoked before its transaction committed")
            await producer.commit_transaction()
        if not changelog_futures:
            return None
        # One writer per changelog partition (this producer), so the transaction's records are
        # contiguous: the position after them is the first batch's base offset plus their count.
        return int(changelog_futures[0].result().offset) + len(changelog)

    async def _abandon(self, state: PartitionState, exc: BaseException, records: list[RawRecord]) -> None:
        """Nothing of the transaction is committed: end it, acquire the partition afresh, rewind."""
        tp = state.tp
        fenced = _is_fenced(exc)
        producer = state.producer.current
        if not fenced and producer is not None:
            try:
                # Bounded: with the broker away the abort would wait for it. An abort that fails
                # leaves the transaction to the next producer of this id, which aborts it.
                async with asyncio.timeout(5.0):
                    await producer.abort_transaction()
            except BaseException as abort_error:  # aiokafka asserts on invalid states
                if isinstance(abort_error, asyncio.CancelledError):
                    raise
                log.info(
                    "transaction_abort_incomplete",
                    hint="the next producer of the partition ends it",
                    error=repr(abort_error)[:200],
                )
        # After the abort: reading the limits again must not hold the transaction open.
        retry_now = await self._note_rejection(state, exc, records)
        reason = (
            "fenced"
            if fenced
            else "lost"
            if isinstance(exc, PartitionLost)
            else "rejected"
            if retry_now
            else "error"
        )
        self._metrics.transactions_aborted.labels(reason=reason).inc()
        self._partitions.lost(state, f"transaction abandoned ({reason}): {exc!r}"[:300])
        state.failures += 1
        if fenced:
            self._metrics.producers_fenced.inc()
            log.warning(
                "producer_fenced",
                hint="a newer producer of this partition exists (its next owner), or the broker timed "
                "the transaction out; the work is dropped uncommitted",
                partition=_name(tp),
                offsets=f"{records[0].offset}-{records[-1].offset}",
            )
        if not self._member.owned({tp}):
            log.info("partition_not_owned", hint="transaction abandoned", partition=_name(tp))
            return
        level = log.error if state.failures >= ERROR_AFTER_ATTEMPTS and not retry_now else log.warning
        level(
            "transaction_abandoned",
            hint="the broker refused records for good; handling them again in halves, one transaction each"
            if retry_now
            else "nothing committed; rewinding and retrying",
            partition=_name(tp),
            error=repr(exc)[:500],
            offsets=f"{records[0].offset}-{records[-1].offset}",
            attempt=state.failures,
        )
        self._member.seek_or_die({tp: records[0].offset})
        if retry_now:
            state.failures = 0  # no retry of the same records: they are handled otherwise now
        else:
            await self._backoff(state.failures)

    async def _note_rejection(
        self, state: PartitionState, exc: BaseException, records: list[RawRecord]
    ) -> bool:
        """When the broker refused records for good, say how they are handled next; True if so.

        A topic's limit lowered since start-up: planned again with the limits read now. Else several
        records: in halves from now on, up to the last of them. One record: planned as a dead letter
        next time. A dead letter refused too is retried like any error (False).
        """
        if not is_rejection(exc):
            return False
        self._metrics.outputs_rejected.inc()
        if await self._refresh_limits():
            return True
        if len(records) > 1:
            # Halve the suspects: the refused record is found in about 2 x log2(n) transactions.
            state.isolate_through = records[-1].offset
            state.isolate_size = max(1, len(records) // 2)
            return True
        key = (state.tp.partition, records[0].offset)
        if key in state.rejected:
            return False
        state.rejected[key] = OutputsRejected(exc).reason
        return True

    async def _backoff(self, failures: int) -> None:
        """Wait before retrying; a starting rebalance ends the wait at once."""
        settings = self._settings
        delay = backoff_delay(
            max(1, failures), settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
        )
        self._metrics.publish_retries.inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupted.wait(), delay)


def _next_chunk(state: PartitionState, unhandled: list[RawRecord]) -> list[RawRecord]:
    """The records of the next transaction: all of them, unless the broker refused records of this
    partition for good; then at most `isolate_size` of the suspects (those up to `isolate_through`)."""
    through = state.isolate_through
    if through is None or unhandled[0].offset > through:
        return unhandled
    suspects = [record for record in unhandled if record.offset <= through]
    return suspects[: state.isolate_size]


def _is_fenced(exc: BaseException) -> bool:
    """True when the producer was fenced (or its transaction timed out and its epoch was bumped)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProducerFenced | InvalidProducerEpoch):
            return True
        seen = seen.__cause__
    return False


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


def earliest_offsets(records: Sequence[RawRecord]) -> dict[TopicPartition, int]:
    """Partition -> first offset of the batch's records there."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    return earliest


def record_outcomes(plan: BatchPlan, metrics: ConsumerMetrics) -> None:
    """Count and log what happened to each record, now that Kafka has it (never a body)."""
    for event_type, count in plan.emitted.items():
        metrics.emitted.labels(type=event_type).inc(count)
    for event_type, count in plan.duplicates.items():
        metrics.duplicates_suppressed.labels(type=event_type).inc(count)
    for error_type, count in plan.dead_lettered.items():
        metrics.dead_lettered.labels(error_type=error_type).inc(count)
    # Most records emitted events and said so only at DEBUG: at other levels they cost nothing here.
    debug = log.is_enabled_for(logging.DEBUG)
    for outcome in plan.outcomes:
        if outcome.kind == "emitted" and outcome.conflicting_event_name is None and not debug:
            continue
        coordinates = {
            "topic": outcome.source.topic,
            "partition": outcome.source.partition,
            "offset": outcome.source.offset,
            "event_name": outcome.event_name,
        }
        if outcome.conflicting_event_name is not None:
            metrics.event_name_conflicts.inc()
            log.warning(
                "event_name_conflict",
                hint="meta.eventName differs from the subscription URL's event name; routed by "
                "meta.eventName (check the platform's subscription)",
                header_event_name=outcome.conflicting_event_name,
                **coordinates,
            )
        if outcome.kind == "emitted":
            log.debug("events_emitted", ce_ids=list(outcome.ce_ids), **coordinates)
        elif outcome.kind == "duplicate":
            log.info(
                "duplicate_events_suppressed",
                hint="published before (same ce_ids); not published again",
                **coordinates,
            )
        elif outcome.kind == "revoked":
            metrics.revoked.inc()
            log.info("attempt_revoked", hint="no events", **coordinates)
        elif outcome.kind == "unrouted":
            metrics.unrouted.inc()
            log.warning(
                "record_unrouted",
                hint="no handler; sent to the unrouted topic",
                reason=outcome.detail,
                **coordinates,
            )
        else:
            log.warning(
                "record_dead_lettered",
                hint="invalid webhook; sent to the dead-letter topic",
                error_type=outcome.detail,
                **coordinates,
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
            "partitions_revoked_in_flight",
            hint="partitions were revoked while their batch was in flight; their new owner re-reads them",
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
        *,
        before_wait: Callable[[], None] = lambda: None,
        after_revoke: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
        after_assign: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
    ) -> None:
        self._wait_seconds = wait_seconds
        self._metrics = metrics
        self._on_assigned = on_assigned
        self._before_wait = before_wait
        self._after_revoke = after_revoke
        self._after_assign = after_assign
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
        self._before_wait()
        if not self._idle.is_set():
            log.info(
                "rebalance_waiting",
                hint="waiting for the in-flight batch to commit",
                wait_seconds=self._wait_seconds,
            )
            try:
                await asyncio.wait_for(self._idle.wait(), self._wait_seconds)
            except TimeoutError:
                log.warning(
                    "rebalance_wait_timed_out",
                    hint="the in-flight batch is still running; its inputs may be redelivered",
                )
        if self._after_revoke is not None:
            await self._after_revoke(revoked)
        self._metrics.assigned_partitions.set(0)
        if revoked:
            log.info("partitions_revoked", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Called by aiokafka after a rebalance."""
        self._on_assigned()
        if self._after_assign is not None:
            await self._after_assign(assigned)
        self._metrics.assignments.inc()
        self._metrics.assigned_partitions.set(len(assigned))
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


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
