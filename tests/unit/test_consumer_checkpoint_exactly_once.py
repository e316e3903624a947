"""The exactly-once checkpoint with fakes: its steps in order, and nothing committed after a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, ProducerFenced

from common.producer import ManagedProducer
from consumer.checkpoint import ExactlyOnceCheckpoint
from consumer.dedup import DedupStore, forget_oldest, id_bytes
from consumer.group import GroupMember
from consumer.metrics import ConsumerMetrics
from consumer.settings import ConsumerSettings
from consumer.transactions import PartitionState, PartitionTransactions
from handlers import RulesSettings, build_routing_table
from tests.support.consumer_harness import expected_outputs
from tests.support.webhooks import encode, results_released
from tests.unit.test_consumer_plan import FakeRecord

RAW = TopicPartition("raw", 0)
SETTINGS = ConsumerSettings(
    rules=RulesSettings(),
    raw_topic="raw",
    group_id="g",
    processing_guarantee="exactly-once",
    retry_backoff_initial_seconds=0.01,
    retry_backoff_max_seconds=0.02,
)


@dataclass
class Metadata:
    offset: int


class FakeBatch:
    def __init__(self) -> None:
        self.count = 0

    def append(self, **_kwargs: Any) -> object:
        self.count += 1
        return object()


class FakeCluster:
    def available_partitions_for_topic(self, _topic: str) -> set[int]:
        return {0, 1, 2}


class FakeClient:
    cluster = FakeCluster()


class TransactionalProducer:
    """Records every call in order; batches are acknowledged unless told otherwise."""

    def __init__(self, *, fail_acks: bool = False, fence_on_commit: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_acks = fail_acks
        self.fence_on_commit = fence_on_commit
        self.client = FakeClient()
        self.next_offset: dict[tuple[str, int], int] = {}
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.calls.append("stop")

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.calls.append(f"send {topic}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        base = self.next_offset.get((topic, partition), 0)
        self.next_offset[(topic, partition)] = base + batch.count

        def acknowledge() -> None:
            self.calls.append(f"ack {topic}")
            if self.fail_acks:
                future.set_exception(KafkaTimeoutError("request timed out"))
            else:
                future.set_result(Metadata(base))

        asyncio.get_running_loop().call_soon(acknowledge)
        return future

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        partitions = {tp.partition: offset for tp, offset in offsets.items()}
        self.calls.append(f"offsets {partitions} {group_id}")

    async def commit_transaction(self) -> None:
        if self.fence_on_commit:
            self.calls.append("commit refused")
            raise ProducerFenced()
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")


class Partitions:
    """PartitionTransactions' part the checkpoint uses, around one fake producer."""

    def __init__(self, producer: TransactionalProducer, next_offset: int | None = None) -> None:
        self.producer = producer
        self.managed = ManagedProducer({}, close_timeout_seconds=1.0, factory=lambda **_: producer)
        self.state = PartitionState(
            RAW, self.managed, DedupStore(3600), acquired=True, next_offset=next_offset
        )
        self.losses: list[str] = []
        self.bounded = 0

    async def ready(self, tp: TopicPartition) -> PartitionState | None:
        if self.managed.current is None:
            await self.managed.start()
        return self.state

    def lost(self, state: PartitionState, reason: str) -> None:
        state.acquired = False
        self.losses.append(reason)

    def failures(self, tp: TopicPartition) -> int:
        return self.state.failures

    def entries(self) -> int:
        return len(self.state.store)

    def bound_stores(self) -> None:
        self.bounded += 1


