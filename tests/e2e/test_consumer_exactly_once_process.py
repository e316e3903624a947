"""Exactly-once with real processes: SIGKILL mid-transaction, and a zombie that wakes up to commit.

The consumer under test stops itself right before a transaction commit
(`tests.support.pausing_consumer`), so the failure lands mid-transaction by construction. Outputs
are read as downstream services must read them: isolation_level=read_committed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import free_port
from tests.support.consumer_harness import (
    ConsumerProcess,
    ConsumerTopics,
    ce_ids,
    committed_offsets,
    expected_outputs,
    make_consumer_topics,
    read_derived,
    wait_until,
)
from tests.support.kafka_io import produce
from tests.support.webhooks import encode, results_released

RAW_PARTITIONS = 2
PAUSING = (sys.executable, "-m", "tests.support.pausing_consumer")


def webhooks(count: int) -> list[bytes]:
    return [
        encode(
            results_released(passed=i % 3 != 0, resit_count=i % 3, user_id=f"usr_{i}", attempt_id=f"att_{i}")
        )
        for i in range(count)
    ]


def expected_ce_ids(bodies: list[bytes]) -> Counter[str]:
    return Counter(dict(r.headers)["ce_id"].decode() for r in expected_outputs(bodies))


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    return await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=RAW_PARTITIONS)


@pytest.fixture
def spawn(
    kafka_bootstrap: str, topics: ConsumerTopics, tmp_path: Path
) -> Iterator[Callable[..., ConsumerProcess]]:
    """Factory of exactly-once consumer processes; every one is continued and killed at teardown."""
    started: list[ConsumerProcess] = []

    def make(group_id: str, *, command: tuple[str, ...] | None = None, **env: str) -> ConsumerProcess:
        variables = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "CONSUMER_GROUP_ID": group_id,
            "CONSUMER_HTTP_PORT": str(free_port()),
            "CONSUMER_PROCESSING_GUARANTEE": "exactly-once",
            "CONSUMER_BATCH_MAX_RECORDS": "50",
            "CONSUMER_GRACEFUL_TIMEOUT_SECONDS": "15",
            # The broker's own abort of the stalled transaction comes after the new owner's fence.
            "CONSUMER_TRANSACTION_TIMEOUT_MS": "28000",
            # Short, so the stalled member is evicted quickly.
            "CONSUMER_SESSION_TIMEOUT_MS": "6000",
            "PAUSE_MARKER": str(tmp_path / f"paused-{len(started)}"),
            **topics.env(),
            **env,
        }
        log = tmp_path / f"consumer-{len(started)}.log"
        process = ConsumerProcess(variables, log, command) if command else ConsumerProcess(variables, log)
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.signal(signal.SIGCONT)
        process.kill()


async def paused(process: ConsumerProcess) -> None:
    marker = Path(process.env["PAUSE_MARKER"])

    async def stopped_mid_transaction() -> bool:
        process.assert_running()
        return await asyncio.to_thread(marker.exists)

    await wait_until(stopped_mid_transaction, timeout=60, what="the consumer to stop before a commit")


async def all_committed(bootstrap: str, group: str, topic: str, total: int) -> None:
    async def done() -> bool:
        return sum((await committed_offsets(bootstrap, group, topic)).values()) >= total

    await wait_until(done, timeout=120, what=f"{total} committed inputs")


async def test_a_consumer_killed_mid_transaction_leaves_nothing_visible_and_its_successor_emits_each_once(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
) -> None:
    group = new_group_id()
    bodies = webhooks(400)
    await produce(kafka_bootstrap, topics.raw, bodies)
    doomed = spawn(group, command=PAUSING, PAUSE_AT_COMMIT="3")
    await paused(doomed)

    doomed.signal(signal.SIGKILL)  # records produced, offsets added, commit never sent
    doomed.wait(timeout=30)
    successor = spawn(group)
    await all_committed(kafka_bootstrap, group, topics.raw, len(bodies))

    expected = expected_ce_ids(bodies)
    committed_view = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    written = await read_derived(
        kafka_bootstrap,
        topics,
        count=sum(expected.values()) + 1,
        timeout=5,
        isolation_level="read_uncommitted",
    )
    assert ce_ids(committed_view) == expected  # every event exactly once
    assert len(written) > len(committed_view)  # the killed transaction did write; it was aborted
    successor.assert_running()


async def test_a_zombie_that_wakes_up_to_commit_is_fenced_and_its_records_stay_invisible(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    spawn: Callable[..., ConsumerProcess],
    new_group_id: Callable[[], str],
) -> None:
    group = new_group_id()
    bodies = webhooks(400)
    await produce(kafka_bootstrap, topics.raw, bodies)
    zombie = spawn(group, command=PAUSING, PAUSE_AT_COMMIT="3")
    await paused(zombie)  # stalled mid-transaction; its heartbeats stop

    # The group evicts the stalled member after its session timeout; the new member takes every
    # partition, which fences the zombie's producers, and handles everything from the committed offsets.
    successor = spawn(group)
    await all_committed(kafka_bootstrap, group, topics.raw, len(bodies))
    zombie.signal(signal.SIGCONT)  # it wakes up and commits its transaction

    async def zombie_rejoined_or_refused() -> bool:
        zombie.assert_running()
        text = zombie.log_path.read_text()
        return "transaction_abandoned" in text or "producer_fenced" in text

    await wait_until(zombie_rejoined_or_refused, timeout=60, what="the zombie's commit to be refused")
    await asyncio.sleep(2)
    expected = expected_ce_ids(bodies)
    committed_view = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()))
    written = await read_derived(
        kafka_bootstrap,
        topics,
        count=sum(expected.values()) + 1,
        timeout=5,
        isolation_level="read_uncommitted",
    )
    assert ce_ids(committed_view) == expected  # the zombie's late commit did not duplicate anything
    assert len(written) > len(committed_view)  # ... though its records were written
    assert sum((await committed_offsets(kafka_bootstrap, group, topics.raw)).values()) == len(bodies)
    successor.assert_running()
