"""A rebalance while a batch is stuck publishing: no crash, no loss, duplicates are identical."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from consumer import app as app_module
from consumer.app import create_app
from consumer.checkpoint import InFlightBatch
from consumer.plan import OutgoingRecord
from consumer.sender import KafkaSender
from consumer.settings import ConsumerSettings
from tests.support.consumer_harness import (
    ce_ids,
    committed_offsets,
    consumer_settings,
    expected_outputs,
    make_consumer_topics,
    read_derived,
    running,
    wait_until,
)
from tests.support.kafka_io import produce
from tests.support.webhooks import encode, results_released


class GatedSender(KafkaSender):
    """The real producer, but its first batch waits until the test opens the gate."""

    def __init__(self, settings: ConsumerSettings) -> None:
        super().__init__(settings)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await super().send_many(records)


async def test_a_batch_outlasting_a_rebalance_is_published_without_crash_or_loss_and_duplicates_are_identical(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group_id: Callable[[], str]
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=3)
    group = new_group_id()
    bodies = [
        encode(results_released(passed=i % 2 == 0, user_id=f"u{i}", attempt_id=f"a{i}")) for i in range(30)
    ]
    for partition in range(3):
        await produce(kafka_bootstrap, topics.raw, bodies[partition::3], partition=partition)
    # The first member's rebalance wait is short, so the second can join while its batch is stuck.
    first_settings = consumer_settings(kafka_bootstrap, topics, group, graceful_timeout_seconds=2.0)
    sender = GatedSender(first_settings)
    first = create_app(first_settings, sender=sender)
    second = create_app(consumer_settings(kafka_bootstrap, topics, group))

    async with running(first):
        await asyncio.wait_for(sender.waiting.wait(), 30)  # a batch is in flight, publishing blocked
        async with running(second):  # joins: the group rebalances around the stuck batch
            sender.gate.set()

            async def all_committed() -> bool:
                committed = await committed_offsets(kafka_bootstrap, group, topics.raw)
                return committed == {0: 10, 1: 10, 2: 10}

            await wait_until(all_committed, what="every input to be committed")
            assert first.broker is not None
            subscriber: Any = first.broker.subscribers[0]  # the Kafka subscriber keeps its consume tasks
            first_loop_alive = not any(t.done() for t in subscriber.tasks)
            first_batches = first.metrics.registry.get_sample_value("exam_events_consumer_batches_total")
            second_consumed = second.metrics.registry.get_sample_value(
                "exam_events_consumer_records_consumed_total"
            )

    expected = {dict(r.headers)["ce_id"].decode() for r in expected_outputs(bodies)}
    records = await read_derived(kafka_bootstrap, topics, count=len(expected))
    assert set(ce_ids(records)) == expected  # nothing lost
    assert first_loop_alive  # the stuck batch's member kept consuming
    assert (first_batches or 0) >= 1  # ... and finished that batch
    assert (second_consumed or 0) > 0  # the new member took over partitions meanwhile
    copies: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for record in records:
        copies[record.headers["ce_id"].decode()].add(
            (record.topic, record.key, tuple(sorted(record.headers.items())))
        )
    assert all(len(variants) == 1 for variants in copies.values())  # duplicates are identical records


async def test_a_batch_that_finishes_during_the_rebalance_wait_commits_and_the_new_member_reads_none_of_it(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=3)
    group = new_group_id()
    bodies = [
        encode(results_released(passed=i % 2 == 0, user_id=f"u{i}", attempt_id=f"a{i}")) for i in range(30)
    ]
    for partition in range(3):
        await produce(kafka_bootstrap, topics.raw, bodies[partition::3], partition=partition)
    waiting_for_batch = asyncio.Event()

    class SignallingListener(InFlightBatch):
        """The app's rebalance listener, telling the test when it starts waiting for the batch."""

        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            if revoked:
                waiting_for_batch.set()
            await super().on_partitions_revoked(revoked)

    monkeypatch.setattr(app_module, "InFlightBatch", SignallingListener)
    # A long wait: the gate opens while the first member's listener waits for its batch.
    first_settings = consumer_settings(kafka_bootstrap, topics, group, graceful_timeout_seconds=30.0)
    sender = GatedSender(first_settings)
    first = create_app(first_settings, sender=sender)
    second = create_app(consumer_settings(kafka_bootstrap, topics, group))

    async def open_gate_during_the_wait() -> None:
        await waiting_for_batch.wait()
        sender.gate.set()

    async with running(first):
        await asyncio.wait_for(sender.waiting.wait(), 30)  # a batch is in flight, publishing blocked
        first_batch = first.metrics.registry.get_sample_value("exam_events_consumer_records_consumed_total")
        opener = asyncio.create_task(open_gate_during_the_wait())
        async with running(second, timeout=60):  # joins; the first member's listener waits for its batch

            async def all_committed() -> bool:
                committed = await committed_offsets(kafka_bootstrap, group, topics.raw)
                return committed == {0: 10, 1: 10, 2: 10}

            await wait_until(all_committed, what="every input to be committed")
            await opener
            metrics = {
                name: app.metrics.registry.get_sample_value(f"exam_events_consumer_{name}") or 0.0
                for name, app in [("commit_failures_total", first), ("records_consumed_total", second)]
            }

    assert metrics["commit_failures_total"] == 0  # committed during the wait, before giving partitions up
    # ... so the new member re-read none of it (usually the gated batch held all 30 inputs: then it read 0).
    assert metrics["records_consumed_total"] <= len(bodies) - (first_batch or 0)
    expected = Counter(dict(r.headers)["ce_id"].decode() for r in expected_outputs(bodies))
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert ce_ids(records) == expected  # every event exactly once