class Member:
    def __init__(self, owned: bool = True) -> None:
        self.is_owner = owned
        self.seeks: list[dict[TopicPartition, int]] = []

    def owned(self, partitions: set[TopicPartition]) -> set[TopicPartition]:
        return partitions if self.is_owner else set()

    def seek_or_die(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.seeks.append(dict(offsets))


def checkpoint(partitions: Partitions, member: Member) -> tuple[ExactlyOnceCheckpoint, ConsumerMetrics]:
    metrics = ConsumerMetrics.create()
    return (
        ExactlyOnceCheckpoint(
            settings=SETTINGS,
            table=build_routing_table(SETTINGS.rules),
            partitions=cast(PartitionTransactions, partitions),
            member=cast(GroupMember, member),
            metrics=metrics,
        ),
        metrics,
    )


def records(*bodies: bytes, first_offset: int = 0) -> list[FakeRecord]:
    return [FakeRecord(body, offset=first_offset + i) for i, body in enumerate(bodies)]


FAILED = encode(results_released(passed=False, user_id="u1", attempt_id="a1"))
PASSED = encode(results_released(passed=True, user_id="u2", attempt_id="a2"))


def sample(metrics: ConsumerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"exam_events_consumer_{name}", labels or None) or 0.0


async def test_outputs_and_changelog_are_acknowledged_then_offsets_added_then_the_transaction_committed() -> (
    None
):
    producer = TransactionalProducer()
    partitions = Partitions(producer)
    eos, metrics = checkpoint(partitions, Member())

    await eos.commit(records(FAILED, PASSED, b"not json"))

    calls = producer.calls
    first_ack = min(i for i, call in enumerate(calls) if call.startswith("ack"))
    assert calls[0] == "begin"
    assert all(call.startswith("send") for call in calls[1:first_ack])
    assert {call for call in calls if call.startswith("send")} >= {
        "send exam.results.failed",
        "send exam.resits",
        "send exam.results.passed",
        "send exam.webhooks.dlq",
        "send exam.events.dedup",
    }
    offsets_at = calls.index("offsets {0: 3} g")
    assert all(call.startswith(("send", "ack")) for call in calls[1:offsets_at])
    assert sum(call.startswith("ack") for call in calls[:offsets_at]) == sum(
        call.startswith("send") for call in calls
    )
    assert calls[offsets_at + 1 :] == ["commit"]
    # Outcomes are recorded only now: the store knows the ids, the partition continues after the batch.
    ids = [dict(r.headers)["ce_id"].decode() for r in expected_outputs([FAILED, PASSED])]
    assert all(id_bytes(ce_id) in partitions.state.store for ce_id in ids)
    assert partitions.state.next_offset == 3
    assert partitions.state.store.changelog_position == len(ids)
    assert sample(metrics, "transactions_committed_total") == 1
    assert sample(metrics, "events_emitted_total", type="exam.result.failed") == 1


async def test_an_unacknowledged_record_aborts_the_transaction_and_rewinds_without_committing() -> None:
    producer = TransactionalProducer(fail_acks=True)
    partitions = Partitions(producer, next_offset=10)
    member = Member()
    eos, metrics = checkpoint(partitions, member)

    await eos.commit(records(FAILED, first_offset=10))

    assert "commit" not in producer.calls
    assert not any(call.startswith("offsets") for call in producer.calls)
    assert "abort" in producer.calls
    assert member.seeks == [{RAW: 10}]
    assert partitions.losses  # acquired afresh before the next attempt
    assert partitions.state.next_offset == 10
    assert len(partitions.state.store) == 0
    assert sample(metrics, "transactions_aborted_total", reason="error") == 1


async def test_a_fenced_producer_never_commits_and_its_work_is_dropped() -> None:
    producer = TransactionalProducer(fence_on_commit=True)
    partitions = Partitions(producer, next_offset=0)
    member = Member()
    eos, metrics = checkpoint(partitions, member)

    await eos.commit(records(FAILED))

    assert "commit" not in producer.calls
    assert "abort" not in producer.calls  # a fenced producer cannot abort: its successor does
    assert partitions.losses
    assert len(partitions.state.store) == 0
    assert partitions.state.next_offset == 0
    assert sample(metrics, "producers_fenced_total") == 1
    assert sample(metrics, "events_emitted_total", type="exam.result.failed") == 0


async def test_a_partition_revoked_mid_transaction_is_aborted_and_left_to_its_new_owner() -> None:
    producer = TransactionalProducer()
    partitions = Partitions(producer, next_offset=0)
    member = Member()
    eos, metrics = checkpoint(partitions, member)
    real_offsets = producer.send_offsets_to_transaction

    async def revoke_meanwhile(offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        await real_offsets(offsets, group_id)
        member.is_owner = False

    producer.send_offsets_to_transaction = revoke_meanwhile  # type: ignore[method-assign]

    await eos.commit(records(FAILED))

    assert "commit" not in producer.calls
    assert "abort" in producer.calls
    assert member.seeks == []
    assert sample(metrics, "transactions_aborted_total", reason="lost") == 1


async def test_records_before_the_committed_offset_are_skipped_and_a_gap_is_rewound_once() -> None:
    producer = TransactionalProducer()
    partitions = Partitions(producer, next_offset=5)
    member = Member()
    eos, metrics = checkpoint(partitions, member)

    await eos.commit(records(FAILED, PASSED, first_offset=3))  # 3 and 4 were committed before
    assert sample(metrics, "stale_records_skipped_total") == 2
    assert "begin" not in producer.calls

    await eos.commit(records(FAILED, first_offset=8))  # 5-7 never handled: read them first
    assert member.seeks == [{RAW: 5}]
    assert "begin" not in producer.calls

    await eos.commit(records(FAILED, first_offset=8))  # still a gap after the rewind: no records there
    assert "commit" in producer.calls
    assert partitions.state.next_offset == 9


async def test_events_already_in_the_dedup_store_or_earlier_in_the_batch_are_not_published_again() -> None:
    producer = TransactionalProducer()
    partitions = Partitions(producer)
    known = [dict(r.headers)["ce_id"].decode() for r in expected_outputs([PASSED])]
    partitions.state.store.add([id_bytes(ce_id) for ce_id in known], 0)
    eos, metrics = checkpoint(partitions, Member())

    await eos.commit(records(PASSED, FAILED, FAILED))

    sent = [call for call in producer.calls if call.startswith("send")]
    assert "send exam.results.passed" not in sent
    assert sent.count("send exam.results.failed") == 1
    assert sample(metrics, "duplicates_suppressed_total", type="exam.result.passed") == 1
    assert sample(metrics, "duplicates_suppressed_total", type="exam.result.failed") == 1
    assert sample(metrics, "events_emitted_total", type="exam.result.failed") == 1


def test_the_dedup_store_forgets_ids_published_before_the_window() -> None:
    store = DedupStore(window_seconds=3600)
    hour_ms = 3_600_000
    store.add([b"old"], published_ms=0)
    store.add([b"new"], published_ms=2 * hour_ms)

    assert store.expire(now_ms=int(2.5 * hour_ms)) == 1
    assert b"old" not in store
    assert b"new" in store
    assert store.expire(now_ms=int(2.5 * hour_ms)) == 0


def test_ids_are_kept_as_their_16_uuid_bytes() -> None:
    assert id_bytes("c002e44d-ecab-5290-83c4-f2f1e1a86461") == bytes.fromhex(
        "c002e44decab529083c4f2f1e1a86461"
    )
    assert id_bytes("not-a-uuid") == b"not-a-uuid"


@pytest.mark.parametrize("deadline_ms", [60_000, 100_000])
def test_a_transaction_deadline_not_shorter_than_the_rebalance_wait_is_refused(deadline_ms: int) -> None:
    with pytest.raises(ValueError, match="CONSUMER_GRACEFUL_TIMEOUT_SECONDS"):
        ConsumerSettings(
            rules=RulesSettings(),
            processing_guarantee="exactly-once",
            transaction_timeout_ms=deadline_ms,
            graceful_timeout_seconds=30,
        )


def test_dedup_stores_over_their_bound_forget_their_oldest_ids_first() -> None:
    old, new = DedupStore(window_seconds=7 * 24 * 3600), DedupStore(window_seconds=7 * 24 * 3600)
    old.add((f"old-{n}".encode() for n in range(600)), published_ms=60_000 * 1_000)
    new.add((f"new-{n}".encode() for n in range(600)), published_ms=60_000 * 2_000)

    forgotten = forget_oldest([old, new], max_entries=1_000)

    assert forgotten == 600
    assert len(old) == 0
    assert len(new) == 600
    assert b"new-0" in new


def test_dedup_stores_within_their_bound_keep_every_id() -> None:
    store = DedupStore(window_seconds=3600)
    store.add((str(n).encode() for n in range(100)), published_ms=0)

    assert forget_oldest([store], max_entries=100) == 0
    assert len(store) == 100
