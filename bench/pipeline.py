#!/usr/bin/env python3
"""Benchmark the results consumer against a raw aiokafka pass-through on the same broker, same input.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/pipeline.py -n 20000 --rounds 3

Puts N realistic Exam Results Released webhooks (passes, fails with and without resits, resit
passes, withheld grades, revoked attempts) on a fresh raw topic, then per round:
- baseline: in this process, aiokafka `getmany(max_records=500)`, produce every record to another
  topic with acks=all (idempotent), await the acks, commit; CPU is this process's CPU time;
- decoding: the same, but each body is decoded once with `json.loads` and produced as many times as
  the rules make records of it (about 2.8), so it writes what the consumer writes: the fairer
  baseline of a consumer that must read every body (issue 11's);
- consumer, in each processing guarantee (`--modes`, default at-least-once then exactly-once):
  `python -m consumer` as a subprocess in a fresh group, with fresh output and dedup topics; CPU is
  the subprocess's utime + stime from /proc, measured from when its HTTP port answers (start-up
  excluded) until the broker shows the whole topic committed; records consumed before that first
  reading are left out.
Prints input events/s and CPU seconds per input event of each, each mode's ratio to both baselines
of the same rounds (medians of the per-round ratios), and checks that the consumer wrote exactly the
records its rules require (read with isolation_level=read_committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import parse_checkouts  # noqa: E402
from tests.support.broker import free_port  # noqa: E402
from tests.support.consumer_harness import expected_outputs  # noqa: E402
from tests.support.kafka_io import create_topics  # noqa: E402
from tests.support.webhooks import encode, results_released  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OUTPUTS = ("passed", "failed", "resits", "xapi", "dlq", "unrouted")
SHORT = {"at-least-once": "at-least", "exactly-once": "exactly"}


@dataclass
class Figures:
    """One run's throughput and CPU cost, per input event."""

    name: str
    events: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_event(self) -> float:
        return self.cpu_seconds / self.events

    def line(self) -> str:
        return (
            f"{self.name:<10} {self.events:>7} events in {self.seconds:6.2f} s = {self.rate:8.0f} events/s, "
            f"{self.cpu_per_event * 1e6:6.0f} us CPU/event"
        )


def webhooks(count: int) -> list[bytes]:
    """Realistic bodies with the mix a real portal might send (about 1.7 derived events each)."""
    return [
        encode(
            results_released(
                passed=i % 3 != 0,
                resit_count=i % 4,
                revoked=i % 50 == 0,
                publish_grade=i % 7 != 0,
                user_id=f"usr_{i % 5000:06d}",
                attempt_id=f"att_{i:08d}",
                released_at=f"2026-06-14T09:{i % 60:02d}:00.000Z",
            )
        )
        for i in range(count)
    ]


def bench_producer(bootstrap: str) -> AIOKafkaProducer:
    """The producer of the input and of the baseline: acks=all, idempotent, batches filled."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


async def fill(bootstrap: str, topic: str, bodies: list[bytes]) -> None:
    producer = bench_producer(bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, body) for body in bodies]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed_total(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def committed_records(bootstrap: str, topics: list[str]) -> int:
    """Records on the topics as a downstream reader sees them (read_committed; markers not counted)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            count += sum(len(records) for records in batch.values())
        return count
    finally:
        await consumer.stop()


