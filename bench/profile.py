#!/usr/bin/env python3
"""Profile the consumer and the ingress under load with py-spy, and measure the GC's share of their time.

    .venv/bin/pip install py-spy   # once; not a project dependency
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python bench/profile.py

Everything on loopback, against the broker given (topics with fresh names are created on it):
- consumer, per processing guarantee (`--modes`, default at-least-once then exactly-once): N
  realistic webhooks (bench/pipeline.py's mix) are put on a fresh raw topic first; then
  `python -m consumer` runs in a fresh group with fresh output topics, and once its HTTP port
  answers, `py-spy record --pid` samples it until the broker shows the whole backlog committed;
- ingress (`--ingress-variants`, default kafka,noop,kafka-httptools): `python -m ingress` producing
  to a fresh topic, the same app with a no-op producer (bench/ingress.py --serve-noop), and the real
  one with INGRESS_HTTP_IMPL=httptools (uvicorn's two writes per answer instead of the one-write
  transport), each warmed up, then sampled while bench/ingress.py's load generator drives it at
  concurrency 64.
Each process runs under bench/_profile_support.py, which hooks `gc.callbacks` (enabled by the
EXAM_EVENTS_GC_STATS environment variable; the code under test is unchanged) to time every
collection in the same window as the profile. `--gc-freeze` is an experiment: the hook runs
`gc.collect()` and `gc.freeze()` once the process is up (ingress: after its warm-up), before sampling.

Writes into the output directory, per process: `NAME.collapsed` (py-spy --format raw: collapsed
stacks, which speedscope.app and flamegraph.pl open), `NAME.txt` (the tables printed) and
`NAME.json` (the same figures), and the processes' logs. Prints per process: the shares by group
(ours / pydantic / aiokafka / faststream / uvicorn / asyncio / json ...) by own time and
cumulatively, the top functions by own time and by cumulative share, and the GC's collections per
generation and share of wall and CPU time. Shares are of the CPU-active samples (py-spy leaves out
idle waits); time spent in C or Rust (json's scanner, pydantic-core) counts as own time of the
Python function that called it. Each phase is bounded (`--max-seconds`); the run stops by itself.
Exit status 2 with a one-line instruction when py-spy is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, bench/ is sys.path[0]: its ingress.py would shadow the package, this file `profile`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import _profile_support as support  # noqa: E402
from bench import ingress as ingress_bench  # noqa: E402
from bench import pipeline  # noqa: E402
from tests.support.kafka_io import create_topics  # noqa: E402

CONSUMER_TOPICS = (
    "raw",
    "passed",
    "failed",
    "resits",
    "overrides",
    "attempts",
    "registrations",
    "xapi",
    "dlq",
    "unrouted",
    "dedup",
)
WRAPPER = str(HERE / "_profile_support.py")


def py_spy() -> str | None:
    """py-spy next to this interpreter (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """`py-spy record --pid` on a running process, stopped with SIGINT (py-spy then writes its file)."""

    def __init__(self, executable: str, pid: int, output: Path, rate: int, max_seconds: float) -> None:
        self.output = output
        command = [
            executable,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--full-filenames",
            "--function",
            "--rate",
            str(rate),
            "--duration",
            str(int(max_seconds) + 1),
            "--output",
            str(output),
        ]
        self.log = output.with_suffix(".py-spy.log").open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    async def started(self) -> None:
        """py-spy needs a moment to attach; its first samples are what the window starts with."""
        await asyncio.sleep(0.5)
        if self.process.poll() is not None:
            raise SystemExit(f"py-spy exited with {self.process.returncode}; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        if not self.output.exists():
            raise SystemExit(f"py-spy wrote no {self.output}; see {self.log.name}")


def gc_snapshot(path: Path) -> dict[str, Any]:
    for _ in range(50):
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.05)
    raise SystemExit(f"no GC statistics in {path}")


async def freeze_if_asked(args: argparse.Namespace, gc_file: Path) -> None:
    """--gc-freeze: have the process's GC hook run gc.collect() + gc.freeze() once, now."""
    if args.gc_freeze:
        gc_file.with_name(gc_file.name + ".freeze").touch()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if gc_snapshot(gc_file)["frozen"]:
                return
        raise SystemExit(f"the GC hook did not freeze ({gc_file})")


def report(name: str, out_dir: Path, top: int, gc_share: support.GcShare, extra: dict[str, Any]) -> None:
    """Print and store one process's tables."""
    profile = support.Profile.of(support.parse_collapsed((out_dir / f"{name}.collapsed").read_text()))
    lines = [
        f"== {name}",
        *(f"{k}: {v}" for k, v in extra.items()),
        *profile.table(top),
        "",
        *gc_share.lines(),
    ]
    text = "\n".join(lines)
    print("\n" + text + "\n", flush=True)
    (out_dir / f"{name}.txt").write_text(text + "\n")
    figures = {"name": name, **extra, "profile": profile.as_dict(top), "gc": gc_share.as_dict()}
    (out_dir / f"{name}.json").write_text(json.dumps(figures, indent=1) + "\n")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def profile_consumer(args: argparse.Namespace, spy: str, out_dir: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw = f"bench.profile.raw.{suffix}"
    print(f"creating {raw} ({args.partitions} partitions) on {args.bootstrap}", flush=True)
    await create_topics(args.bootstrap, [raw], args.partitions)
    bodies = pipeline.webhooks(args.events)
    print(f"producing {args.events} webhooks to {raw}", flush=True)
    await pipeline.fill(args.bootstrap, raw, bodies)
    for guarantee in args.modes.split(","):
        short = pipeline.SHORT[guarantee]
        name = f"consumer-{short}"
        topics = {t: f"bench.profile.{t}.{suffix}.{short}" for t in CONSUMER_TOPICS if t != "raw"}
        await create_topics(args.bootstrap, list(topics.values()), args.partitions)
        group, port = f"bench-profile-{suffix}-{short}", ingress_bench.free_port()
        gc_file = out_dir / f"{name}.gc.json"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
            "CONSUMER_GROUP_ID": group,
            "CONSUMER_HTTP_PORT": str(port),
            "CONSUMER_LOG_LEVEL": "INFO",
            "CONSUMER_PROCESSING_GUARANTEE": guarantee,
            "CONSUMER_RAW_TOPIC": raw,
            **{f"CONSUMER_{t.upper()}_TOPIC": topic for t, topic in topics.items()},
            support.GC_STATS_ENV: str(gc_file),
        }
        print(f"{name}: python -m consumer ({guarantee}), group {group}", flush=True)
        with (out_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, WRAPPER, "-m", "consumer"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        sampler = None
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                while (first := await pipeline.consumed_so_far(client, port)) is None:
                    if process.poll() is not None:
                        raise SystemExit(f"consumer exited with {process.returncode}; see {log.name}")
                    await asyncio.sleep(0.02)
                sampler = Sampler(
                    spy, process.pid, out_dir / f"{name}.collapsed", args.rate, args.max_seconds
                )
                await freeze_if_asked(args, gc_file)
                await sampler.started()
                before = gc_snapshot(gc_file)
                at_start = await pipeline.consumed_so_far(client, port) or first
                started = time.monotonic()
                last = started
                while (committed := await pipeline.committed_total(args.bootstrap, group)) < args.events:
                    if process.poll() is not None:
                        raise SystemExit(f"consumer exited with {process.returncode}; see {log.name}")
                    if time.monotonic() - started > args.max_seconds:
                        print(f"  {name}: stopping at the {args.max_seconds:g} s bound", flush=True)
                        break
                    if time.monotonic() - last >= 1:
                        last = time.monotonic()
                        print(f"  {name}: {committed}/{args.events} committed", flush=True)
                    await asyncio.sleep(0.2)
                seconds = time.monotonic() - started
                after = gc_snapshot(gc_file)
                sampler.stop()
                sampled = (await pipeline.consumed_so_far(client, port) or args.events) - at_start
        finally:
            if sampler is not None and sampler.process.poll() is None:
                sampler.stop()
            stop_process(process)
        report(
            name,
            out_dir,
            args.top,
            support.GcShare.between(before, after),
            {
                "window": f"{sampled} records consumed in {seconds:.1f} s while sampled "
                f"({sampled / seconds:.0f}/s under py-spy)",
            },
        )


async def profile_ingress(args: argparse.Namespace, spy: str, out_dir: Path) -> None:
    topic = f"bench.profile.ingress.{uuid.uuid4().hex[:8]}"
    await ingress_bench.create_topic(args.bootstrap, topic, args.partitions)
    payloads = ingress_bench.requests_bytes()
    for variant in args.ingress_variants.split(","):
        kind, _, impl = variant.partition("-")
        if kind not in ("kafka", "noop") or impl not in ("", "httptools"):
            raise SystemExit(f"unknown ingress variant {variant!r}")
        name = f"ingress-{variant}"
        port = ingress_bench.free_port()
        gc_file = out_dir / f"{name}.gc.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_")}
        env.update(
            INGRESS_HOST="127.0.0.1",
            INGRESS_PORT=str(port),
            INGRESS_ADMIN_PORT=str(ingress_bench.admin_port_of(port)),
            INGRESS_RAW_TOPIC=topic if kind == "kafka" else topic + ".unused",
            INGRESS_BASIC_AUTH_USERNAME=ingress_bench.USERNAME,
            INGRESS_BASIC_AUTH_PASSWORD=ingress_bench.PASSWORD,
            KAFKA_BOOTSTRAP_SERVERS=args.bootstrap,
            **{support.GC_STATS_ENV: str(gc_file)},
        )
        if impl:
            env["INGRESS_HTTP_IMPL"] = (
                impl  # uvicorn's own two writes per answer, not the one-write transport
            )
        target = ["-m", "ingress"] if kind == "kafka" else [str(HERE / "ingress.py"), "--serve-noop"]
        print(f"{name}: {' '.join(target)} on 127.0.0.1:{port}", flush=True)
        with (out_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, WRAPPER, *target], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        sampler = None
        try:
            await ingress_bench.wait_ready(port, process)
            print(f"  {name}: warming up", flush=True)
            await ingress_bench.drive(port, name, 8, args.warmup, payloads, process.pid)
            await freeze_if_asked(args, gc_file)
            sampler = Sampler(spy, process.pid, out_dir / f"{name}.collapsed", args.rate, args.max_seconds)
            await sampler.started()
            before = gc_snapshot(gc_file)
            try:
                result = await asyncio.wait_for(
                    ingress_bench.drive(port, name, 64, args.requests, payloads, process.pid),
                    timeout=args.max_seconds,
                )
            except TimeoutError:
                raise SystemExit(
                    f"{name}: {args.requests} requests took over {args.max_seconds:g} s"
                ) from None
            after = gc_snapshot(gc_file)
            sampler.stop()
        finally:
            if sampler is not None and sampler.process.poll() is None:
                sampler.stop()
            stop_process(process)
        report(
            name,
            out_dir,
            args.top,
            support.GcShare.between(before, after),
            {"window": result.line() + " (under py-spy)"},
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: a new one in /tmp)"
    )
    parser.add_argument("-n", "--events", type=int, default=40_000, help="webhooks in the consumer's backlog")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of every topic")
    parser.add_argument(
        "--modes", default="at-least-once,exactly-once", help="consumer guarantees to profile"
    )
    parser.add_argument(
        "--ingress-variants",
        default="kafka,noop,kafka-httptools",
        help="kafka (python -m ingress), noop (no-op producer); -httptools: INGRESS_HTTP_IMPL=httptools",
    )
    parser.add_argument("--requests", type=int, default=30_000, help="ingress requests at concurrency 64")
    parser.add_argument("--warmup", type=int, default=500, help="unsampled ingress requests first")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="functions per table")
    parser.add_argument("--max-seconds", type=float, default=120, help="bound on each sampled phase")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.collect() + gc.freeze() in each process once it is up (after warm-up)",
    )
    parser.add_argument(
        "--only", choices=("consumer", "ingress"), default=None, help="profile one of the two (default: both)"
    )
    return parser.parse_args()


async def main(args: argparse.Namespace, spy: str) -> int:
    out_dir = args.out or Path(f"/tmp/exam-events-profile-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"py-spy: {spy}; output in {out_dir}", flush=True)
    if args.only in (None, "consumer"):
        await profile_consumer(args, spy, out_dir)
    if args.only in (None, "ingress"):
        await profile_ingress(args, spy, out_dir)
    print(f"done; collapsed stacks, tables and logs in {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    executable = py_spy()
    if executable is None:
        print("py-spy is not installed: run `.venv/bin/pip install py-spy`, then this again", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(arguments, executable)))
