#!/usr/bin/env python3
"""Benchmark the webhook ingress: requests/s, p50 and p99 at concurrency 1 and 64.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/ingress.py [--rounds 3] \
        [--checkout before=/tmp/ingress-before]

Starts two servers on loopback, each exactly as `python -m ingress` runs (uvloop, httptools, one
log line per request): the real one producing to a fresh topic on the broker, and the same app with
the Kafka produce replaced by a no-op. Drives both with realistic bodies (the recorded Exam
Results Released webhook, a different user per request) over keep-alive connections, checks that
the records on the topic equal the 2xx answers, and prints the figures and ratios. With `--rounds N`
it does that N times and prints the medians; each `--checkout LABEL=DIR` also runs the ingress of
another checkout of the project (a git worktree of an earlier commit) in every round, next to this
one's (every other round in reverse order), so that a change is measured side by side under the
same machine load.

    .venv/bin/python bench/ingress.py --fast-503

Measures the fail-fast 503 instead: starts a broker of its own (`scripts/kafka-local`, free port,
temporary data directory), the real ingress on it, stops the broker, waits until the ingress says
Kafka is unreachable (`exam_events_ingress_kafka_unreachable` 1, no post needed), then measures the
503s at concurrency 1 and 64; restarts the broker and measures how long until the condition clears
by itself, and the first post after it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import parse_checkouts, read_answer  # noqa: E402

BODY = (ROOT / "tests" / "data" / "exam-results-released.json").read_bytes()
USERNAME, PASSWORD = "bench", "bench-password"
VARIANTS = 256  # distinct bodies, so keys spread over partitions as real users do


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def requests_bytes() -> list[bytes]:
    """Complete HTTP/1.1 requests, built once: the client should cost as little CPU as possible."""
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    built = []
    for n in range(VARIANTS):
        body = BODY.replace(b"usr_8f2c1a7e", f"usr_{n:08x}".encode())
        head = (
            "POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        built.append(head.encode() + body)
    return built


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One measured run."""

    label: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.label:<6} c={self.concurrency:<3} n={self.requests:<6} {self.rps:8.0f} req/s  "
            f"p50 {self.percentile(50):6.2f} ms  p99 {self.percentile(99):6.2f} ms  "
            f"mean {statistics.fmean(self.latencies) * 1000:6.2f} ms  "
            f"CPU/request: server {self.server_cpu / self.requests * 1e6:4.0f} us, "
            f"client {self.client_cpu / self.requests * 1e6:4.0f} us  "
            f"statuses {dict(sorted(self.statuses.items()))}"
        )


async def drive(
    port: int, label: str, concurrency: int, total: int, payloads: list[bytes], server_pid: int
) -> Result:
    """Send `total` requests over `concurrency` keep-alive connections, printing progress."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_index < total:
                payload = payloads[next_index % len(payloads)]
                next_index += 1
                started = time.perf_counter()
                writer.write(payload)
                status = await read_answer(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    async def progress() -> None:
        while True:
            await asyncio.sleep(1)
            print(f"  {label} c={concurrency}: {len(latencies)}/{total}", flush=True)

    reporter = asyncio.create_task(progress())
    server_cpu, client_cpu = cpu_seconds(server_pid), cpu_seconds(os.getpid())
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, cpu_seconds(os.getpid()) - client_cpu
    reporter.cancel()
    return Result(label, concurrency, len(latencies), seconds, latencies, statuses, server_cpu, client_cpu)


ADMIN_PORTS: dict[int, int] = {}  # public port -> the admin port given to that server


def admin_port_of(port: int) -> int:
    """The admin port the bench gives a server listening on `port` (free when that one was)."""
    return ADMIN_PORTS.setdefault(port, free_port())


def start_server(
    kind: str, port: int, topic: str, bootstrap: str, log_dir: Path, linger_ms: int | None, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """`python -m ingress` for kind "kafka"; the no-op server of `root`'s bench script for kind "noop"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_")}
    env.update(
        INGRESS_HOST="127.0.0.1",
        INGRESS_PORT=str(port),
        INGRESS_ADMIN_PORT=str(admin_port_of(port)),
        INGRESS_RAW_TOPIC=topic,
        INGRESS_BASIC_AUTH_USERNAME=USERNAME,
        INGRESS_BASIC_AUTH_PASSWORD=PASSWORD,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
    )
    if linger_ms is not None:
        env["INGRESS_LINGER_MS"] = str(linger_ms)
    # Run from `root`: `python -m` puts it first on sys.path, so its code is the one imported.
    script = str(root / "bench" / "ingress.py")
    noop = [sys.executable, script, "--serve-noop"]
    command = [sys.executable, "-m", "ingress"] if kind == "kafka" else noop
    log = (log_dir / f"{kind}.{port}.log").open("wb")
    return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


async def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    """Poll /readyz on the server's admin port until it answers 200."""
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin_port_of(port))
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            if head.startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("server not ready after 60 s")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