async def baseline(
    bootstrap: str, raw: str, out: str, total: int, emits: dict[bytes, int] | None = None
) -> Figures:
    """Consume, produce with acks=all, await the acks, commit: per batch of 500.

    Without `emits`, each record is produced once as it is (the pass-through). With it (the
    decoding pass-through), each body is decoded once with `json.loads` and produced as many times
    as the rules make records of it (`emits[body]`), so both sides write as many records.
    """
    consumer = AIOKafkaConsumer(
        raw,
        bootstrap_servers=bootstrap,
        group_id=f"bench-baseline-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = bench_producer(bootstrap)
    await consumer.start()
    await producer.start()
    try:
        done, started, cpu_started = 0, 0.0, 0.0
        while done < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            if not batch:
                continue
            if not started:
                started, cpu_started = time.perf_counter(), time.process_time()
            futures = []
            for records in batch.values():
                for r in records:
                    copies = 1
                    if emits is not None:
                        json.loads(r.value or b"")
                        copies = emits[r.value or b""]
                    for _ in range(copies):
                        futures.append(await producer.send(out, r.value, key=r.key, headers=list(r.headers)))
            await asyncio.gather(*futures)
            await consumer.commit()
            done += sum(len(records) for records in batch.values())
        name = "baseline" if emits is None else "decoding"
        return Figures(name, total, time.perf_counter() - started, time.process_time() - cpu_started)
    finally:
        await producer.stop()
        await consumer.stop()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


async def consumed_so_far(client: httpx.AsyncClient, port: int) -> int | None:
    try:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.HTTPError:
        return None
    for line in response.text.splitlines():
        if line.startswith("exam_events_consumer_records_consumed_total "):
            return int(float(line.split()[1]))
    return None


async def consumer_run(
    bootstrap: str, topics: dict[str, str], total: int, log: Path, guarantee: str, root: Path = ROOT
) -> Figures:
    """`python -m consumer` in a fresh group, timed from its first HTTP answer to the final commit."""
    group = f"bench-consumer-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CONSUMER_GROUP_ID": group,
        "CONSUMER_HTTP_PORT": str(port),
        "CONSUMER_LOG_LEVEL": "INFO",
        "CONSUMER_PROCESSING_GUARANTEE": guarantee,
        **{f"CONSUMER_{name.upper()}_TOPIC": topic for name, topic in topics.items()},
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "consumer"], cwd=root, env=env, stdout=out, stderr=out)  # noqa: ASYNC220
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while (first := await consumed_so_far(client, port)) is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"consumer exited early; see {log}")
                await asyncio.sleep(0.02)
            started, cpu_started = time.perf_counter(), process_cpu_seconds(proc.pid)
            last_report = started
            while (committed := await committed_total(bootstrap, group)) < total:
                if proc.poll() is not None:
                    raise RuntimeError(f"consumer exited early; see {log}")
                if time.perf_counter() - last_report >= 1.0:
                    last_report = time.perf_counter()
                    print(f"  consumer: {committed}/{total} committed", flush=True)
                await asyncio.sleep(0.05)
            seconds, cpu = time.perf_counter() - started, process_cpu_seconds(proc.pid) - cpu_started
        return Figures(SHORT[guarantee], total - first, seconds, cpu)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--events", type=int, default=20_000, help="webhooks on the raw topic")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of every topic")
    parser.add_argument("--rounds", type=int, default=3, help="baseline/consumer pairs; medians are reported")
    parser.add_argument(
        "--modes",
        default="at-least-once,exactly-once",
        help="processing guarantees to measure, comma-separated (default: both)",
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="broker"
    )
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the consumer of another checkout of the project (e.g. a git worktree of an earlier "
        "commit) in every round, to compare a change side by side; repeatable",
    )
    args = parser.parse_args()
    bootstrap, total = args.bootstrap, args.events
    checkouts = parse_checkouts(parser, args.checkout, "consumer")
    checkout_tags = {label: f"c{n}" for n, label in enumerate(checkouts)}

    suffix = uuid.uuid4().hex[:8]
    raw = f"bench.raw.{suffix}"
    print(f"creating topics on {bootstrap} ({args.partitions} partitions each)", flush=True)
    await create_topics(bootstrap, [raw], args.partitions)
    bodies = webhooks(total)
    print(
        f"producing {total} webhooks ({sum(map(len, bodies)) / total:.0f} bytes on average) to {raw}",
        flush=True,
    )
    await fill(bootstrap, raw, bodies)
    expected = expected_outputs(bodies)
    print(
        f"the rules turn them into {len(expected)} records ({len(expected) / total:.2f} per webhook)",
        flush=True,
    )
    emits = {body: len(expected_outputs([body])) for body in bodies}

    rounds: list[dict[str, Figures]] = []
    for round_number in range(1, args.rounds + 1):
        passthrough = f"bench.passthrough.{suffix}.{round_number}"
        await create_topics(bootstrap, [passthrough], args.partitions)
        print(f"round {round_number}: baseline (aiokafka pass-through)", flush=True)
        figures = {"baseline": await baseline(bootstrap, raw, passthrough, total)}
        print("  " + figures["baseline"].line(), flush=True)
        print(
            f"round {round_number}: decoding pass-through (json.loads, as many records as the rules)",
            flush=True,
        )
        decoded = f"bench.decoding.{suffix}.{round_number}"
        await create_topics(bootstrap, [decoded], args.partitions)
        figures["decoding"] = await baseline(bootstrap, raw, decoded, total, emits)
        print("  " + figures["decoding"].line(), flush=True)
        for label, root in checkouts.items():
            for guarantee in args.modes.split(","):
                name = guarantee if label == "." else f"{guarantee} [{label}]"
                tag = f"{round_number}.{SHORT[guarantee]}.{checkout_tags[label]}"
                outputs = {topic: f"bench.{topic}.{suffix}.{tag}" for topic in OUTPUTS}
                dedup = f"bench.dedup.{suffix}.{tag}"
                await create_topics(bootstrap, [*outputs.values(), dedup], args.partitions)
                print(f"round {round_number}: consumer, {name} (python -m consumer in {root})", flush=True)
                log = Path(f"/tmp/bench-consumer-{suffix}-{tag}.log")
                ours = await consumer_run(
                    bootstrap, {"raw": raw, "dedup": dedup, **outputs}, total, log, guarantee, root
                )
                print("  " + ours.line(), flush=True)
                written = await committed_records(bootstrap, list(outputs.values()))
                if written != len(expected):
                    raise SystemExit(f"consumer wrote {written} records, the rules require {len(expected)}")
                print(
                    f"  checked: {written} records on the output topics (read_committed), as required",
                    flush=True,
                )
                figures[name] = ours
        rounds.append(figures)

    print()
    print(f"medians over {len(rounds)} round(s), {total} webhooks, {args.partitions} partitions:")
    for name in rounds[0]:
        rate = statistics.median(r[name].rate for r in rounds)
        cpu = statistics.median(r[name].cpu_per_event for r in rounds)
        line = f"  {name:<14} {rate:8.0f} events/s  {cpu * 1e6:6.0f} us CPU/event"
        for base in ("decoding", "baseline") if name not in ("baseline", "decoding") else ():
            ratios = sorted(r[name].rate / r[base].rate for r in rounds)
            line += (
                f"  {statistics.median(ratios):.2f} of {base}"
                f" (per round {', '.join(f'{x:.2f}' for x in ratios)})"
            )
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
