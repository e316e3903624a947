"""Exactly-once mode on the real broker: one transaction per raw partition, dedup, fencing.

Every output is read as downstream services must read it: isolation_level=read_committed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from consumer import app as app_module
from consumer import checkpoint as checkpoint_module
from consumer.app import create_app
from consumer.checkpoint import InFlightBatch
from consumer.dedup import ENTRY_BYTES
from consumer.settings import ConsumerSettings
from tests.support.consumer_harness import (
    ConsumerTopics,
    ce_ids,
    committed_offsets,
    consumer_settings,
    expected_outputs,
    make_consumer_topics,
    read_derived,
    running,
    wait_until,
)
from tests.support.kafka_io import produce, read_records
from tests.support.webhooks import encode, results_released


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    return await make_consumer_topics(kafka_bootstrap, unique_name)


def eos_settings(bootstrap: str, topics: ConsumerTopics, group: str, **overrides: Any) -> ConsumerSettings:
    return consumer_settings(bootstrap, topics, group, processing_guarantee="exactly-once", **overrides)


def webhooks(count: int, *, prefix: str = "u") -> list[bytes]:
    return [
        encode(
            results_released(passed=i % 3 != 0, resit_count=i % 2, user_id=f"{prefix}{i}", attempt_id=f"a{i}")
        )
        for i in range(count)
    ]


def expected_ids(bodies: Sequence[bytes]) -> Counter[str]:
    """Each ce_id the bodies lead to, once (duplicated bodies count once)."""
    return Counter({dict(r.headers)["ce_id"].decode(): 1 for r in expected_outputs(bodies)})


def metric(app: Any, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(f"exam_events_consumer_{name}", labels or None) or 0.0


async def all_committed(bootstrap: str, settings: ConsumerSettings, counts: dict[int, int]) -> bool:
    return await committed_offsets(bootstrap, settings.group_id, settings.raw_topic) == counts


async def test_outputs_dead_letters_and_offsets_of_a_batch_commit_together_and_are_read_once(
    kafka_bootstrap: str, topics: ConsumerTopics, new_group_id: Callable[[], str]
) -> None:
    settings = eos_settings(kafka_bootstrap, topics, new_group_id())
    bodies = webhooks(12)
    await produce(
        kafka_bootstrap,
        topics.raw,
        [*bodies, b"not json", b'{"meta": {"eventName": "user.updated"}}'],
        partition=0,
    )
    expected = expected_ids(bodies)

    async with running(create_app(settings)) as app:
        await wait_until(
            lambda: all_committed(kafka_bootstrap, settings, {0: len(bodies) + 2}), what="the batch to commit"
        )
        transactions = metric(app, "transactions_committed_total")

    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert ce_ids(records) == expected
    assert {r.key for r in records} == {f"u{i}".encode() for i in range(12)}
    assert len(await read_records(kafka_bootstrap, topics.dlq, idle=0.3)) == 1
    assert len(await read_records(kafka_bootstrap, topics.unrouted, idle=0.3)) == 1
    changelog = await read_records(kafka_bootstrap, topics.dedup, idle=0.3)
    assert Counter(r.key.decode() for r in changelog if r.key) == expected  # the dedup store's changelog
    assert {r.partition for r in changelog} == {0}  # raw partition 0's store lives in partition 0
    assert transactions >= 1


async def test_a_webhook_posted_twice_publishes_its_events_once_and_a_re_release_publishes_new_ones(
    kafka_bootstrap: str, topics: ConsumerTopics, new_group_id: Callable[[], str]
) -> None:
    settings = eos_settings(kafka_bootstrap, topics, new_group_id())
    first = encode(results_released(passed=False, user_id="u1", attempt_id="a1"))
    re_release = encode(
        results_released(passed=False, user_id="u1", attempt_id="a1", released_at="2026-06-15T10:00:00.000Z")
    )
    # The platform re-posts within one batch and again later; then it re-releases the attempt.
    await produce(kafka_bootstrap, topics.raw, [first, first], partition=1)

    async with running(create_app(settings)) as app:
        await wait_until(lambda: all_committed(kafka_bootstrap, settings, {1: 2}), what="the first batch")
        await produce(kafka_bootstrap, topics.raw, [first, re_release], partition=1)
        await wait_until(lambda: all_committed(kafka_bootstrap, settings, {1: 4}), what="the second batch")
        suppressed = metric(app, "duplicates_suppressed_total", type="exam.result.failed")

    expected = expected_ids([first, re_release])
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert ce_ids(records) == expected
    assert len(expected) == 6  # failed, resit available and the xAPI statement, for each release
    assert suppressed == 2  # the second and third copy of the first release


async def test_the_dedup_store_is_restored_from_its_changelog_when_the_partition_is_assigned_again(
    kafka_bootstrap: str, topics: ConsumerTopics, new_group_id: Callable[[], str]
) -> None:
    settings = eos_settings(kafka_bootstrap, topics, new_group_id())
    bodies = webhooks(6)
    await produce(kafka_bootstrap, topics.raw, bodies, partition=2)
    async with running(create_app(settings)):
        await wait_until(lambda: all_committed(kafka_bootstrap, settings, {2: 6}), what="the first run")

    # A new process of the same group: the platform re-posts every webhook after the restart.
    await produce(kafka_bootstrap, topics.raw, bodies, partition=2)
    app = create_app(settings)
    with structlog.testing.capture_logs() as logs:
        async with running(app):
            await wait_until(lambda: all_committed(kafka_bootstrap, settings, {2: 12}), what="the second run")
            suppressed = sum(
                metric(app, "duplicates_suppressed_total", type=t)
                for t in ("exam.result.passed", "exam.result.failed")
            )
            dedup_bytes = metric(app, "dedup_bytes")

    expected = expected_ids(bodies)
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert ce_ids(records) == expected
    assert suppressed == len(bodies)
    acquired = [e for e in logs if e["event"] == "partition_acquired" and e["partition"].endswith("/2")]
    assert acquired
    assert acquired[0]["dedup_entries"] == sum(expected.values())
    assert "dedup_restore_seconds" in acquired[0]
    assert dedup_bytes == sum(expected.values()) * ENTRY_BYTES  # the stores' memory, as bounded


async def test_a_rebalance_mid_transaction_lets_the_transaction_commit_before_the_partitions_move(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=3)
    group = new_group_id()
    bodies = webhooks(30)
    for partition in range(3):
        await produce(kafka_bootstrap, topics.raw, bodies[partition::3], partition=partition)
    gate, in_transaction, rebalancing = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_queue = checkpoint_module.queue_records  # type: ignore[attr-defined]

    async def gated_queue(producer: Any, records: Any, *args: Any) -> Any:
        # The first member's first transactions stay open until a rebalance has begun.
        if not gate.is_set():
            in_transaction.set()
            await gate.wait()
        return await real_queue(producer, records, *args)

    class SignallingListener(InFlightBatch):
        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            if revoked:
                rebalancing.set()
            await super().on_partitions_revoked(revoked)

    async def open_gate_during_the_rebalance() -> None:
        await rebalancing.wait()
        await asyncio.sleep(0.5)
        gate.set()

    monkeypatch.setattr(checkpoint_module, "queue_records", gated_queue)
    monkeypatch.setattr(app_module, "InFlightBatch", SignallingListener)
    first = create_app(eos_settings(kafka_bootstrap, topics, group, graceful_timeout_seconds=30.0))
    second = create_app(eos_settings(kafka_bootstrap, topics, group))

    async with running(first):
        await asyncio.wait_for(in_transaction.wait(), 30)
        opener = asyncio.create_task(open_gate_during_the_rebalance())
        async with running(second, timeout=60):
            await wait_until(
                lambda: all_committed(kafka_bootstrap, first.settings, {0: 10, 1: 10, 2: 10}),
                what="every input to be committed",
            )
            await opener
        aborted = sum(
            metric(first, "transactions_aborted_total", reason=r) for r in ("fenced", "lost", "error")
        )

    expected = expected_ids(bodies)
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert ce_ids(records) == expected  # every event exactly once
    assert aborted == 0  # the held transactions committed during the rebalance wait


async def test_a_fenced_producer_never_commits_and_its_records_stay_invisible(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    new_group_id: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = eos_settings(kafka_bootstrap, topics, new_group_id())
    bodies = webhooks(8)
    await produce(kafka_bootstrap, topics.raw, bodies, partition=0)
    fenced_once = False
    real_queue = checkpoint_module.queue_records  # type: ignore[attr-defined]

    async def queue_then_get_fenced(producer: Any, records: Any, *args: Any) -> Any:
        # After this transaction's records are produced, a second producer with the partition's
        # transactional id starts, as the partition's next owner would: ours is fenced.
        nonlocal fenced_once
        futures = await real_queue(producer, records, *args)
        if not fenced_once and records and records[0].topic != settings.dedup_topic:
            fenced_once = True
            await asyncio.gather(*futures)
            usurper = AIOKafkaProducer(
                bootstrap_servers=kafka_bootstrap, transactional_id=settings.transactional_id(0)
            )
            await usurper.start()
            await usurper.stop()
        return futures

    monkeypatch.setattr(checkpoint_module, "queue_records", queue_then_get_fenced)
    async with running(create_app(settings)) as app:
        await wait_until(lambda: all_committed(kafka_bootstrap, settings, {0: 8}), what="the retried batch")
        fenced = metric(app, "producers_fenced_total")

    expected = expected_ids(bodies)
    committed_view = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    uncommitted_view = await read_derived(
        kafka_bootstrap,
        topics,
        count=2 * sum(expected.values()),
        timeout=5,
        isolation_level="read_uncommitted",
    )
    assert fenced == 1
    assert ce_ids(committed_view) == expected  # the fenced transaction's records are invisible
    assert ce_ids(uncommitted_view) == Counter(dict.fromkeys(expected, 2))  # ... though they were written
