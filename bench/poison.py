#!/usr/bin/env python3
"""What a webhook whose derived records cannot be stored costs the partitions it shares, side by side
with the same input without one.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/poison.py -n 3000 --rounds 3

Puts N ordinary Exam Results Released webhooks on a fresh raw topic of `--partitions` partitions
(12 by default), and, in the poisoned cases, one webhook per `--every` whose exam name (20 KB) makes
each derived record larger than the derived topics take (16 KiB, set on them for the run). Then per
round and processing guarantee, a consumer (`consumer.app.create_app`, in this process, its own
group and output topics) runs until the whole topic is committed, in three cases:

- clean: no poisoned webhook;
- too-large: poisoned webhooks, found by planning against the limits read at start-up
  (dead-lettered as `OutputTooLarge` before anything is produced);
- refused: the same webhooks, with the limits hidden from the start-up check (as when a limit is
  lowered after start-up): the broker refuses a batch, the consumer reads the limits again and plans
  the batch again against them (`OutputTooLarge`).

Prints each case's seconds from the consumer's start to the last commit, as medians of the rounds,
and their ratio to the clean case of the same rounds; checks every ordinary webhook was derived
(read_committed) and every poisoned one dead-lettered with its reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.logging import configure_logging  # noqa: E402
from consumer import app as app_module  # noqa: E402
from consumer.app import create_app  # noqa: E402
from consumer.settings import ConsumerSettings  # noqa: E402
from consumer.topics import check_topics  # noqa: E402
from tests.support.consumer_harness import (  # noqa: E402
    ConsumerTopics,
    committed_offsets,
    consumer_settings,
    expected_outputs,
    make_consumer_topics,
    running,
)
from tests.support.kafka_io import read_records, set_max_message_bytes  # noqa: E402
from tests.support.webhooks import encode, results_released  # noqa: E402

DERIVED_LIMIT = 16 * 1024
CASES = ("clean", "too-large", "refused")
MODES = ("at-least-once", "exactly-once")


def ordinary(count: int, run: str) -> list[bytes]:
    return [
        encode(
            results_released(
                passed=i % 3 != 0, resit_count=i % 2, user_id=f"{run}-u{i}", attempt_id=f"{run}-a{i}"
            )
        )
        for i in range(count)
    ]


def poisoned(count: int, run: str) -> list[bytes]:
    bodies = []
    for i in range(count):
        body = results_released(passed=False, user_id=f"{run}-p{i}", attempt_id=f"{run}-pa{i}")
        body["exam"]["name"] = "x" * 20_000
        bodies.append(encode(body))
    return bodies


async def run_case(
    bootstrap: str, bodies: list[bytes], partitions: int, mode: str, case: str, unique: Callable[[str], str]
) -> tuple[float, ConsumerTopics]:
    """Seconds from the consumer's start to the whole raw topic committed."""
    topics = await make_consumer_topics(bootstrap, unique, raw_partitions=partitions)
    derived = [topics.passed, topics.failed, topics.resits, topics.xapi]
    await set_max_message_bytes(bootstrap, derived, DERIVED_LIMIT)
    await produce_keyed(bootstrap, topics.raw, bodies)
    settings = consumer_settings(bootstrap, topics, unique("group"), processing_guarantee=mode)

    async def without_limits(given: ConsumerSettings) -> dict[str, int]:
        await check_topics(given)
        return {}

    with pytest.MonkeyPatch.context() as patch:
        if case == "refused":
            patch.setattr(app_module, "check_topics", without_limits)
        started = time.perf_counter()
        async with running(create_app(settings), timeout=60):
            await wait_committed(bootstrap, settings, len(bodies))
        return time.perf_counter() - started, topics