async def records_on(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records the topic holds (the sum of end offsets: the topic is fresh)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        # aiokafka raises CancelledError from stop() when its background task never got to run.
        await asyncio.sleep(0.5)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def measure(
    kind: str, args: argparse.Namespace, topic: str, log_dir: Path, root: Path = ROOT, label: str = ""
) -> list[Result]:
    port = free_port()
    process = start_server(kind, port, topic, args.bootstrap, log_dir, args.linger_ms, root)
    name = f"{label}{kind}"
    results = []
    try:
        await wait_ready(port, process)
        payloads = requests_bytes()
        print(f"{name}: warming up", flush=True)
        warmup = await drive(port, name, 8, args.warmup, payloads, process.pid)
        results.append(warmup)
        for concurrency, total in ((1, args.requests_c1), (64, args.requests_c64)):
            result = await drive(port, name, concurrency, total, payloads, process.pid)
            print(result.line(), flush=True)
            results.append(result)
    finally:
        code = stop(process)
        print(f"{name}: server exited with {code}", flush=True)
    return results


@dataclass
class Round:
    """One round of one checkout: its Kafka and no-op runs (warm-up, c=1, c=64 each)."""

    kafka: list[Result]
    noop: list[Result]

    @property
    def ratio(self) -> float:
        """Kafka / no-op requests/s at c=64."""
        return self.kafka[2].rps / self.noop[2].rps


def median_line(label: str, results: list[Result]) -> str:
    """Medians of the same run over the rounds (ranges in brackets)."""
    rps = [r.rps for r in results]
    p50 = [r.percentile(50) for r in results]
    p99 = [r.percentile(99) for r in results]
    cpu = [r.server_cpu / r.requests * 1e6 for r in results]
    first = results[0]
    return (
        f"{label:<14} c={first.concurrency:<3} {statistics.median(rps):7.0f} req/s "
        f"({min(rps):.0f}-{max(rps):.0f})"
        f"  p50 {statistics.median(p50):6.2f} ms  p99 {statistics.median(p99):6.2f} ms "
        f"({min(p99):.1f}-{max(p99):.1f})  server CPU/request {statistics.median(cpu):4.0f} us "
        f"({min(cpu):.0f}-{max(cpu):.0f})"
    )


async def main(args: argparse.Namespace, checkouts: dict[str, Path]) -> int:
    topic = f"bench.ingress.{uuid.uuid4().hex[:8]}"
    await create_topic(args.bootstrap, topic, args.partitions)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    print(
        f"topic {topic} ({args.partitions} partitions) on {args.bootstrap}; server logs in {log_dir}",
        flush=True,
    )
    rounds: dict[str, list[Round]] = {label: [] for label in checkouts}
    for number in range(1, args.rounds + 1):
        # Every other round in reverse order: whichever runs first does not always meet the same load.
        order = list(checkouts.items()) if number % 2 else list(reversed(checkouts.items()))
        for label, root in order:
            prefix = "" if label == "." else f"{label}:"
            print(f"== round {number}/{args.rounds}, checkout {label} ({root})", flush=True)
            kafka = await measure("kafka", args, topic, log_dir, root, prefix)
            noop = await measure("noop", args, topic + ".unused", log_dir, root, prefix)
            rounds[label].append(Round(kafka, noop))

    accepted = sum(r.statuses.get(202, 0) for runs in rounds.values() for run in runs for r in run.kafka)
    stored = await records_on(args.bootstrap, topic, args.partitions)
    print(f"\n== results (warm-up excluded), medians of {args.rounds} round(s) (range)")
    for label, runs in rounds.items():
        name = "this checkout" if label == "." else label
        for kind, index in (("kafka", 1), ("kafka", 2), ("noop", 1), ("noop", 2)):
            results = [getattr(run, kind)[index] for run in runs]
            print(median_line(f"{name} {kind}", results))
        ratios = [run.ratio for run in runs]
        scaling = [run.kafka[2].rps / run.kafka[1].rps for run in runs]
        print(
            f"{name}: kafka / no-op req/s at c=64 {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}); kafka c=64 / c=1 {statistics.median(scaling):.1f}x"
        )
    for label, runs in rounds.items():
        if label == ".":
            continue
        # Per round, this checkout against the other one: both ran back to back.
        pairs = list(zip(rounds["."], runs, strict=True))
        speedup = [mine.kafka[2].rps / theirs.kafka[2].rps for mine, theirs in pairs]
        noop_speedup = [mine.noop[2].rps / theirs.noop[2].rps for mine, theirs in pairs]
        print(
            f"this checkout / {label}, req/s at c=64: kafka {statistics.median(speedup):.2f} "
            f"({min(speedup):.2f}-{max(speedup):.2f}), no-op {statistics.median(noop_speedup):.2f} "
            f"({min(noop_speedup):.2f}-{max(noop_speedup):.2f})"
        )
    print(f"2xx answers (incl. warm-up): {accepted}; records on {topic}: {stored}")
    if accepted != stored:
        print("MISMATCH: records on the topic differ from the 2xx answers", flush=True)
        return 1
    print("records on the topic == 2xx answers: OK")
    return 0


async def metric(port: int, name: str) -> float | None:
    """An unlabelled metric from the server's admin port (None when it does not answer)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", admin_port_of(port))
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        page = await reader.read(-1)
        writer.close()
    except OSError:
        return None
    for line in page.decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def seconds_until_metric(port: int, name: str, value: float, timeout: float = 60) -> float:
    """Poll the metric every 10 ms until it has the value; the seconds that took."""
    started = time.perf_counter()
    while await metric(port, name) != value:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"{name} still not {value} after {timeout:g} s")
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


def kafka_local(*args: str) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "kafka-local"), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=300)


async def fast_503(args: argparse.Namespace) -> int:
    """The fail-fast 503's latency with the broker stopped, and the recovery after its restart."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench-ingress-outage-"))
    broker_port = free_port()
    broker = ["--data-dir", str(data_dir / "kafka")]
    bootstrap = f"127.0.0.1:{broker_port}"
    topic = f"bench.ingress.outage.{uuid.uuid4().hex[:8]}"
    print(f"broker on {bootstrap} (data in {data_dir}), topic {topic}", flush=True)
    await asyncio.to_thread(kafka_local, "start", "--port", str(broker_port), *broker)
    process = None
    try:
        await create_topic(bootstrap, topic, args.partitions)
        port = free_port()
        process = start_server("kafka", port, topic, bootstrap, data_dir, None)
        await wait_ready(port, process)
        payloads = requests_bytes()
        warmup = await drive(port, "warm-up", 8, 200, payloads, process.pid)
        print(warmup.line(), flush=True)

        await asyncio.to_thread(kafka_local, "stop", *broker)
        detected = await seconds_until_metric(port, "exam_events_ingress_kafka_unreachable", 1.0)
        print(f"outage detected {detected * 1000:.0f} ms after the broker had stopped (no post)", flush=True)
        results = [
            await drive(port, "503", concurrency, total, payloads, process.pid)
            for concurrency, total in ((1, args.requests_c1), (64, args.requests_c64))
        ]
        refusals = await metric(port, "exam_events_ingress_fast_refusals_total")

        await asyncio.to_thread(kafka_local, "start", "--port", str(broker_port), *broker)
        cleared = await seconds_until_metric(port, "exam_events_ingress_kafka_unreachable", 0.0)
        after = await drive(port, "after", 1, 1, payloads, process.pid)
    finally:
        if process is not None:
            print(f"ingress exited with {stop(process)}", flush=True)
        await asyncio.to_thread(kafka_local, "stop", *broker)

    print("\n== fast 503 while the broker is down (produce timeout 5 s)")
    for result in results:
        print(f"{result.line()}  max {max(result.latencies) * 1000:6.2f} ms")
    print(f"fast refusals counted: {refusals:.0f} of {sum(r.requests for r in results)} posts")
    print(f"condition cleared {cleared * 1000:.0f} ms after `kafka-local start` returned (no post)")
    print(f"first post after that: {after.statuses}, {after.latencies[0] * 1000:.1f} ms")
    all_fast = all(set(r.statuses) == {503} for r in results) and set(after.statuses) == {202}
    return 0 if all_fast and refusals == sum(r.requests for r in results) else 1


def serve_noop() -> None:
    """The same app and server as `python -m ingress`, with a producer that stores nothing."""
    import uvloop

    from ingress.app import create_app
    from ingress.bootstrap import configure_ingress_logging, run_server
    from ingress.producer import NoopProducer
    from ingress.settings import IngressSettings

    settings = IngressSettings()
    configure_ingress_logging("ingress-noop", settings.log_level)

    async def serve() -> None:
        await run_server(create_app(settings, producer=NoopProducer()), settings)

    uvloop.run(serve())


def parse_args() -> tuple[argparse.Namespace, dict[str, Path]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--requests-c1", type=int, default=1000, help="requests at concurrency 1")
    parser.add_argument("--requests-c64", type=int, default=10000, help="requests at concurrency 64")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured requests first")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--linger-ms", type=int, default=None, help="INGRESS_LINGER_MS (default: the ingress's)"
    )
    parser.add_argument(
        "--fast-503", action="store_true", help="measure the fail-fast 503 on a broker of its own instead"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; medians are reported")
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the ingress of another checkout of the project (e.g. a git worktree of an earlier "
        "commit) in every round, to compare a change side by side; repeatable",
    )
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return args, parse_checkouts(parser, args.checkout, "ingress")


if __name__ == "__main__":
    arguments, checkouts = parse_args()
    if arguments.serve_noop:
        serve_noop()
    else:
        import uvloop

        sys.exit(uvloop.run(fast_503(arguments) if arguments.fast_503 else main(arguments, checkouts)))
