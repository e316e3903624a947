#!/usr/bin/env python3
"""End-to-end latency: POST of a webhook to its derived record, readable read_committed downstream.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/latency.py --rates 200,2000 --seconds 10

Per processing guarantee (`--modes`, default exactly-once then at-least-once): fresh topics (raw 3
partitions) on the broker, `python -m ingress` and `python -m consumer` as subprocesses (loopback,
Basic auth, every other setting from this environment, `--set NAME=VALUE` on top). Then, per rate
(`--rates`), open-loop: webhook i is sent at start + i/rate whether or not earlier answers came
(a fixed pool of keep-alive connections; `--poisson`: random gaps of that mean instead), each a
realistic Exam Results Released body with its own attempt id (pass or fail, various resit
counts, never revoked, so each makes exactly one exam.result.passed or exam.result.failed).

Measured per webhook, on this process's clock (time.perf_counter):
- ingress: from just before the request's first byte is written to the end of its 202;
- end to end: from the same instant to when a reader in this process (an aiokafka consumer,
  isolation_level=read_committed, no group, assigned the passed and failed topics) receives the
  webhook's first derived record, matched by its ce_subject header (the attempt id). In
  exactly-once mode that includes the consumer's transaction commit: a read_committed reader sees
  nothing before it.
The first `--warmup-seconds` of each rate are sent but left out. Prints, per mode and rate,
p50/p90/p99/max of both, the achieved rate, CPU of the client (this process: sender and reader),
of the ingress and of the consumer (percent of one core), and the consumer's mean batch size and
duration (receipt to commit, its exam_events_consumer_batch_seconds).
`--json FILE` writes every figure (`-` for stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._chaos_support import Child  # noqa: E402
from bench._common import read_answer  # noqa: E402
from tests.support.broker import free_port  # noqa: E402
from tests.support.consumer_harness import ConsumerTopics, make_consumer_topics  # noqa: E402
from tests.support.webhooks import encode, results_released  # noqa: E402

USERNAME, PASSWORD = "latency-bench", "latency-bench-password"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ATTEMPT, USER = "att_PLACEHOLDER_0000000000", "usr_PLACEHOLDER_000000"  # replaced per request
PROCESS_TIMEOUT = 60.0  # start-up and shutdown of each subprocess
MAX_SECONDS = 300  # per rate, so a typo cannot run for hours


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (nearest rank), or NaN when empty."""
    if not values:
        return {k: float("nan") for k in ("p50", "p90", "p99", "max")}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1] * 1000}


class Requests:
    """Complete HTTP/1.1 requests built from a few templates, so building one costs a replace."""

    def __init__(self, run: str) -> None:
        token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        self.head = (
            "POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: %d\r\n\r\n"
        )
        self.run = run
        # Passes and fails with and without resits: the consumer's usual mix of work, one result each.
        self.templates = [
            encode(results_released(passed=p, resit_count=r, attempt_id=ATTEMPT, user_id=USER))
            for p, r in ((True, 0), (False, 0), (True, 1), (False, 2), (False, 5), (True, 0))
        ]

    def attempt_id(self, n: int) -> str:
        return f"att_{self.run}_{n:09d}"  # as long as ATTEMPT: Content-Length stays the template's

    def build(self, n: int) -> bytes:
        body = (
            self.templates[n % len(self.templates)]
            .replace(ATTEMPT.encode(), self.attempt_id(n).encode())
            .replace(USER.encode(), f"usr_{n % 100_000:018d}".encode())
        )
        return (self.head % len(body)).encode() + body


