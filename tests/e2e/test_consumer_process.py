"""`python -m consumer` as real processes: killed, restarted, scaled to two, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import free_port
from tests.support.consumer_harness import (
    ConsumerProcess,
    ConsumerTopics,
    ce_ids,
    committed_offsets,
    expected_outputs,
    group_members,
    make_consumer_topics,
    read_derived,
    wait_until,
)
from tests.support.kafka_io import produce, read_records
from tests.support.webhooks import encode, results_released

RAW_PARTITIONS = 4


def webhooks(count: int, start: int = 0) -> list[bytes]:
    """Realistic bodies: passes, fails with and without resits, resit passes, withheld grades,
    revoked attempts, and now and then one that is not JSON or has an unknown event name."""
    bodies = []
    for i in range(start, start + count):
        if i % 97 == 13:
            bodies.append(b"not json " + str(i).encode())
        elif i % 89 == 7:
            bodies.append(encode({"meta": {"eventName": "user.updated"}, "n": i}))
        else:
            bodies.append(
                encode(
                    results_released(
                        passed=i % 3 != 0,
                        resit_count=i % 4,
                        revoked=i % 31 == 0,
                        publish_grade=i % 5 != 0,
                        user_id=f"usr_{i % 120}",
                        attempt_id=f"att_{i}",
                    )
                )
            )
    return bodies


def expected_ce_ids(bodies: list[bytes]) -> Counter[str]:
    return Counter(
        dict(r.headers)["ce_id"].decode() for r in expected_outputs(bodies) if "ce_id" in dict(r.headers)
    )


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    return await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=RAW_PARTITIONS)


@pytest.fixture
def spawn(
    kafka_bootstrap: str, topics: ConsumerTopics, tmp_path: Path
) -> Iterator[Callable[..., ConsumerProcess]]:
    """Factory of consumer processes on this test's topics; every one is killed at teardown."""
    started: list[ConsumerProcess] = []

    def make(group_id: str, *, command: tuple[str, ...] | None = None, **env: str) -> ConsumerProcess:
        port = free_port()
        variables = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "CONSUMER_GROUP_ID": group_id,
            "CONSUMER_HTTP_PORT": str(port),
            "CONSUMER_BATCH_MAX_RECORDS": "100",
            "CONSUMER_GRACEFUL_TIMEOUT_SECONDS": "15",
            "CONSUMER_TRANSACTION_TIMEOUT_MS": "20000",
            # Generous, so a stall of a loaded machine does not evict a member mid-test.
            "CONSUMER_SESSION_TIMEOUT_MS": "30000",
            "CONSUMER_LOG_LEVEL": "INFO",
            **topics.env(),
            **env,
        }
        log = tmp_path / f"consumer-{len(started)}.log"
        process = (
            ConsumerProcess(variables, log, command)
            if command is not None
            else ConsumerProcess(variables, log)
        )
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill()


async def produce_slowly(bootstrap: str, topic: str, bodies: list[bytes], chunk: int = 200) -> None:
    """Produce in chunks with pauses, so the consumer is mid-stream for a while."""
    for start in range(0, len(bodies), chunk):
        await produce(bootstrap, topic, bodies[start : start + chunk])
        await asyncio.sleep(0.2)


async def wait_committed(bootstrap: str, group_id: str, topic: str, total: int, timeout: float = 120) -> None:
    async def done() -> bool:
        return sum((await committed_offsets(bootstrap, group_id, topic)).values()) >= total

    await wait_until(done, timeout=timeout, what=f"{total} committed inputs")


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
async def test_a_consumer_killed_mid_stream_and_restarted_loses_nothing(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
    guarantee: str,
) -> None:
    group = new_group_id()
    bodies = webhooks(4000)
    # Slow batches (each waits for the producer's linger), so the kill lands while batches are in flight.
    first = spawn(group, CONSUMER_PRODUCER_LINGER_MS="200", CONSUMER_PROCESSING_GUARANTEE=guarantee)
    await first.wait_ready()
    await produce_slowly(kafka_bootstrap, topics.raw, bodies[:2000])

    async def some_consumed() -> bool:
        return await first.metric("exam_events_consumer_records_consumed_total") >= 400

    await wait_until(some_consumed, what="the first consumer to get going")
    first.signal(signal.SIGKILL)
    first.wait(timeout=30)
    # The stream goes on after the kill, whatever the first consumer had managed by then.
    await produce_slowly(kafka_bootstrap, topics.raw, bodies[2000:])

    second = spawn(group, CONSUMER_PROCESSING_GUARANTEE=guarantee)
    await second.wait_ready()
    await wait_committed(kafka_bootstrap, group, topics.raw, len(bodies))

    expected = expected_ce_ids(bodies)
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    dlq = await read_records(kafka_bootstrap, topics.dlq)
    unrouted = await read_records(kafka_bootstrap, topics.unrouted)
    dead = sorted(b for b in bodies if b.startswith(b"not json"))
    no_handler = sorted(b for b in bodies if b"user.updated" in b)
    if guarantee == "exactly-once":
        assert ce_ids(records) == expected  # every event exactly once (read_committed)
        assert sorted(r.value or b"" for r in dlq) == dead
        assert sorted(r.value or b"" for r in unrouted) == no_handler
    else:
        assert set(ce_ids(records)) == set(expected)  # duplicates allowed, losses not
        assert {r.value for r in dlq} == set(dead)
        assert {r.value for r in unrouted} == set(no_handler)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
