"""A real broker outage mid-stream: outputs fail, the broker comes back, nothing is skipped.

The consumer runs in this process against a broker of the test's own (`restartable_broker`), which
the test stops while batches are being published and starts again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from consumer import app as app_module
from consumer.app import ConsumerApp, create_app
from consumer.plan import OutgoingRecord
from consumer.sender import KafkaSender
from consumer.settings import ConsumerSettings
from tests.support.broker import LocalBroker
from tests.support.consumer_harness import (
    committed_offsets,
    consumer_settings,
    expected_outputs,
    make_consumer_topics,
    running,
    wait_until,
)
from tests.support.kafka_io import produce, read_records
from tests.support.webhooks import encode, results_released

PARTITIONS = 3
Identity = tuple[str, ...]


def identity(topic: str, headers: Sequence[tuple[str, bytes]] | dict[str, bytes]) -> Identity:
    """What names one output: its ce_id, or for a copied raw record the coordinates of the original."""
    named = dict(headers)
    if "ce_id" in named:
        return ("event", named["ce_id"].decode())
    for prefix in ("dlq", "unrouted"):
        if f"{prefix}-source-offset" in named:
            partition = named[f"{prefix}-source-partition"].decode()
            return (prefix, partition, named[f"{prefix}-source-offset"].decode())
    raise AssertionError(f"an output of {topic} without identity: {sorted(named)}")


def body(i: int) -> bytes:
    if i % 50 == 7:
        return b"not json " + str(i).encode()
    if i % 50 == 19:
        return encode({"meta": {"eventName": "user.updated"}, "n": i})
    return encode(
        results_released(passed=i % 3 != 0, resit_count=i % 3, user_id=f"u{i % 40}", attempt_id=f"a{i}")
    )


def expected_identities(value: bytes, partition: int, offset: int) -> set[Identity]:
    """The outputs one input must lead to (handlers are pure: computed here)."""
    if value.startswith(b"not json"):
        return {("dlq", str(partition), str(offset))}
    if b"user.updated" in value:
        return {("unrouted", str(partition), str(offset))}
    return {identity(r.topic, r.headers) for r in expected_outputs([value])}


class RecordingSender(KafkaSender):
    """The real producer; remembers what it queued, so a commit can be checked against what Kafka acked."""

    def __init__(self, settings: ConsumerSettings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[list[Identity], list[asyncio.Future[Any]]]] = []

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        futures = await super().send_many(records)
        self.sent.append(([identity(r.topic, r.headers) for r in records], futures))
        return futures

    def acknowledged(self) -> set[Identity]:
        return {
            name
            for names, futures in self.sent
            if all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
            for name in names
        }


async def get(app: ConsumerApp, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://consumer") as client:
        return await client.get(path)


@pytest.mark.timeout(900)
async def test_a_broker_outage_mid_stream_loses_nothing_and_commits_only_what_was_published(
    restartable_broker: LocalBroker,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bootstrap = restartable_broker.bootstrap
    topics = await make_consumer_topics(bootstrap, unique_name, raw_partitions=PARTITIONS)
    inputs = {p: [body(i) for i in range(p, 1500, PARTITIONS)] for p in range(PARTITIONS)}
    for partition, values in inputs.items():
        await produce(bootstrap, topics.raw, values, partition=partition)
    expected = {
        (p, o): expected_identities(value, p, o)
        for p, values in inputs.items()
        for o, value in enumerate(values)
    }
    group = new_group_id()
    # Small, slow batches (linger), so that the stream is still going when the broker stops.
    settings = consumer_settings(
        bootstrap,
        topics,
        group,
        batch_max_records=30,
        producer_linger_ms=300,
        producer_request_timeout_ms=5000,
        session_timeout_ms=30_000,
    )
    sender = RecordingSender(settings)
    commits: list[tuple[dict[tuple[str, int], int], set[Identity]]] = []
    real_commit = app_module.commit_assigned

    async def recording_commit(consumer: Any, offsets: Any) -> None:
        commits.append((dict(offsets), sender.acknowledged()))
        await real_commit(consumer, offsets)

    monkeypatch.setattr(app_module, "commit_assigned", recording_commit)

    async with running(create_app(settings, sender=sender), timeout=60) as app:

        def sample(name: str) -> float:
            return app.metrics.registry.get_sample_value(name) or 0.0

        async def a_few_commits() -> bool:
            return len(commits) >= 2

        await wait_until(a_few_commits, what="the first commits")
        await asyncio.to_thread(restartable_broker.stop)

        async def publishing_is_stuck() -> bool:
            # aiokafka keeps re-sending to the known leader while it is down, so the batch's
            # acknowledgements neither come nor fail (with the broker gone for good, the request
            # timeout fails them and the batch is re-published: tests/unit/test_consumer_batch.py).
            return sample("exam_events_consumer_in_flight_batch_seconds") >= 3 * settings.stuck_batch_seconds

        await wait_until(publishing_is_stuck, timeout=120, what="a batch stuck while the broker is down")
        readiness = await get(app, "/readyz")
        assert readiness.status_code == 503
        assert readiness.json()["checks"]["batch_stuck"] is True
        assert "batch_stuck" not in (await get(app, "/healthz")).json()  # alive all the same
        await asyncio.to_thread(restartable_broker.start)

        async def all_committed() -> bool:
            committed = await committed_offsets(bootstrap, group, topics.raw)
            return committed == {p: len(values) for p, values in inputs.items()}

        await wait_until(all_committed, timeout=300, what="every input to be committed after the outage")

    # Every commit covered only inputs whose outputs Kafka had acknowledged at that moment.
    for offsets, acknowledged in commits:
        for (_topic, partition), end in offsets.items():
            for offset in range(end):
                assert expected[(partition, offset)] <= acknowledged, (partition, offset)
    # Every input's outputs are there; duplicates (from re-publishing) are identical records.
    outputs = [r for topic in topics.outputs for r in await read_records(bootstrap, topic, timeout=60)]
    found = {identity(r.topic, r.headers) for r in outputs}
    assert set().union(*expected.values()) == found
    copies: dict[Identity, set[tuple[Any, ...]]] = defaultdict(set)
    for record in outputs:
        copies[identity(record.topic, record.headers)].add(
            (record.topic, record.key, tuple(sorted(record.headers.items())))
        )
    assert all(len(variants) == 1 for variants in copies.values())


@pytest.mark.timeout(900)
async def test_exactly_once_through_a_broker_restart_mid_stream_every_output_is_visible_once(
    restartable_broker: LocalBroker,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
) -> None:
    bootstrap = restartable_broker.bootstrap
    topics = await make_consumer_topics(bootstrap, unique_name, raw_partitions=PARTITIONS)
    inputs = {p: [body(i) for i in range(p, 900, PARTITIONS)] for p in range(PARTITIONS)}
    for partition, values in inputs.items():
        await produce(bootstrap, topics.raw, values, partition=partition)
    group = new_group_id()
    settings = consumer_settings(
        bootstrap,
        topics,
        group,
        processing_guarantee="exactly-once",
        batch_max_records=30,
        producer_linger_ms=300,
        producer_request_timeout_ms=5000,
        session_timeout_ms=30_000,
    )

    async with running(create_app(settings), timeout=60) as app:

        async def a_few_transactions() -> bool:
            return (
                app.metrics.registry.get_sample_value("exam_events_consumer_transactions_committed_total")
                or 0
            ) >= 2

        await wait_until(a_few_transactions, what="the first transactions")
        await asyncio.to_thread(restartable_broker.stop)  # transactions in flight fail or are fenced
        await asyncio.sleep(3)
        await asyncio.to_thread(restartable_broker.start)

        async def all_committed() -> bool:
            committed = await committed_offsets(bootstrap, group, topics.raw)
            return committed == {p: len(values) for p, values in inputs.items()}

        await wait_until(all_committed, timeout=300, what="every input to be committed after the restart")

    expected = [
        name
        for p, values in inputs.items()
        for o, value in enumerate(values)
        for name in expected_identities(value, p, o)
    ]
    outputs = [r for topic in topics.outputs for r in await read_records(bootstrap, topic, timeout=60)]
    seen = [identity(r.topic, r.headers) for r in outputs]
    assert sorted(seen) == sorted(expected)  # each output exactly once under read_committed