class Connections:
    """A fixed pool of keep-alive connections to the ingress. A request waits for an idle connection
    when none is free, which shows as schedule lag."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.opened = 0
        self.reopening: set[asyncio.Task[None]] = set()  # held, so they are not collected mid-way

    async def open(self, count: int) -> None:
        for _ in range(count):
            self.idle.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
            self.opened += 1

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.idle.get()

    def give_back(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], ok: bool) -> None:
        if ok:
            self.idle.put_nowait(connection)
            return
        # The server may have closed it (a 503 says Connection: close): replace it, keeping the count.
        connection[1].close()
        self.opened -= 1
        task = asyncio.get_running_loop().create_task(self.open(1))
        self.reopening.add(task)
        task.add_done_callback(self.reopening.discard)

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


async def post(
    connections: Connections, request: bytes, sent: dict[str, float], answered: dict[str, float], key: str
) -> int:
    """One POST on a pooled connection; records when it was written and when its answer ended."""
    connection = await connections.take()
    reader, writer = connection
    ok = False
    try:
        sent[key] = time.perf_counter()
        writer.write(request)
        status = await read_answer(reader)
        answered[key] = time.perf_counter()
        ok = status == 202
        return status
    finally:
        connections.give_back(connection, ok)


@dataclass
class RateResult:
    """The figures of one rate in one mode."""

    mode: str
    target_rate: int
    sent: int  # measured webhooks (after the warm-up)
    achieved_rate: float
    e2e_ms: dict[str, float]
    ingress_ms: dict[str, float]
    schedule_lag_ms: dict[str, float]  # how late the client sent against its schedule
    missing: int  # measured webhooks whose derived record never came (within the drain bound)
    not_202: int
    connections: int
    client_cpu_percent: float
    ingress_cpu_percent: float
    consumer_cpu_percent: float
    records_per_batch: float
    batch_ms: float  # mean time from receiving a batch to committing it (the consumer's histogram)
    load_average: float  # the machine's 1-minute load average at the end: how shared the cores were

    def line(self) -> str:
        e, i = self.e2e_ms, self.ingress_ms
        return (
            f"  {self.mode:<13} {self.target_rate:>5}/s (achieved {self.achieved_rate:7.1f}/s, "
            f"n={self.sent}): end-to-end p50 {e['p50']:6.1f} p90 {e['p90']:6.1f} p99 {e['p99']:6.1f} "
            f"max {e['max']:7.1f} ms | "
            f"ingress p50 {i['p50']:5.1f} p99 {i['p99']:6.1f} ms | missing {self.missing}, non-202 "
            f"{self.not_202} | CPU client {self.client_cpu_percent:.0f}% ingress "
            f"{self.ingress_cpu_percent:.0f}% consumer {self.consumer_cpu_percent:.0f}% | "
            f"{self.records_per_batch:.1f} records/batch of {self.batch_ms:.1f} ms, "
            f"schedule lag p99 {self.schedule_lag_ms['p99']:.1f} ms, load average {self.load_average:.1f}"
        )


class Reader:
    """A downstream reader of the passed and failed topics (read_committed), stamping first arrivals."""

    def __init__(self, bootstrap: str, topics: Sequence[str], fetch_max_wait_ms: int) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self.topics = topics
        self.received: dict[str, float] = {}
        self.arrived = asyncio.Event()  # set whenever records came
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        tps = [TopicPartition(t, p) for t in self.topics for p in range(3)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=1000, max_records=10_000)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    for name, value in record.headers:
                        if name == "ce_subject":
                            self.received.setdefault(value.decode(), now)
                            break
            if batch:
                self.arrived.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()


COUNTERS = {
    "exam_events_consumer_records_consumed_total": "records",
    "exam_events_consumer_batches_total": "batches",
    "exam_events_consumer_batch_seconds_sum": "batch_seconds",
    "exam_events_consumer_batch_seconds_count": "timed_batches",
}


async def consumer_counters(client: httpx.AsyncClient, port: int) -> dict[str, float]:
    """Records consumed, batches, and the batch_seconds histogram's sum and count from /metrics."""
    response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    values = dict.fromkeys(COUNTERS.values(), 0.0)
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS:
            values[COUNTERS[name]] = float(value)
    return values