async def test_two_consumers_in_one_group_split_the_partitions_and_emit_every_event_once(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
    guarantee: str,
) -> None:
    group = new_group_id()
    one = spawn(group, CONSUMER_PROCESSING_GUARANTEE=guarantee)
    two = spawn(group, CONSUMER_PROCESSING_GUARANTEE=guarantee)

    async def split() -> bool:
        a, b = await one.readiness(), await two.readiness()
        counts: tuple[int, int] = (assigned(a), assigned(b))
        return min(counts) > 0 and sum(counts) == RAW_PARTITIONS

    await wait_until(split, what="both consumers to hold partitions")
    assignments = "exam_events_consumer_partition_assignments_total"
    before = [await p.metric(assignments) for p in (one, two)]
    bodies = webhooks(2000)
    await produce(kafka_bootstrap, topics.raw, bodies)
    await wait_committed(kafka_bootstrap, group, topics.raw, len(bodies))

    consumed = [await p.metric("exam_events_consumer_records_consumed_total") for p in (one, two)]
    rebalanced = [await p.metric(assignments) for p in (one, two)] != before
    expected = expected_ce_ids(bodies)
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert min(consumed) > 0  # both worked
    if guarantee == "exactly-once":
        assert ce_ids(records) == expected  # whatever the group did meanwhile
    elif not rebalanced:
        # Without a rebalance during the run no input may be handled twice: every event exactly once.
        assert sum(consumed) == len(bodies)
        assert ce_ids(records) == expected
    else:
        # A stall of the machine made the group rebalance: duplicates are allowed, losses are not, and
        # a duplicate is the same event (same ce_id) again.
        assert sum(consumed) >= len(bodies)
        assert set(ce_ids(records)) == set(expected)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
async def test_sigterm_mid_stream_finishes_the_batch_commits_leaves_the_group_and_exits_zero(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
    guarantee: str,
) -> None:
    group = new_group_id()
    bodies = webhooks(3000)
    await produce(kafka_bootstrap, topics.raw, bodies)
    # Each batch takes over a second (the producer lingers), so a batch is in flight at the signal.
    process = spawn(
        group,
        CONSUMER_BATCH_MAX_RECORDS="50",
        CONSUMER_PRODUCER_LINGER_MS="1000",
        CONSUMER_PROCESSING_GUARANTEE=guarantee,
    )

    async def some_consumed() -> bool:
        process.assert_running()
        return await process.metric("exam_events_consumer_records_consumed_total") >= 100

    await wait_until(some_consumed, what="the consumer to get going")
    log_size_at_signal = process.log_path.stat().st_size
    process.signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(process.wait, 30)

    assert returncode == 0, process.log_tail()
    # It left the group on the way out (a killed member would linger until its session timed out).
    assert await group_members(kafka_bootstrap, group) == 0
    committed = await committed_offsets(kafka_bootstrap, group, topics.raw)
    assert sum(committed.values()) >= 100
    assert "batch_handling_crashed" not in process.log_path.read_text()
    # The batch in flight at the signal was finished and committed, not cancelled.
    with process.log_path.open("rb") as log:
        log.seek(log_size_at_signal)
        after_signal = [json.loads(line) for line in log if line.startswith(b"{")]
    finished = [
        entry for entry in after_signal if entry.get("event") in {"batch_committed", "transaction_committed"}
    ]
    assert finished, process.log_tail()
    last_entry = finished[-1]
    spans = (
        last_entry["offsets"]
        if guarantee == "at-least-once"
        else {last_entry["partition"]: last_entry["offsets"]}
    )
    for name, span in spans.items():
        partition, last = int(name.rsplit("/", 1)[1]), int(span.split("-")[1])
        assert committed[partition] >= last + 1
    # Every committed input has its events on the derived topics.
    raw = await read_records(kafka_bootstrap, topics.raw, count=len(bodies))
    handled = [r.value or b"" for r in raw if r.offset < committed.get(r.partition, 0)]
    expected = expected_ce_ids(handled)
    records = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    assert set(expected) <= set(ce_ids(records))


async def test_the_process_refuses_to_start_when_an_output_topic_is_missing(
    kafka_bootstrap: str,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
    unique_name: Callable[[str], str],
) -> None:
    missing = unique_name("missing-dlq")
    process = spawn(new_group_id(), CONSUMER_DLQ_TOPIC=missing)

    returncode = await asyncio.to_thread(process.wait, 60)

    assert returncode != 0
    refusals = [line for line in process.log_path.read_text().splitlines() if "refusing_to_start" in line]
    assert len(refusals) == 1
    assert missing in refusals[0]


async def test_the_faststream_cli_runs_the_same_app_on_the_configured_port(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
    sample_body: bytes,
) -> None:
    # The CLI needs the `faststream[cli]` extra (typer); without it there is nothing to run.
    pytest.importorskip("typer", reason="faststream[cli] is not installed")
    faststream = str(Path(sys.executable).with_name("faststream"))
    group = new_group_id()
    await produce(kafka_bootstrap, topics.raw, [sample_body])
    process = spawn(group, command=(faststream, "run", "consumer.app:create_app", "--factory"))

    await process.wait_ready()
    await wait_committed(kafka_bootstrap, group, topics.raw, 1)
    process.signal(signal.SIGTERM)

    assert await asyncio.to_thread(process.wait, 30) == 0, process.log_tail()


def assigned(readiness: dict[str, Any]) -> int:
    """Partitions a consumer's /readyz says it holds (0 while it does not answer yet)."""
    return int(readiness.get("checks", {}).get("assigned_partitions", 0))
