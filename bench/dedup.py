#!/usr/bin/env python3
"""The exactly-once dedup store: memory per entry, and the time to restore it from its changelog.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/dedup.py -n 1000000

1. Memory: fills a `consumer.dedup.DedupStore` with N ce_ids (UUIDv5, as the consumer makes them)
   and measures the allocated bytes with tracemalloc; prints bytes per entry and the figure for
   one million entries.
2. Restore: writes N changelog records (key: the ce_id, value: the event type, as the consumer
   writes them) to partition 0 of a fresh topic in transactions of 1,000 records, then times
   `consumer.dedup.restore` (read_committed, from the beginning), `--rounds` times; prints the
   median and the rate. The broker is real (`--bootstrap`); nothing else is running.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.kafka import KafkaConnectionSettings  # noqa: E402
from consumer.dedup import DedupStore, id_bytes, restore  # noqa: E402

NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


def ce_ids(count: int) -> list[str]:
    return [
        str(uuid.uuid5(NAMESPACE, f"portal|att_{i}|2026-06-14T09:30:00Z|exam.result.failed"))
        for i in range(count)
    ]


def memory_per_entry(ids: list[str]) -> float:
    """Bytes allocated per entry by a store holding `ids` (the id strings themselves excluded)."""
    keys = [id_bytes(ce_id) for ce_id in ids]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = DedupStore(window_seconds=168 * 3600)
    published = int(time.time() * 1000)
    for start in range(0, len(keys), 500):  # one batch's ids at a time, as the consumer adds them
        store.add(keys[start : start + 500], published + start)
    # The keys were allocated before tracing; count them too, as the store owns them once restored.
    allocated = tracemalloc.get_traced_memory()[0] - before + sum(sys.getsizeof(key) for key in keys)
    tracemalloc.stop()
    assert len(store) == len(ids)
    return allocated / len(ids)


async def write_changelog(bootstrap: str, topic: str, ids: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact,delete"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"bench-dedup-{uuid.uuid4().hex[:8]}", linger_ms=5
    )
    await producer.start()
    try:
        for start in range(0, len(ids), 1000):
            async with producer.transaction():
                batch = producer.create_batch()
                futures = []
                for ce_id in ids[start : start + 1000]:
                    if batch.append(key=ce_id.encode(), value=b"exam.result.failed", timestamp=None) is None:
                        futures.append(await producer.send_batch(batch, topic, partition=0))
                        batch = producer.create_batch()
                        batch.append(key=ce_id.encode(), value=b"exam.result.failed", timestamp=None)
                futures.append(await producer.send_batch(batch, topic, partition=0))
                await asyncio.gather(*futures)
            if start % 100_000 == 0:
                print(f"  changelog: {start}/{len(ids)} written", flush=True)
    finally:
        await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--entries", type=int, default=1_000_000, help="ce_ids in the store")
    parser.add_argument("--rounds", type=int, default=3, help="restores timed; the median is reported")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="broker"
    )
    args = parser.parse_args()
    ids = ce_ids(args.entries)

    per_entry = memory_per_entry(ids)
    print(f"memory: {per_entry:.0f} bytes per entry; {per_entry * 1e6 / 2**20:.0f} MiB per million entries")

    topic = f"bench.dedup.{uuid.uuid4().hex[:8]}"
    print(f"writing {args.entries} changelog records to {topic} on {args.bootstrap}", flush=True)
    await write_changelog(args.bootstrap, topic, ids)
    kafka = KafkaConnectionSettings(bootstrap_servers=args.bootstrap)
    seconds = []
    for round_number in range(1, args.rounds + 1):
        store = DedupStore(window_seconds=168 * 3600)
        started = time.perf_counter()
        read = await restore(kafka, topic, {0: store}, timeout_seconds=600)
        seconds.append(time.perf_counter() - started)
        assert len(store) == args.entries, (len(store), args.entries)
        print(
            f"  round {round_number}: restored {read[0]} records, {len(store)} entries in {seconds[-1]:.2f} s"
        )
    median = statistics.median(seconds)
    print(
        f"restore: {args.entries} entries in {median:.2f} s (median of {len(seconds)}; "
        f"{args.entries / median:,.0f} entries/s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