async def run_rate(
    mode: str,
    rate: int,
    args: argparse.Namespace,
    requests: Requests,
    first: int,
    connections: Connections,
    reader: Reader,
    ingress: Child,
    consumer: Child,
) -> tuple[RateResult, int]:
    """Send open-loop at `rate` for warm-up + measured seconds; wait (bounded) for every derived record."""
    total = int(rate * (args.warmup_seconds + args.seconds))
    warm = int(rate * args.warmup_seconds)
    offsets = send_offsets(rate, total, poisson=args.poisson, seed=first)
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    scheduled: dict[str, float] = {}
    tasks: list[asyncio.Task[int]] = []
    async with httpx.AsyncClient() as client:
        counters = await consumer_counters(client, consumer.port)
        cpu = (time.process_time(), cpu_seconds(ingress.pid), cpu_seconds(consumer.pid))
        started = time.perf_counter()
        last_report = started
        n = 0
        while n < total:
            now = time.perf_counter()
            # Catch up on every send that is due: the schedule, not the answers, paces the client.
            while n < total and started + offsets[n] <= now:
                key = requests.attempt_id(first + n)
                scheduled[key] = started + offsets[n]
                tasks.append(
                    asyncio.create_task(post(connections, requests.build(first + n), sent, answered, key))
                )
                n += 1
            if now - last_report >= 1.0:
                last_report = now
                print(
                    f"    {mode} {rate}/s: {n}/{total} sent, {len(answered)} answered, "
                    f"{sum(1 for k in sent if k in reader.received)} derived records read",
                    flush=True,
                )
            if n < total:
                await asyncio.sleep(max(0.0, started + offsets[n] - time.perf_counter()))
        statuses = await asyncio.gather(*tasks, return_exceptions=True)
        # CPU while sending and answering: the drain below would dilute it.
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu[0]
        ingress_cpu = cpu_seconds(ingress.pid) - cpu[1]
        consumer_cpu = cpu_seconds(consumer.pid) - cpu[2]
        deadline = time.perf_counter() + args.drain_seconds
        while (left := deadline - time.perf_counter()) > 0 and any(k not in reader.received for k in sent):
            reader.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.arrived.wait(), left)
        counted = await consumer_counters(client, consumer.port)
    delta = {name: counted[name] - counters[name] for name in counted}
    measured = [requests.attempt_id(first + i) for i in range(warm, total)]
    measured_sent = [sent[k] for k in measured if k in sent]
    span = max(measured_sent) - min(measured_sent) if len(measured_sent) > 1 else 0.0
    result = RateResult(
        mode=mode,
        target_rate=rate,
        sent=len(measured),
        achieved_rate=(len(measured_sent) - 1) / span if span else 0.0,
        e2e_ms=percentiles([reader.received[k] - sent[k] for k in measured if k in reader.received]),
        ingress_ms=percentiles([answered[k] - sent[k] for k in measured if k in answered]),
        schedule_lag_ms=percentiles([sent[k] - scheduled[k] for k in measured if k in sent]),
        missing=sum(1 for k in measured if k not in reader.received),
        not_202=sum(1 for s in statuses if s != 202),
        connections=connections.opened,
        # While sending (warm-up included), until the last answer: shares of one core.
        client_cpu_percent=100 * client_cpu / elapsed,
        ingress_cpu_percent=100 * ingress_cpu / elapsed,
        consumer_cpu_percent=100 * consumer_cpu / elapsed,
        records_per_batch=delta["records"] / max(1.0, delta["batches"]),
        batch_ms=1000 * delta["batch_seconds"] / max(1.0, delta["timed_batches"]),
        load_average=os.getloadavg()[0],
    )
    return result, first + total


