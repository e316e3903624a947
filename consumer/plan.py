"""Turn one batch of raw records into the records to publish and the offsets to commit.

Pure: no broker, no clock beyond measuring handler time. The I/O around it is in `consumer.batch`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from consumer.dedup import id_bytes
from handlers import Handled, Invalid, RoutingTable, SourceRecord, Unrouted, route_webhook

Headers = tuple[tuple[str, bytes], ...]

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

# A handler that raised (a bug, not bad input) is dead-lettered under this error type, so one
# record cannot block its partition forever.
HANDLER_ERROR = "HandlerError"


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


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to produce: a derived event, or a raw record on its way to the DLQ/unrouted topic."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None = None  # None: chosen from the key, as the default partitioner does


OutcomeKind = Literal["emitted", "duplicate", "revoked", "dead_lettered", "unrouted"]


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What became of one raw record, for the log (never the body)."""

    source: SourceRecord
    kind: OutcomeKind
    event_name: str | None
    detail: str | None = None  # error type or unrouted reason
    ce_ids: tuple[str, ...] = ()


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
) -> BatchPlan:
    """Route every record; collect what to publish and the offset after each partition's last record.

    With `published` (exactly-once: the partition's dedup store), an event whose ce_id is in it, or
    earlier in this batch, is left out and counted in `duplicates`; the others are in `new_ids`.
    """
    plan = BatchPlan()
    in_batch: set[bytes] = set()
    for record in records:
        source = SourceRecord(record.topic, record.partition, record.offset)
        started = time.perf_counter()
        try:
            result = route_webhook(record.value or b"", source, table)
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
        plan.handler_seconds.append(time.perf_counter() - started)

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
            plan.outcomes.append(
                RecordOutcome(source, kind, result.event_name, skipped, tuple(event.id for event in emitted))
            )
        elif isinstance(result, Unrouted):
            plan.outgoing.append(_unrouted(record, result, unrouted_topic))
            plan.outcomes.append(RecordOutcome(source, "unrouted", result.event_name, result.reason))
        else:
            plan.outgoing.append(_dead_lettered(record, result, dlq_topic))
            plan.dead_lettered[result.error_type] += 1
            plan.outcomes.append(RecordOutcome(source, "dead_lettered", result.event_name, result.error_type))
        plan.next_offsets[(record.topic, record.partition)] = record.offset + 1
    return plan


def _dead_lettered(record: RawRecord, why: Invalid, topic: str) -> OutgoingRecord:
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
