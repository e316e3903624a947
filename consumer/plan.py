"""Turn one batch of raw records into the records to publish and the offsets to commit.

Pure: no broker, no clock beyond measuring handler time. The I/O around it is in `consumer.checkpoint`.
With tracing on (`common.tracing`), planning also starts each raw record's `consume` span and times
its `derive` span; `BatchTrace` then starts the `publish` spans, adds the trace headers to the derived
records and ends every span as the checkpoint reports acknowledgements and the commit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry.trace import Link, Span, SpanContext
from opentelemetry.util.types import AttributeValue

from common import tracing as otel
from common.tracing import SpanKind, Tracing
from consumer.dedup import id_bytes
from handlers import Handled, Invalid, RoutingTable, SourceRecord, Unrouted, route_webhook

Headers = tuple[tuple[str, bytes], ...]

# Set by the ingress (`ingress.app.HEADER_EVENT_NAME`): the path's event name of
# `POST /webhooks/{eventName}`, else the body's meta.eventName. Routes bodies that lack meta.eventName.
EVENT_NAME_HEADER = "event-name"

# Headers the consumer adds to a dead-lettered record: why it was rejected and where it came from.
DLQ_ERROR_TYPE = "dlq-error-type"
DLQ_ERROR_MESSAGE = "dlq-error-message"
DLQ_EVENT_NAME = "dlq-event-name"
DLQ_SOURCE_TOPIC = "dlq-source-topic"
DLQ_SOURCE_PARTITION = "dlq-source-partition"
DLQ_SOURCE_OFFSET = "dlq-source-offset"
# Headers added to an unrouted record.
UNROUTED_REASON = "unrouted-reason"
UNROUTED_EVENT_NAME = "unrouted-event-name"
UNROUTED_SOURCE_TOPIC = "unrouted-source-topic"
UNROUTED_SOURCE_PARTITION = "unrouted-source-partition"
UNROUTED_SOURCE_OFFSET = "unrouted-source-offset"

# Headers added to a webhook dead-lettered as OUTPUT_TOO_LARGE: the first derived record that would
# not fit, its size and its topic's limit.
DLQ_OUTPUT_TOPIC = "dlq-output-topic"
DLQ_OUTPUT_BYTES = "dlq-output-bytes"
DLQ_OUTPUT_MAX_BYTES = "dlq-output-max-bytes"

# On a dead-letter or unrouted copy whose topic cannot take the raw record with our headers: the
# value's size; the copy carries no value, and the raw record stays where the source headers say.
VALUE_OMITTED_BYTES = "value-omitted-bytes"

# A handler that raised (a bug, not bad input) is dead-lettered under this error type, so one
# record cannot block its partition forever.
HANDLER_ERROR = "HandlerError"
# A derived record of the webhook would be larger than its topic's max.message.bytes: dead-lettered
# before any of its records is produced, so one webhook cannot block its partition.
OUTPUT_TOO_LARGE = "OutputTooLarge"
# The broker refused a derived record of the webhook for good (too large, invalid): no retry can
# store it (consumer.sender.REJECTION_ERRORS), so the webhook is dead-lettered instead.
OUTPUT_REJECTED = "OutputRejected"
# Room left for what is added after planning: the trace headers of a derived record (tracing on):
# `traceparent` and `ce_traceparent` with their names and framing, plus twice the `tracestate`
# the raw record came with (it is copied into `tracestate` and `ce_tracestate`).
PUBLISH_HEADER_ALLOWANCE = 512

# (raw partition, offset) -> why the broker refused the record's outputs, for `plan_batch(rejected=...)`.
Rejections = Mapping[tuple[int, int], str]


class RawRecord(Protocol):
    """The parts of a consumed Kafka record the consumer reads (aiokafka's ConsumerRecord has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(slots=True, eq=False)
class RecordTrace:
    """Tracing on: the spans of one raw record, which its outgoing records continue."""

    consume: Span
    # The derive span's context, where the events were created: their ce_traceparent. None for a
    # dead-lettered or unrouted record, whose copy keeps the raw record's headers as they are.
    created_in: SpanContext | None = None


class OutgoingRecord(NamedTuple):
    """A record to produce: a derived event, or a raw record on its way to the DLQ/unrouted topic.

    Immutable, and built per record: a named tuple costs a third of a frozen dataclass.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None = None  # None: chosen from the key, as the default partitioner does


OutcomeKind = Literal["emitted", "duplicate", "revoked", "dead_lettered", "unrouted"]


class RecordOutcome(NamedTuple):
    """What became of one raw record, for the log (never the body).

    Immutable, and built per record: a named tuple costs a third of a frozen dataclass.
    """

    source: SourceRecord
    kind: OutcomeKind
    event_name: str | None
    detail: str | None = None  # error type or unrouted reason
    ce_ids: tuple[str, ...] = ()
    # The record's event-name header when it named another event than meta.eventName (which won).
    conflicting_event_name: str | None = None


@dataclass(slots=True)
class BatchPlan:
    """Everything one batch leads to: records to publish (in input order), offsets to commit, counts."""

    outgoing: list[OutgoingRecord] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    outcomes: list[RecordOutcome] = field(default_factory=list)
    emitted: Counter[str] = field(default_factory=Counter)
    # Exactly-once: events not published again because their ce_id was published before, per type.
    duplicates: Counter[str] = field(default_factory=Counter)
    # Exactly-once: (id bytes, ce_id, type) of each event to publish, for the dedup store's changelog.
    new_ids: list[tuple[bytes, str, str]] = field(default_factory=list)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    handler_seconds: list[float] = field(default_factory=list)
    # The batch's spans; the shared BatchTrace.OFF (does nothing) while tracing is off.
    trace: BatchTrace = field(default_factory=lambda: BatchTrace.OFF)

    def count(self, kind: OutcomeKind) -> int:
        """How many raw records had this outcome."""
        return sum(1 for outcome in self.outcomes if outcome.kind == kind)


def plan_batch(
    records: Sequence[RawRecord],
    table: RoutingTable,
    derived_topics: Mapping[str, str],
    *,
    dlq_topic: str,
    unrouted_topic: str,
    published: Container[bytes] | None = None,
    output_limits: Mapping[str, int] | None = None,
    rejected: Rejections | None = None,
    tracing: Tracing = otel.NO_TRACING,
    group_id: str | None = None,
) -> BatchPlan:
    """Route every record; collect what to publish and the offset after each partition's last record.

    A record goes to the dead-letter topic instead of its derived events when one of them would be
    larger than its topic's `output_limits` entry (max.message.bytes; `OutputTooLarge`), or when it
    is in `rejected` (the broker refused its outputs before; `OutputRejected`).
    With `published` (exactly-once: the partition's dedup store), an event whose ce_id is in it, or
    earlier in this batch, is left out and counted in `duplicates`; the others are in `new_ids`.
    With `tracing` on, each record gets its `consume` and `derive` spans (`BatchTrace`); off, the
    only cost is one check per record.
    """
    plan = BatchPlan()
    trace = plan.trace = BatchTrace(tracing, group_id) if tracing.enabled else BatchTrace.OFF
    in_batch: set[bytes] = set()
    for record in records:
        source = SourceRecord(record.topic, record.partition, record.offset)
        record_trace = derive = None
        if trace.on:
            record_trace, derive = trace.consume(record)
            first = len(plan.outgoing)
        subscribed = _subscribed_event_name(record.headers)
        started = time.perf_counter()
        try:
            result = route_webhook(record.value or b"", source, table, subscribed)
            if isinstance(result, Handled):
                events = [
                    OutgoingRecord(
                        derived_topics[event.type],
                        event.key.encode(),
                        event.value(),
                        tuple(event.kafka_headers()),
                    )
                    for event in result.output.events
                ]
        except Exception as exc:  # a handler bug must not block the partition
            result = Invalid(None, HANDLER_ERROR, f"{type(exc).__name__}: {exc}"[:1000])
            if derive is not None:
                otel.record_error(derive, exc)
        plan.handler_seconds.append(time.perf_counter() - started)
        dlq_headers: list[tuple[str, bytes]] = []
        if isinstance(result, Handled):
            refused = rejected.get((record.partition, record.offset)) if rejected else None
            oversized = (
                _oversized(events, output_limits, _trace_allowance(record.headers) if trace.on else 0)
                if output_limits
                else None
            )
            if refused is not None:
                result = Invalid(result.event_name, OUTPUT_REJECTED, refused)
            elif oversized is not None:
                topic, size, limit = oversized
                result = Invalid(
                    result.event_name,
                    OUTPUT_TOO_LARGE,
                    f"a derived record for {topic} would be {size} bytes; the topic takes at most "
                    f"{limit} (max.message.bytes)",
                )
                dlq_headers = [
                    (DLQ_OUTPUT_TOPIC, topic.encode()),
                    (DLQ_OUTPUT_BYTES, str(size).encode()),
                    (DLQ_OUTPUT_MAX_BYTES, str(limit).encode()),
                ]
        if record_trace is not None and derive is not None:
            trace.derived(record_trace, derive, result)

        outcome: RecordOutcome
        if isinstance(result, Handled):
            emitted = result.output.events
            if published is not None and emitted:
                kept = []
                for event, outgoing in zip(result.output.events, events, strict=True):
                    key = id_bytes(event.id)
                    if key in published or key in in_batch:
                        plan.duplicates[event.type] += 1
                        continue
                    in_batch.add(key)
                    plan.new_ids.append((key, event.id, event.type))
                    kept.append((event, outgoing))
                emitted = tuple(event for event, _ in kept)
                events = [outgoing for _, outgoing in kept]
            plan.outgoing.extend(events)
            for event in emitted:
                plan.emitted[event.type] += 1
            skipped = result.output.skipped_reason
            if skipped == "revoked":
                kind: OutcomeKind = "revoked"
            elif result.output.events and not emitted:
                kind = "duplicate"
            else:
                kind = "emitted"
            ce_ids = tuple(event.id for event in emitted)
            outcome = RecordOutcome(source, kind, result.event_name, skipped, ce_ids)
        elif isinstance(result, Unrouted):
            plan.outgoing.append(_fitted(_unrouted(record, result, unrouted_topic), output_limits))
            outcome = RecordOutcome(source, "unrouted", result.event_name, result.reason)
        else:
            plan.outgoing.append(
                _fitted(_dead_lettered(record, result, dlq_topic, dlq_headers), output_limits)
            )
            plan.dead_lettered[result.error_type] += 1
            outcome = RecordOutcome(source, "dead_lettered", result.event_name, result.error_type)
        if subscribed is not None and outcome.event_name not in (None, subscribed):
            outcome = outcome._replace(conflicting_event_name=subscribed)
        plan.outcomes.append(outcome)
        if record_trace is not None:
            trace.outcome(record_trace, outcome, len(plan.outgoing) - first)
        plan.next_offsets[(record.topic, record.partition)] = record.offset + 1
    return plan


def _subscribed_event_name(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The record's `event-name` header, when it has a usable one."""
    for name, value in headers:
        if name == EVENT_NAME_HEADER:
            try:
                return value.decode() or None
            except UnicodeDecodeError:  # not the ingress's; routing by it would be a guess
                return None
    return None


def batch_bytes(record: OutgoingRecord) -> int:
    """At most the bytes of a record batch holding `record` alone (aiokafka's bound): what the broker
    compares with max.message.bytes, and what the record can add to a batch."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, record.value, list(record.headers))
    )


def _oversized(
    records: Sequence[OutgoingRecord], limits: Mapping[str, int], allowance: int
) -> tuple[str, int, int] | None:
    """(topic, size, limit) of the first record larger than its topic takes, or None when all fit.

    The size is aiokafka's upper bound of a record batch holding the record alone (what the broker
    compares with max.message.bytes), plus `allowance` for the headers added when it is published.
    """
    for record in records:
        limit = limits.get(record.topic)
        if limit is None:
            continue
        size = batch_bytes(record)
        if size + allowance > limit:
            return record.topic, size + allowance, limit
    return None


def _fitted(copy: OutgoingRecord, limits: Mapping[str, int] | None) -> OutgoingRecord:
    """The copy as it is, or, when its topic cannot take it (a dead-letter topic no larger than the
    raw one, and a raw record at its limit), the copy without its value: refused, it would be
    retried without end and stop its partition."""
    limit = limits.get(copy.topic) if limits else None
    if limit is None:
        return copy
    if batch_bytes(copy) <= limit:
        return copy
    omitted = str(len(copy.value or b"")).encode()
    bare = copy._replace(value=None, headers=(*copy.headers, (VALUE_OMITTED_BYTES, omitted)))
    if batch_bytes(bare) > limit:
        bare = bare._replace(key=None)  # a key that large was an id no model accepts anyway
    return bare


def _trace_allowance(headers: Sequence[tuple[str, bytes]]) -> int:
    """Room for the trace headers a derived record gets when tracing is on (PUBLISH_HEADER_ALLOWANCE)."""
    tracestate = sum(len(value) for name, value in headers if name == otel.TRACESTATE)
    return PUBLISH_HEADER_ALLOWANCE + 2 * tracestate


def _dead_lettered(
    record: RawRecord, why: Invalid, topic: str, extra: Sequence[tuple[str, bytes]] = ()
) -> OutgoingRecord:
    """The raw record, value and key byte for byte, with headers that say why and where from."""
    added = [
        (DLQ_ERROR_TYPE, why.error_type.encode()),
        (DLQ_ERROR_MESSAGE, why.message.encode()),
        (DLQ_SOURCE_TOPIC, record.topic.encode()),
        (DLQ_SOURCE_PARTITION, str(record.partition).encode()),
        (DLQ_SOURCE_OFFSET, str(record.offset).encode()),
    ]
    if why.event_name is not None:
        added.append((DLQ_EVENT_NAME, why.event_name.encode()))
    added.extend(extra)
    return OutgoingRecord(topic, record.key, record.value, _with_headers(record.headers, added))


def _unrouted(record: RawRecord, why: Unrouted, topic: str) -> OutgoingRecord:
    """The raw record unchanged, with headers that say why no handler took it."""
    added = [
        (UNROUTED_REASON, why.reason.encode()),
        (UNROUTED_SOURCE_TOPIC, record.topic.encode()),
        (UNROUTED_SOURCE_PARTITION, str(record.partition).encode()),
        (UNROUTED_SOURCE_OFFSET, str(record.offset).encode()),
    ]
    if why.event_name is not None:
        added.append((UNROUTED_EVENT_NAME, why.event_name.encode()))
    return OutgoingRecord(topic, record.key, record.value, _with_headers(record.headers, added))


def _with_headers(original: Sequence[tuple[str, bytes]], added: list[tuple[str, bytes]]) -> Headers:
    """The record's own headers, then ours; a replayed record's stale copies of ours are dropped."""
    ours = {name for name, _ in added}
    return (*((name, value) for name, value in original if name not in ours), *added)


class BatchTrace:
    """Tracing on: the spans of one planned batch, ended as the checkpoint reports its progress.

    Per raw record a `consume` span (kind CONSUMER), a child of the record's `traceparent` or the
    root of a new trace, from planning the record until its batch is committed; under it a `derive`
    span (the handler call) and, per outgoing record, a `publish` span (kind PRODUCER) from queueing
    until Kafka acknowledged it. Per batch (per raw partition in exactly-once mode) a `commit` span
    (offsets; the transaction commit) in a trace of its own, linked to each record's consume span.

    `BatchTrace.OFF` does nothing, so the checkpoint calls these methods without checking.
    """

    OFF: BatchTrace

    __slots__ = ("_consumes", "_group_id", "_publishes", "_sources", "_tracing", "on")

    def __init__(self, tracing: Tracing, group_id: str | None = None) -> None:
        self._tracing = tracing
        self._group_id = group_id
        self.on = tracing.enabled
        self._consumes: list[Span] = []
        self._publishes: list[Span] = []
        # The raw record's trace of each outgoing record, in the plan's order (kept aside, so that
        # tracing off costs OutgoingRecord nothing).
        self._sources: list[RecordTrace] = []

    def consume(self, record: RawRecord) -> tuple[RecordTrace, Span]:
        """Start the record's consume span, continuing its trace, and its derive span under it."""
        attributes: dict[str, AttributeValue] = {
            otel.MESSAGING_SYSTEM: "kafka",
            otel.MESSAGING_OPERATION_TYPE: "process",
            otel.MESSAGING_OPERATION_NAME: "consume",
            otel.MESSAGING_DESTINATION_NAME: record.topic,
            otel.MESSAGING_DESTINATION_PARTITION_ID: str(record.partition),
            otel.MESSAGING_KAFKA_OFFSET: record.offset,
            otel.MESSAGING_MESSAGE_BODY_SIZE: len(record.value or b""),
        }
        if self._group_id is not None:
            attributes[otel.MESSAGING_CONSUMER_GROUP_NAME] = self._group_id
        consume = self._tracing.start_span(
            "consume", otel.extract(record.headers), kind=SpanKind.CONSUMER, attributes=attributes
        )
        self._consumes.append(consume)
        return RecordTrace(consume), self._tracing.start_span("derive", consume)

    def derived(self, record: RecordTrace, derive: Span, result: Handled | Unrouted | Invalid) -> None:
        """End the derive span; a record that derived events remembers where they were created."""
        if isinstance(result, Handled):
            record.created_in = derive.get_span_context()
        elif isinstance(result, Invalid) and result.error_type != HANDLER_ERROR:
            otel.record_error(derive, result.error_type)  # a handler error recorded its exception type
        derive.end()

    def outcome(self, record: RecordTrace, outcome: RecordOutcome, outgoing: int) -> None:
        """Say on the consume span what became of the record (no body, no personal data); the last
        `outgoing` records of the plan came of it."""
        self._sources.extend([record] * outgoing)
        consume = record.consume
        consume.set_attribute("exam_events.outcome", outcome.kind)
        if outcome.event_name is not None:
            consume.set_attribute("exam_events.event_name", outcome.event_name)
        if outcome.kind == "dead_lettered" and outcome.detail is not None:
            consume.set_attribute("exam_events.error_type", outcome.detail)
        consume.set_attribute("exam_events.events", len(outcome.ce_ids))

    def start_publish(self, outgoing: list[OutgoingRecord]) -> list[OutgoingRecord]:
        """The plan's `outgoing` records (all of them, in order) to queue now: each gets a publish
        span; a derived event also gets `traceparent` (its publish span) and `ce_traceparent` (its
        derive span), with `tracestate`/`ce_tracestate` when a tracestate came in. Dead-letter and
        unrouted copies keep their headers as they are."""
        if not self.on:
            return outgoing
        sent: list[OutgoingRecord] = []
        for record, trace in zip(outgoing, self._sources, strict=True):
            attributes: dict[str, AttributeValue] = {
                otel.MESSAGING_SYSTEM: "kafka",
                otel.MESSAGING_OPERATION_TYPE: "send",
                otel.MESSAGING_OPERATION_NAME: "publish",
                otel.MESSAGING_DESTINATION_NAME: record.topic,
            }
            if trace.created_in is not None:
                headers = dict(record.headers)
                if "ce_id" in headers:
                    attributes[otel.MESSAGING_MESSAGE_ID] = attributes[otel.CLOUDEVENTS_EVENT_ID] = headers[
                        "ce_id"
                    ].decode()
                if "ce_type" in headers:
                    attributes[otel.CLOUDEVENTS_EVENT_TYPE] = headers["ce_type"].decode()
            publish = self._tracing.start_span(
                "publish", trace.consume, kind=SpanKind.PRODUCER, attributes=attributes
            )
            self._publishes.append(publish)
            if trace.created_in is not None:
                record = OutgoingRecord(
                    record.topic,
                    record.key,
                    record.value,
                    (
                        *record.headers,
                        *otel.kafka_headers(publish),
                        *otel.cloudevents_headers(trace.created_in),
                    ),
                    record.partition,
                )
            sent.append(record)
        return sent

    def published(self) -> None:
        """Kafka acknowledged every record: end the publish spans."""
        spans, self._publishes = self._publishes, []
        for span in spans:
            span.end()

    def committing(self, attributes: otel.Attributes) -> AbstractContextManager[object]:
        """The batch's `commit` span as a block, linked to each record's consume span."""
        if not self.on:
            return nullcontext()
        return self._tracing.span(
            "commit",
            kind=SpanKind.CLIENT,
            attributes={
                otel.MESSAGING_SYSTEM: "kafka",
                otel.MESSAGING_OPERATION_TYPE: "settle",
                otel.MESSAGING_OPERATION_NAME: "commit",
                otel.MESSAGING_BATCH_MESSAGE_COUNT: len(self._consumes),
                **({otel.MESSAGING_CONSUMER_GROUP_NAME: self._group_id} if self._group_id else {}),
                **attributes,
            },
            links=[Link(span.get_span_context()) for span in self._consumes],
        )

    def finish(self, error: BaseException | str | None = None) -> None:
        """End every span still open: the consume spans once the batch is committed; with `error`
        (the batch was abandoned, dropped or crashed) marked failed with the error's type."""
        spans, self._publishes, self._consumes = [*self._publishes, *self._consumes], [], []
        for span in spans:
            if error is not None:
                otel.record_error(span, error)
            span.end()


BatchTrace.OFF = BatchTrace(otel.NO_TRACING)