async def produce_keyed(bootstrap: str, topic: str, bodies: list[bytes]) -> None:
    """Each body keyed by its learner, as the ingress keys it, so it lands on its learner's partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, body, key=json.loads(body)["user"]["id"].encode()) for body in bodies
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_committed(bootstrap: str, settings: ConsumerSettings, total: int) -> None:
    deadline = time.monotonic() + 600
    while sum((await committed_offsets(bootstrap, settings.group_id, settings.raw_topic)).values()) < total:
        if time.monotonic() > deadline:
            raise TimeoutError("the raw topic was not committed within 600 s")
        await asyncio.sleep(0.2)


async def check_outputs(
    bootstrap: str, topics: ConsumerTopics, clean: list[bytes], poison: list[bytes], case: str, mode: str
) -> None:
    expected = {dict(r.headers)["ce_id"].decode() for r in expected_outputs(clean)}
    derived = [
        r
        for t in (topics.passed, topics.failed, topics.resits, topics.xapi)
        for r in await read_records(bootstrap, t, idle=0.5, timeout=60)
    ]
    seen = [r.headers["ce_id"].decode() for r in derived]
    assert set(seen) == expected, f"{case}/{mode}: {len(set(seen))} of {len(expected)} ce_ids derived"
    if mode == "exactly-once":
        assert len(seen) == len(expected), f"{case}/{mode}: {len(seen) - len(expected)} duplicates"
    dead = await read_records(bootstrap, topics.dlq, idle=0.5, timeout=60)
    reason = None if case == "clean" else b"OutputTooLarge"
    kinds = sorted((r.headers.get("dlq-source-partition"), r.headers.get("dlq-source-offset")) for r in dead)
    assert len(dead) == len(poison if reason else []), f"{case}/{mode}: {len(dead)} dead letters: {kinds}"
    assert all(r.headers["dlq-error-type"] == reason for r in dead), f"{case}/{mode}: wrong reason"


async def main_async(args: argparse.Namespace) -> None:
    bootstrap = args.bootstrap
    seconds: dict[tuple[str, str], list[float]] = {(mode, case): [] for mode in MODES for case in CASES}
    for round_number in range(1, args.rounds + 1):
        for mode in MODES:
            for case in CASES:
                run = uuid.uuid4().hex[:8]
                clean = ordinary(args.events, run)
                poison = [] if case == "clean" else poisoned(max(1, args.events // args.every), run)
                bodies = clean[:]
                # Spread the poisoned webhooks through the input, as they would arrive.
                step = max(1, len(clean) // max(1, len(poison)))
                for i, body in enumerate(poison):
                    bodies.insert(i * (step + 1), body)

                def unique(prefix: str, run: str = run) -> str:
                    return f"bench.poison.{prefix}.{run}.{uuid.uuid4().hex[:6]}"

                elapsed, topics = await run_case(bootstrap, bodies, args.partitions, mode, case, unique)
                await check_outputs(bootstrap, topics, clean, poison, case, mode)
                seconds[(mode, case)].append(elapsed)
                print(f"round {round_number} {mode:13} {case:9} {elapsed:6.2f} s", flush=True)
    print()
    poisoned_count = max(1, args.events // args.every)
    print(f"{args.events} ordinary webhooks, {poisoned_count} poisoned, {args.partitions} partitions")
    print("mode           case       median s  ratio to clean (median of per-round ratios)")
    for mode in MODES:
        for case in CASES:
            runs = seconds[(mode, case)]
            ratios = [r / c for r, c in zip(runs, seconds[(mode, "clean")], strict=True)]
            print(f"{mode:14} {case:10} {statistics.median(runs):8.2f}  {statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=None, help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("-n", "--events", type=int, default=3000, help="ordinary webhooks per run")
    parser.add_argument(
        "--every", type=int, default=500, help="one poisoned webhook per this many ordinary ones"
    )
    parser.add_argument("--partitions", type=int, default=12, help="partitions of the raw topic")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    args = parser.parse_args()
    args.bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not args.bootstrap:
        parser.error("give --bootstrap or set KAFKA_BOOTSTRAP_SERVERS (scripts/kafka-local start prints one)")
    configure_logging("bench", os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