def send_offsets(rate: int, total: int, *, poisson: bool, seed: int) -> list[float]:
    """When each send is due, in seconds from the start: every 1/rate, or Poisson arrivals at that
    mean rate (a fixed period can lock onto the consumer's poll-and-sleep cycle at low rates)."""
    if not poisson:
        return [n / rate for n in range(total)]
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in range(total):
        offsets.append(at)
        at += rng.expovariate(rate)
    return offsets


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment (so CONSUMER_*/INGRESS_* overrides reach the processes), plus `--set`s."""
    return {**os.environ, **extra}


async def run_mode(mode: str, args: argparse.Namespace, log_dir: Path) -> list[RateResult]:
    """Fresh topics, an ingress and a consumer in `mode`, then every rate in turn."""
    run = uuid.uuid4().hex[:8]
    print(f"{mode}: creating topics on {args.bootstrap}", flush=True)
    topics: ConsumerTopics = await make_consumer_topics(
        args.bootstrap, lambda name: f"latency.{run}.{mode}.{name}", raw_partitions=3
    )
    extra = dict(args.set)
    ingress_port, admin_port, consumer_port = free_port(), free_port(), free_port()
    ingress_env = child_env(
        {
            **extra,
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(ingress_port),
            "INGRESS_ADMIN_PORT": str(admin_port),
            "INGRESS_RAW_TOPIC": topics.raw,
            "INGRESS_BASIC_AUTH_USERNAME": USERNAME,
            "INGRESS_BASIC_AUTH_PASSWORD": PASSWORD,
            "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
        }
    )
    consumer_env = child_env(
        {
            **extra,
            **topics.env(),
            "CONSUMER_PROCESSING_GUARANTEE": mode,
            "CONSUMER_GROUP_ID": f"latency-{run}",
            "CONSUMER_HTTP_HOST": "127.0.0.1",
            "CONSUMER_HTTP_PORT": str(consumer_port),
            "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
        }
    )
    ingress = Child.start("ingress", "ingress", ingress_env, ingress_port, log_dir / f"{mode}-ingress.log")
    ingress.admin_port = admin_port
    consumer = Child.start(
        "consumer", "consumer", consumer_env, consumer_port, log_dir / f"{mode}-consumer.log"
    )
    reader = Reader(args.bootstrap, [topics.passed, topics.failed], args.reader_fetch_max_wait_ms)
    connections = Connections(ingress_port)
    results: list[RateResult] = []
    try:
        await ingress.wait_ready(PROCESS_TIMEOUT, json_status=False)
        await consumer.wait_ready(PROCESS_TIMEOUT, json_status=True)
        await reader.start()
        # Enough for the highest rate even when an answer takes tens of ms.
        await connections.open(args.connections)
        print(f"{mode}: ingress and consumer ready (logs in {log_dir})", flush=True)
        requests, first = Requests(run), 0
        for rate in args.rates:
            print(
                f"  {mode} {rate}/s: {args.warmup_seconds:g} s warm-up + {args.seconds:g} s measured",
                flush=True,
            )
            result, first = await run_rate(
                mode, rate, args, requests, first, connections, reader, ingress, consumer
            )
            print(result.line(), flush=True)
            results.append(result)
    finally:
        connections.close()
        await reader.stop()
        for child in (consumer, ingress):
            child.send(signal.SIGTERM)
        for child in (consumer, ingress):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(child.proc.wait, PROCESS_TIMEOUT)
            child.kill()
    return results


def parse_set(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith(("CONSUMER_", "INGRESS_", "KAFKA_")):
        raise argparse.ArgumentTypeError(f"expected CONSUMER_*/INGRESS_*/KAFKA_* NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="the broker"
    )
    parser.add_argument("--rates", default="200,500,1000,2000", help="webhooks/s, comma-separated, in order")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate (at most 300)")
    parser.add_argument(
        "--warmup-seconds", type=float, default=2.0, help="sent first at each rate, not measured"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="longest wait for the last derived records per rate",
    )
    parser.add_argument(
        "--modes", default="exactly-once,at-least-once", help="processing guarantees, comma-separated"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=128,
        help="keep-alive connections (a fixed pool)",
    )
    parser.add_argument(
        "--reader-fetch-max-wait-ms",
        type=int,
        default=500,
        help="the downstream reader's fetch_max_wait_ms (aiokafka's default 500)",
    )
    parser.add_argument(
        "--set",
        type=parse_set,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the ingress and consumer processes, e.g. CONSUMER_BATCH_TIMEOUT_MS=50; "
        "repeatable",
    )
    parser.add_argument(
        "--poisson",
        action="store_true",
        help="Poisson arrivals at each rate (exponential gaps) instead of one every 1/rate",
    )
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON (- for stdout)")
    args = parser.parse_args(argv)
    try:
        args.rates = [int(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates: integers expected, got {args.rates!r}")
    args.modes = args.modes.split(",")
    if any(m not in ("exactly-once", "at-least-once") for m in args.modes):
        parser.error("--modes: exactly-once and/or at-least-once")
    if not 0 < args.seconds <= MAX_SECONDS or any(not 0 < r <= 10_000 for r in args.rates):
        parser.error(f"--seconds in (0, {MAX_SECONDS}], rates in (0, 10000]")
    return args


async def main(args: argparse.Namespace, log_dir: Path) -> int:
    overrides = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("CONSUMER_", "INGRESS_"))}
    overrides.update(args.set)
    print(f"settings other than the defaults: {overrides or 'none'}", flush=True)
    results: list[RateResult] = []
    for mode in args.modes:
        results += await run_mode(mode, args, log_dir)
    print()
    print(f"summary{f' ({args.label})' if args.label else ''}, settings {overrides or 'defaults'}:")
    for result in results:
        print(result.line())
    if args.json:
        document: dict[str, Any] = {
            "label": args.label,
            "settings": overrides,
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "results": [asdict(r) for r in results],
        }
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            await asyncio.to_thread(Path(args.json).write_text, text + "\n")
    return 1 if any(r.missing or r.not_202 for r in results) else 0


def run() -> int:
    args = parse_args()
    import uvloop  # the ingress and consumer run on it; the client should cost as little

    log_dir = Path(f"/tmp/bench-latency-{uuid.uuid4().hex[:8]}")
    log_dir.mkdir()
    return uvloop.run(main(args, log_dir))


if __name__ == "__main__":
    sys.exit(run())
