#!/usr/bin/env python3
"""Chaos run of the whole pipeline: are derived events lost or duplicated when processes die?

    .venv/bin/python bench/chaos.py                      # both modes, 6000 webhooks each
    .venv/bin/python bench/chaos.py --webhooks 5000 --modes exactly-once --json
    .venv/bin/python bench/chaos.py --nodes 3            # on a three-node cluster (docs/cluster.md)
    .venv/bin/python bench/chaos.py --cluster-port P --cluster-dir DIR   # on a running one

For each processing guarantee (CONSUMER_PROCESSING_GUARANTEE; by default `exactly-once`, then
`at-least-once`), from scratch:

1. a fresh broker (`scripts/kafka-local`) on a free loopback port with its own temporary data
   directory; every topic the consumer uses (raw, derived, dlq, unrouted, the dedup changelog) with
   --partitions partitions (`scripts/create-topics`; the dedup topic is created here, with
   cleanup.policy=compact,delete, only if create-topics left it out);
2. the real ingress (`python -m ingress`, HTTP Basic auth) and one consumer (`python -m consumer`,
   a group id of its own, CONSUMER_SESSION_TIMEOUT_MS=6000, every other setting its default), each
   logging to a file in the temporary directory;
3. a sender (asyncio + httpx, 16 concurrent requests, --rate new webhooks per second) posts
   --webhooks distinct Exam Results Released webhooks (distinct users and attempts; passes and fails
   with 0-3 resits) and posts a random --duplicate-fraction of them a second time, later, as an
   independent POST of the same body (a platform re-posting after a lost answer). Every POST is
   retried with backoff (0.25 s doubling to 2 s) until it gets a 2xx; a webhook is "accepted" once
   one of its POSTs got a 2xx. We aim for at least 5000 webhooks (not enforced).
4. meanwhile, by the fraction of webhooks accepted: 15% SIGKILL the consumer and start a new one;
   30% scale the group 1 -> 3; 45% SIGKILL one of the three and start a replacement; 55% SIGKILL
   the broker and restart it (same port, same data) 3 s later; 75% scale 3 -> 1 by SIGTERM of two;
   85% SIGKILL the last consumer and start a new one. One line per action, with the elapsed time.
   With --nodes 3 (docs/cluster.md, "Chaos on the cluster") step 1 is a fresh three-node cluster
   (`kafka-local start --nodes 3` on three free consecutive ports), create-topics picks replication
   factor 3 and min.insync.replicas 2 there (both checked), and the broker kill is replaced by three
   node kills, one at a time, at 5%, 35% and 65% accepted (done even when sending ended first):
   the leader of raw partition 0, the group's coordinator, then in exactly-once mode the
   transaction coordinator of a consumer's transactional id (`{group}.{raw topic}.{p}`; another
   partition's, or another node, when that node was killed before, said in the action line) and in
   at-least-once mode a node not killed yet. Each is `stop-node N --kill`, then, once the controller
   has fenced it and at least 3 s later, `start-node N` and a wait until every raw partition has
   all three replicas in sync again. The consumer steps go on meanwhile.
   With --cluster-port P --cluster-dir DIR (together; they imply --nodes 3) step 1 uses the
   running `kafka-local start --nodes 3 --port P --data-dir DIR` cluster instead, in every mode:
   checked whole (`kafka-local status`), never started or stopped here. Each mode's topics (every
   topic the consumer uses) are named `<default name>.chaos-<mode>-<random>`, as its group, so
   nothing an earlier run or mode wrote is read as its own; the node kills use that cluster's
   `stop-node`/`start-node --port P`.
5. after the last accepted webhook: wait until the group has committed every raw partition up to
   its end offset, then read the derived topics from the beginning with read_committed (no group)
   and compare their ce_ids with those the accepted bodies lead to (the project's own pure planning:
   `consumer.plan.plan_batch` with `handlers.build_routing_table`). On a cluster, first wait until
   every partition of every topic has its three replicas in sync.

Prints one summary line per mode, e.g.
`exactly-once: accepted 6000 webhooks (300 posted twice), 9000 expected events, lost 0, duplicates 0,
unexpected 0, 183 s`, where lost = expected ce_ids never seen, duplicates = records beyond the first
per ce_id, unexpected = ce_ids seen but not expected; then a table of the modes. --json prints the
results as one JSON document on stdout (the human-readable lines then go to stderr). With
--nodes 3 the line adds the number of 503 answers and, per node kill, the write stall as the
sender sees it (the longest a POST in flight at the kill, or begun before `start-node`, waited past
the kill for its 2xx, retries included); a line per node kill follows, and --json has them under
`node_kills` (fenced, restart and back-in-ISR times, 503s, the slowest POST during the restart).

Exit status 0 when exactly-once lost nothing and duplicated nothing, and at-least-once lost nothing
(each mode run completely: every webhook accepted and the group caught up); 1 otherwise; 130 when
interrupted; with --nodes 3 a mode is complete only after its three node kills. Every process it
started (broker or all three nodes, any kafka-local command still running, ingress, consumers) is
killed at the end of each mode, on errors, on SIGTERM and on Ctrl-C too; with --cluster-dir the
cluster's nodes are not killed but every node the mode killed is started again, and the mode
ends only once `kafka-local status` has all three in the metadata. The temporary directory
(logs, broker data) is removed after a passing run and kept (path printed) after a failing one, or
always with --keep.

Time: about 3 minutes per mode with the defaults (6000 webhooks at 50/s = 2 min of sending, ~15 s
of start-up, a few seconds to catch up), so 6-7 minutes for both, on our 2-core machine. Each mode
is bounded by --timeout-seconds (default 900), plus at most 90 s to read the output topics.
With --nodes 3, add about 20 s per mode for the cluster's start (none with --cluster-dir);
tests/cluster/test_chaos_on_cluster.py runs `--webhooks 1200 --rate 40 --partitions 3` in both
modes on the session's cluster (--cluster-port, --cluster-dir).
Loopback only. Needs Java 17+ and the jars of scripts/kafka-local (fetched once with Maven).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._chaos_support import (  # noqa: E402
    Broker,
    Child,
    Cluster,
    GroupProgress,
    group_progress,
    log_summary,
    provision_topics,
    read_outputs,
    wait_in_sync,
)
from consumer.settings import ConsumerSettings  # noqa: E402
from lrs_forward.settings import LrsForwardSettings  # noqa: E402
from tests.support.broker import free_port  # noqa: E402
from tests.support.cluster import (  # noqa: E402
    LocalCluster,
    broker_ids,
    consecutive_free_ports,
    group_coordinator,
    partition_leader,
    transaction_coordinator,
)
from tests.support.consumer_harness import expected_outputs  # noqa: E402
from tests.support.webhooks import encode, results_released  # noqa: E402

MODES = ("exactly-once", "at-least-once")
# Every topic the consumer reads or writes, by kind ("raw", "passed", ..., "dedup"): all of them
# are named for the processes, so that a mode on a shared cluster touches none but its own.
TOPIC_FIELDS = tuple(name for name in ConsumerSettings.model_fields if name.endswith("_topic"))
DERIVED = ("passed", "failed", "resits")
CONCURRENCY = 16
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 0.25, 2.0
REQUEST_TIMEOUT_S = 15.0  # the ingress answers 503 after its 5 s produce timeout
SESSION_TIMEOUT_MS = 6000
SIGTERM_GRACE_S = 45.0  # the consumer's graceful timeout (30 s) plus margin; then SIGKILL
BROKER_DOWN_S = 3.0
CLUSTER_NODES = 3
ALL_NODES = list(range(1, CLUSTER_NODES + 1))
NODE_DOWN_S = 3.0  # from `stop-node N --kill` until `start-node N` (at least until it is fenced)
FENCE_TIMEOUT_S = 60.0
NODE_KILL_AT = (0.05, 0.35, 0.65)  # --nodes 3: fractions accepted at which a node is killed
READ_TIMEOUT_S = 90.0  # beyond --timeout-seconds: open transactions time out after 40 s
READ_ATTEMPTS, READ_RETRY_S = 3, 5.0  # a read that misses events is repeated before they count as lost
USERNAME = "chaos"
TOPIC_OVERRIDES = ("TOPIC_REPLICATION_FACTOR", "TOPIC_MIN_INSYNC_REPLICAS")
SOURCES = ("consumer", "ingress", "handlers", "schemas", "common", "scripts")


def mode_topics(suffix: str = "") -> dict[str, str]:
    """The consumer's topics by kind, each its default name plus `suffix` (none: the defaults)."""
    fields = ConsumerSettings.model_fields
    return {name.removesuffix("_topic"): f"{fields[name].default}{suffix}" for name in TOPIC_FIELDS}


def lrs_dead_letter_topic(suffix: str) -> str:
    """The forwarder's dead-letter topic (`exam-events topics create` makes it too), plus `suffix`."""
    return f"{LrsForwardSettings.model_fields['dlq_topic'].default}{suffix}"


# --- the webhooks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """One POST to make: webhook `index`, first post (copy 0) or the platform's re-post (copy 1)."""

    index: int
    copy: int


def make_bodies(count: int, rng: random.Random) -> list[bytes]:
    """Distinct results-released bodies: distinct users and attempts, passes and fails, 0-3 resits."""
    bodies = []
    for i in range(count):
        bodies.append(
            encode(
                results_released(
                    passed=rng.random() < 0.6,
                    resit_count=rng.choice((0, 0, 0, 1, 1, 2, 3)),
                    publish_grade=rng.random() < 0.85,
                    user_id=f"usr_chaos_{i:06d}",
                    attempt_id=f"att_chaos_{i:06d}",
                    released_at=f"2026-06-{1 + i // 86400 % 28:02d}T{i // 3600 % 24:02d}:"
                    f"{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                )
            )
        )
    return bodies


def make_posts(count: int, fraction: float, rng: random.Random) -> tuple[list[Post], set[int]]:
    """Every webhook once, in order, and a random `fraction` of them again 50-1500 posts later."""
    twice = set(rng.sample(range(count), round(count * fraction)))
    ordered: list[tuple[float, Post]] = [(float(i), Post(i, 0)) for i in range(count)]
    ordered += [(i + rng.uniform(50, 1500), Post(i, 1)) for i in sorted(twice)]
    ordered.sort(key=lambda item: item[0])
    return [post for _, post in ordered], twice


@dataclass
class SendState:
    """What the sender has achieved so far."""

    total: int
    ok_posts: Counter[int] = field(default_factory=Counter)  # webhook -> POSTs answered 2xx
    attempts: Counter[str] = field(default_factory=Counter)  # answer status or error type -> count
    # Each accepted POST: (its first try began, its 2xx arrived, tries)
    chains: list[tuple[float, float, int]] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)  # when each 503 answer arrived
    done: bool = False
    finished_at: float = 0.0

    @property
    def accepted(self) -> int:
        return len(self.ok_posts)

    @property
    def progress(self) -> float:
        return self.accepted / self.total if self.total else 1.0


async def send(
    url: str,
    auth: httpx.BasicAuth,
    bodies: Sequence[bytes],
    posts: Sequence[Post],
    rate: float,
    deadline: float,
    state: SendState,
    rng: random.Random,
) -> None:
    """Start `rate` new POSTs per second on CONCURRENCY workers; each retries until a 2xx."""
    queue: asyncio.Queue[Post | None] = asyncio.Queue(maxsize=CONCURRENCY)
    headers = {"content-type": "application/json"}

    async def pace() -> None:
        next_at = time.monotonic()
        for post in posts:
            if time.monotonic() > deadline:
                break
            if (wait := next_at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await queue.put(post)
            # After a stall (every worker retrying) carry on at the rate, without a burst.
            next_at = max(next_at, time.monotonic() - 0.5) + 1 / rate
        for _ in range(CONCURRENCY):
            await queue.put(None)

    async def post_until_2xx(client: httpx.AsyncClient, body: bytes) -> bool:
        backoff = BACKOFF_INITIAL_S
        began, tries = time.monotonic(), 0
        while time.monotonic() < deadline:
            tries += 1
            try:
                answer = await client.post("/webhooks", content=body, headers=headers)
                state.attempts[str(answer.status_code)] += 1
                if answer.status_code == 503:
                    state.refused_at.append(time.monotonic())
                if 200 <= answer.status_code < 300:
                    state.chains.append((began, time.monotonic(), tries))
                    return True
            except httpx.HTTPError as exc:
                state.attempts[type(exc).__name__] += 1
            await asyncio.sleep(min(backoff * rng.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        return False

    async def worker(client: httpx.AsyncClient) -> None:
        while (post := await queue.get()) is not None:
            if await post_until_2xx(client, bodies[post.index]):
                state.ok_posts[post.index] += 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, auth=auth, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(pace(), *(worker(client) for _ in range(CONCURRENCY)))
    state.done, state.finished_at = True, time.monotonic()


# --- one mode's run ----------------------------------------------------------------------------------


@dataclass
class NodeKill:
    """One node killed and restarted (--nodes 3); times in seconds since the mode started."""

    node: int
    role: str
    at: str  # what had been accepted when it was killed
    killed_s: float = 0.0  # when `stop-node --kill` returned (the JVM was gone)
    fenced_s: float | None = None  # when it had left the cluster metadata (fenced by the controller)
    restarting_s: float = 0.0  # when `start-node` was run: NODE_DOWN_S later, once it was fenced
    started_s: float = 0.0  # when `start-node` returned (the node was in the metadata again)
    back_in_isr_s: float = 0.0  # when every raw partition had all three replicas in sync again
    start_node_seconds: float = 0.0
    # The write stall as the sender sees it: the longest a POST waited past the kill for its 2xx,
    # among those in flight at the kill or begun while the node was down, before `start-node`
    # (None: no POST then, e.g. the kill came after sending ended).
    write_stall_s: float | None = None
    write_stall_post: str = ""  # that POST: when it began (relative to the kill) and its tries
    refused_503: int = 0  # 503 answers from the kill until the node was back in the ISR
    accepted_in_window: int = 0  # POSTs answered 2xx from the kill until the node was back in the ISR
    # The slowest POST begun while the node started again (start-node until back in the ISR): a
    # JVM starting takes a core, and its return moves no leaderships, so this is CPU, not Kafka.
    slowest_during_restart_s: float | None = None


@dataclass
class ModeResult:
    """The outcome of one mode (what --json prints)."""

    mode: str
    webhooks: int
    nodes: int = 1
    accepted: int = 0
    posted_twice: int = 0
    expected_events: int = 0
    records_seen: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    seconds: float = 0.0
    caught_up: bool = False
    dead_lettered: int = 0
    unrouted: int = 0
    without_ce_id: int = 0
    open_transactions: list[str] = field(default_factory=list)
    unread_partitions: list[str] = field(default_factory=list)
    post_answers: dict[str, int] = field(default_factory=dict)
    refused_503: int = 0
    node_kills: list[NodeKill] = field(default_factory=list)
    raw_records: int = 0
    consumers_started: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    sigterm_exits: list[str] = field(default_factory=list)
    sigterm_problems: list[str] = field(default_factory=list)
    consumer_logs: dict[str, Any] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    lost_sample: list[str] = field(default_factory=list)
    duplicate_sample: list[str] = field(default_factory=list)
    unexpected_sample: list[str] = field(default_factory=list)
    dedup_topic: str = ""
    existing_cluster: str = ""  # --cluster-dir: the running cluster this mode used, not one of its own
    topic_suffix: str = ""  # on an existing cluster: what this mode's topic names end with
    temp_dir: str = ""
    error: str | None = None

    @property
    def complete(self) -> bool:
        return (
            self.error is None
            and self.accepted == self.webhooks
            and self.caught_up
            and not self.unread_partitions
            and (self.nodes == 1 or len(self.node_kills) == len(NODE_KILL_AT))
        )

    @property
    def passed(self) -> bool:
        if self.mode == "exactly-once":
            return self.complete and self.lost == 0 and self.duplicates == 0
        return self.complete and self.lost == 0

    def line(self) -> str:
        cluster = ""
        if self.nodes > 1:
            stalls = "/".join(stall_text(k.write_stall_s) for k in self.node_kills) or "none"
            cluster = (
                f", {self.refused_503} answers 503, write stall after the {len(self.node_kills)} "
                f"node kills {stalls} s"
            )
        return (
            f"{self.mode}: accepted {self.accepted} webhooks ({self.posted_twice} posted twice), "
            f"{self.expected_events} expected events, lost {self.lost}, duplicates {self.duplicates}, "
            f"unexpected {self.unexpected}{cluster}, {self.seconds:.0f} s"
        )

    def notes(self) -> list[str]:
        """Anything beyond the summary line worth a look."""
        found = []
        if self.error:
            found.append(f"error: {self.error}")
        if self.accepted < self.webhooks:
            found.append(f"only {self.accepted} of {self.webhooks} webhooks accepted before the timeout")
        if self.nodes > 1 and len(self.node_kills) < len(NODE_KILL_AT):
            found.append(f"only {len(self.node_kills)} of {len(NODE_KILL_AT)} node kills done")
        if not self.caught_up and self.error is None:
            found.append("the group never committed the whole raw topic within the timeout")
        if self.unread_partitions:
            found.append(f"output partitions not read to their end: {', '.join(self.unread_partitions)}")
        if self.open_transactions:
            found.append(f"transactions still open on: {', '.join(self.open_transactions)}")
        if self.dead_lettered or self.unrouted or self.without_ce_id:
            found.append(
                f"{self.dead_lettered} dead-lettered, {self.unrouted} unrouted, "
                f"{self.without_ce_id} derived records without ce_id"
            )
        found += [f"unexpected exit: {text}" for text in self.unexpected_exits]
        found += [f"after SIGTERM: {text}" for text in self.sigterm_problems]
        if self.lost_sample:
            found.append(f"lost, e.g.: {', '.join(self.lost_sample)}")
        if self.duplicate_sample and self.mode == "exactly-once":
            found.append(f"duplicated, e.g.: {', '.join(self.duplicate_sample)}")
        if self.unexpected_sample:
            found.append(f"unexpected, e.g.: {', '.join(self.unexpected_sample)}")
        return found


def stall_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


class ModeRun:
    """The processes of one mode, the chaos it inflicts, and its bookkeeping."""

    def __init__(self, mode: str, args: argparse.Namespace, base_dir: Path, out: TextIO) -> None:
        self.mode, self.args, self.out = mode, args, out
        self.dir = base_dir / mode
        self.dir.mkdir(parents=True)
        self.started = time.monotonic()
        self.deadline = self.started + args.timeout_seconds
        self.result = ModeResult(mode, args.webhooks, nodes=args.nodes, temp_dir=str(self.dir))
        self.rng = random.Random(f"{args.seed}-chaos")
        token = uuid.uuid4().hex[:8]
        self.group_id = f"chaos-{mode}-{token}"
        # On a cluster others use (and the other mode used before), fresh names: no record of an
        # earlier run can be read as this mode's, and its transactional ids are new too.
        self.suffix = f".chaos-{mode}-{token}" if args.cluster_dir else ""
        self.topics = mode_topics(self.suffix)
        # The planning (expected_outputs) names the default topics: where each went under our names.
        self.renamed = dict(zip(mode_topics().values(), self.topics.values(), strict=True))
        self.result.topic_suffix = self.suffix
        self.password = secrets.token_urlsafe(18)
        self.child_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("INGRESS_", "CONSUMER_", "KAFKA_"))
        }
        kafka_local_env = {
            k: v for k, v in os.environ.items() if k not in ("KAFKA_LOCAL_DIR", "KAFKA_LOCAL_PORT")
        }
        self.broker: Broker | Cluster
        if args.cluster_dir:
            self.broker = Cluster(args.cluster_port, args.cluster_dir, kafka_local_env, existing=True)
            self.result.existing_cluster = str(args.cluster_dir)
        elif args.nodes == 1:
            self.broker = Broker(free_port(), (self.dir / "kafka").resolve(), kafka_local_env)
        else:
            self.broker = Cluster(
                consecutive_free_ports(CLUSTER_NODES), (self.dir / "kafka").resolve(), kafka_local_env
            )
        self.ingress: Child | None = None
        self.consumers: list[Child] = []  # every consumer started, in order
        self.serial = 0

    # -- output

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {self.mode}: {text}"
        print(line, file=self.out, flush=True)

    def action(self, text: str) -> None:
        self.result.actions.append(f"{time.monotonic() - self.started:.1f} s: {text}")
        self.say(text)

    # -- processes

    def topic_env(self) -> dict[str, str]:
        return {f"CONSUMER_{name.upper()}_TOPIC": topic for name, topic in self.topics.items()}

    def start_ingress(self) -> Child:
        port, admin_port = free_port(), free_port()
        env = {
            **self.child_env,
            "INGRESS_HOST": "127.0.0.1",
            "INGRESS_PORT": str(port),
            "INGRESS_ADMIN_PORT": str(admin_port),
            "INGRESS_RAW_TOPIC": self.topics["raw"],
            "INGRESS_BASIC_AUTH_USERNAME": USERNAME,
            "INGRESS_BASIC_AUTH_PASSWORD": self.password,
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
        }
        self.ingress = Child.start("ingress", "ingress", env, port, self.dir / "ingress.log")
        self.ingress.admin_port = admin_port
        return self.ingress

    def start_consumer(self) -> Child:
        self.serial += 1
        port = free_port()
        env = {
            **self.child_env,
            **self.topic_env(),
            "CONSUMER_PROCESSING_GUARANTEE": self.mode,
            "CONSUMER_GROUP_ID": self.group_id,
            "CONSUMER_HTTP_HOST": "127.0.0.1",
            "CONSUMER_HTTP_PORT": str(port),
            "CONSUMER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
        }
        name = f"consumer-{self.serial}"
        child = Child.start(name, "consumer", env, port, self.dir / f"{name}.log")
        self.consumers.append(child)
        self.result.consumers_started = self.serial
        return child

    def live_consumers(self) -> list[Child]:
        return [c for c in self.consumers if c.signalled is None and c.alive()]

    def cleanup(self) -> None:
        """Kill everything this mode started (idempotent, synchronous)."""
        for child in [*self.consumers, *([self.ingress] if self.ingress else [])]:
            child.kill()
        try:
            if isinstance(self.broker, Cluster) and self.broker.existing:
                # Not ours to stop: every node this mode killed is started again instead.
                restarted = self.broker.restore()
                if restarted:
                    nodes = ", ".join(map(str, restarted))
                    print(
                        f"{self.mode}: started node(s) {nodes} of the cluster again",
                        file=self.out,
                        flush=True,
                    )
            else:
                self.broker.sigkill()
        except RuntimeError as exc:
            print(f"{self.mode}: {exc}", file=self.out, flush=True)

    # -- the run

    async def run(self, bodies: list[bytes], posts: list[Post], twice: set[int]) -> ModeResult:
        tasks: list[asyncio.Task[None]] = []
        try:
            if isinstance(self.broker, Cluster) and self.broker.existing:
                seconds = await self.broker.attach(timeout=60)
                self.say(
                    f"the running {self.args.nodes}-node cluster on {self.broker.bootstrap} (data in "
                    f"{self.broker.data_dir}) is whole (checked in {seconds:.1f} s); this mode's topics "
                    f"end in {self.suffix}"
                )
            else:
                seconds = await self.broker.start(timeout=max(10.0, self.deadline - time.monotonic()))
                what = "broker" if self.args.nodes == 1 else f"{self.args.nodes}-node cluster"
                self.say(
                    f"{what} on {self.broker.bootstrap} ready in {seconds:.1f} s "
                    f"(data in {self.broker.data_dir})"
                )
            env = {
                **self.child_env,
                **self.topic_env(),
                "CONSUMER_PROCESSING_GUARANTEE": "exactly-once",  # so create-topics includes the dedup topic
                "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            }
            if self.args.nodes > 1:  # the project's own choice on 3 brokers: factor 3, min ISR 2
                env = {k: v for k, v in env.items() if k not in TOPIC_OVERRIDES}
            if self.suffix:  # `topics create` makes the forwarder's dead-letter topic too
                env["LRS_DLQ_TOPIC"] = lrs_dead_letter_topic(self.suffix)
            note = await provision_topics(
                self.broker.bootstrap,
                env,
                self.topics,
                self.args.partitions,
                self.dir / "create-topics.log",
                replication=min(3, self.args.nodes),
            )
            self.result.dedup_topic = note
            self.say(f"topics created with {self.args.partitions} partitions ({note})")
            ingress = self.start_ingress()
            await ingress.wait_ready(60, json_status=False)
            first = self.start_consumer()
            waited = await first.wait_ready(90, json_status=True)
            self.say(
                f"ingress on :{ingress.port}, {first.name} ready in {waited:.1f} s (group {self.group_id})"
            )

            state = SendState(len(bodies))
            auth = httpx.BasicAuth(USERNAME, self.password)
            sender = asyncio.create_task(
                send(
                    f"http://127.0.0.1:{ingress.port}",
                    auth,
                    bodies,
                    posts,
                    self.args.rate,
                    self.deadline,
                    state,
                    random.Random(f"{self.args.seed}-jitter"),
                )
            )
            tasks = [
                sender,
                asyncio.create_task(self.watch()),
                asyncio.create_task(self.report_progress(state)),
            ]
            chaos = asyncio.create_task(self.chaos(state))
            tasks.append(chaos)
            node_chaos: asyncio.Task[None] | None = None
            if isinstance(self.broker, Cluster):
                node_chaos = asyncio.create_task(self.node_chaos(self.broker, state))
                tasks.append(node_chaos)
            await sender
            self.result.accepted = state.accepted
            self.result.posted_twice = sum(1 for i in twice if state.ok_posts[i] >= 2)
            self.result.post_answers = dict(sorted(state.attempts.items()))
            self.result.refused_503 = len(state.refused_at)
            retries = sum(state.attempts.values()) - sum(state.ok_posts.values())
            self.say(
                f"sender done: {state.accepted} of {len(bodies)} webhooks accepted, "
                f"{sum(state.ok_posts.values())} POSTs answered 2xx, {retries} retried "
                f"(answers: {self.result.post_answers})"
            )
            await chaos
            if node_chaos is not None:
                await node_chaos
                self.measure_stalls(state)
                # Read the group's offsets and the outputs only from a whole cluster: every
                # partition of every topic with its three replicas in sync.
                waited = await wait_in_sync(
                    self.broker.bootstrap,
                    sorted(self.topics.values()),
                    CLUSTER_NODES,
                    timeout=max(30.0, self.deadline - time.monotonic()),
                )
                self.say(
                    f"every partition of every topic has {CLUSTER_NODES} replicas in sync ({waited:.1f} s)"
                )

            progress = await self.wait_caught_up()
            self.result.caught_up = progress.caught_up
            self.result.raw_records = progress.total
            # Every topic the planning sends our bodies to (a handler added since is read too).
            planned = expected_outputs([bodies[i] for i in sorted(state.ok_posts)], self.topics["raw"])
            others = {self.topics["dlq"], self.topics["unrouted"]}
            planned_topics = {self.renamed.get(r.topic, r.topic) for r in planned}
            derived = sorted({self.topics[t] for t in DERIVED} | planned_topics - others)
            wanted = {
                dict(r.headers)["ce_id"].decode()
                for r in planned
                if self.renamed.get(r.topic, r.topic) in derived
            }
            for attempt in range(1, READ_ATTEMPTS + 1):
                read = await read_outputs(
                    self.broker.bootstrap,
                    derived,
                    [self.topics["dlq"], self.topics["unrouted"]],
                    self.args.partitions,
                    READ_TIMEOUT_S,
                )
                if wanted <= read.ce_ids.keys() or attempt == READ_ATTEMPTS:
                    break
                # A broker that has just restarted has answered end offsets of 0 (seen: a whole read
                # came back empty, and the same data read in full a moment later): read again before
                # counting anything as lost.
                self.say(
                    f"read {len(wanted & read.ce_ids.keys())} of {len(wanted)} expected events; "
                    f"reading again in {READ_RETRY_S:.0f} s"
                )
                await asyncio.sleep(READ_RETRY_S)
            self.tally(bodies, state, read.ce_ids)
            self.result.records_seen = sum(read.records[t] for t in derived)
            self.result.dead_lettered = read.records[self.topics["dlq"]]
            self.result.unrouted = read.records[self.topics["unrouted"]]
            self.result.without_ce_id = read.without_ce_id
            self.result.open_transactions = read.open_transactions
            self.result.unread_partitions = read.unread
        except Exception as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"
            self.say(f"ERROR {self.result.error}")
        finally:
            for task in tasks:
                task.cancel()
            self.cleanup()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            self.result.seconds = time.monotonic() - self.started
            self.result.consumer_logs = log_summary([c.log_path for c in self.consumers])
        return self.result

    def tally(self, bodies: list[bytes], state: SendState, seen: Counter[str]) -> None:
        accepted = [bodies[i] for i in sorted(state.ok_posts)]
        outgoing = expected_outputs(accepted, self.topics["raw"])
        stray = [r.topic for r in outgoing if not any(h == "ce_id" for h, _ in r.headers)]
        if stray:
            raise RuntimeError(f"the planning code sends {len(stray)} of our bodies to {set(stray)}")
        expected = {dict(r.headers)["ce_id"].decode() for r in outgoing}
        lost = sorted(expected - seen.keys())
        unexpected = sorted(seen.keys() - expected)
        duplicated = sorted(ce_id for ce_id, n in seen.items() if n > 1)
        self.result.expected_events = len(expected)
        self.result.lost = len(lost)
        self.result.unexpected = len(unexpected)
        self.result.duplicates = sum(n - 1 for n in seen.values())
        self.result.lost_sample = lost[:5]
        self.result.unexpected_sample = unexpected[:5]
        self.result.duplicate_sample = [f"{ce_id} x{seen[ce_id]}" for ce_id in duplicated[:5]]

    async def wait_caught_up(self) -> GroupProgress:
        """Until the group has committed every raw partition to its end (bounded by the deadline)."""
        last_print = time.monotonic()
        while True:
            try:
                progress = await group_progress(
                    self.broker.bootstrap, self.group_id, self.topics["raw"], self.args.partitions
                )
            except Exception as exc:  # the broker may be slow right after chaos: ask again
                self.say(f"reading the group's offsets failed ({type(exc).__name__}: {exc}); retrying")
                progress = GroupProgress({}, {})
            if progress.caught_up:
                self.say(f"group caught up: committed all {progress.total} raw records")
                return progress
            if time.monotonic() > self.deadline:
                self.say(f"timed out waiting for the group: lag {progress.lag} of {progress.total}")
                return progress
            if time.monotonic() - last_print >= 15:
                last_print = time.monotonic()
                live = ", ".join(c.name for c in self.live_consumers()) or "none"
                self.say(f"waiting for the group: lag {progress.lag} of {progress.total} (running: {live})")
            await asyncio.sleep(1.0)

    async def report_progress(self, state: SendState) -> None:
        while not state.done:
            await asyncio.sleep(30)
            if not state.done:
                self.say(f"progress: {state.accepted}/{state.total} webhooks accepted")

    async def watch(self) -> None:
        """Report processes that exit by themselves, and SIGTERMed consumers' exits (SIGKILL after 45 s)."""
        while True:
            for child in [*self.consumers, *([self.ingress] if self.ingress else [])]:
                if child.reported:
                    continue
                if child.alive():
                    if (
                        child.signalled == "SIGTERM"
                        and time.monotonic() - child.signalled_at > SIGTERM_GRACE_S
                    ):
                        child.kill()
                        text = f"{child.name} still ran {SIGTERM_GRACE_S:.0f} s after SIGTERM; SIGKILLed it"
                        self.result.sigterm_exits.append(text)
                        self.result.sigterm_problems.append(text)
                        self.say(f"!! {text}")
                        child.reported = True
                    continue
                child.reported = True
                code = child.proc.returncode
                if child.signalled is None:
                    text = (
                        f"{child.name} (pid {child.pid}) exited by itself with status {code}; "
                        f"log {child.log_path}"
                    )
                    self.result.unexpected_exits.append(text)
                    self.say(f"!! {text}")
                elif child.signalled == "SIGTERM":
                    took = time.monotonic() - child.signalled_at
                    text = f"{child.name} exited {took:.1f} s after SIGTERM, status {code}"
                    self.result.sigterm_exits.append(text)
                    if code != 0:
                        self.result.sigterm_problems.append(text)
                    self.say(f"{'!!' if code != 0 else '  '} {text}")
            await asyncio.sleep(0.25)

    # -- the chaos

    async def chaos(self, state: SendState) -> None:
        # On a cluster the node kills (node_chaos) replace the broker's.
        broker_step = [(0.55, self.kill_and_restart_the_broker)] if self.args.nodes == 1 else []
        steps: list[tuple[float, Callable[[str], Awaitable[None]]]] = [
            (0.15, self.kill_and_replace_the_consumer),
            (0.30, self.scale_up),
            (0.45, self.kill_and_replace_one),
            *broker_step,
            (0.75, self.scale_down),
            (0.85, self.kill_and_replace_the_consumer),
        ]
        for threshold, step in steps:
            while state.progress < threshold:
                if state.done or time.monotonic() > self.deadline:
                    self.say(f"chaos stopped before the {threshold:.0%} step (sending ended)")
                    return
                await asyncio.sleep(0.1)
            await step(f"{state.progress:.0%} accepted ({state.accepted}/{state.total})")

    def _kill(self, victim: Child) -> str:
        victim.send(signal.SIGKILL)
        victim.kill()
        return f"SIGKILL {victim.name} (pid {victim.pid})"

    async def kill_and_replace_the_consumer(self, at: str) -> None:
        killed = [self._kill(c) for c in self.live_consumers()]
        new = self.start_consumer()
        self.action(f"{at}: {'; '.join(killed) or 'no consumer running'}; started {new.name}")

    async def scale_up(self, at: str) -> None:
        live = len(self.live_consumers())
        started = [self.start_consumer().name for _ in range(max(0, 3 - live))]
        self.action(f"{at}: scale {live} -> 3: started {', '.join(started) or 'none'}")

    async def kill_and_replace_one(self, at: str) -> None:
        live = self.live_consumers()
        killed = self._kill(self.rng.choice(live)) if live else "no consumer running"
        self.action(f"{at}: {killed} (one of {len(live)}); started {self.start_consumer().name}")

    async def kill_and_restart_the_broker(self, at: str) -> None:
        assert isinstance(self.broker, Broker)
        pids = self.broker.sigkill()
        self.action(
            f"{at}: SIGKILL broker (pid {', '.join(map(str, pids)) or 'none found'}); "
            f"restarting it in {BROKER_DOWN_S:.0f} s"
        )
        await asyncio.sleep(BROKER_DOWN_S)
        seconds = await self.broker.start(timeout=max(10.0, self.deadline - time.monotonic()))
        self.action(
            f"broker restarted on {self.broker.bootstrap} (same data dir; "
            f"kafka-local start took {seconds:.1f} s)"
        )

    async def scale_down(self, at: str) -> None:
        live = self.live_consumers()
        stopping = live[:-1]
        for child in stopping:
            child.send(signal.SIGTERM)
        names = ", ".join(f"{c.name} (pid {c.pid})" for c in stopping) or "nothing"
        self.action(f"{at}: scale {len(live)} -> {len(live) - len(stopping)}: SIGTERM {names}")

    # -- node kills (--nodes 3)

    async def node_chaos(self, cluster: Cluster, state: SendState) -> None:
        """One node at a time, at NODE_KILL_AT of the webhooks accepted: SIGKILL it, start it again
        NODE_DOWN_S later, wait until it is back in the ISR of every raw partition. The victims:
        the leader of raw partition 0, the group's coordinator, then (exactly-once) the transaction
        coordinator of a consumer's transactional id or (at-least-once) a node not killed yet.
        Unlike the consumer steps these are done even when sending ended first (said so)."""
        roles = ("leader", "group", "transactions" if self.mode == "exactly-once" else "another")
        victims: list[int] = []
        for number, (threshold, role) in enumerate(zip(NODE_KILL_AT, roles, strict=True), start=1):
            while state.progress < threshold and not state.done:
                if time.monotonic() > self.deadline:
                    self.say(f"node kills stopped before kill {number} (timeout)")
                    return
                await asyncio.sleep(0.1)
            at = (
                "after sending ended"
                if state.done
                else f"{state.progress:.0%} accepted ({state.accepted}/{state.total})"
            )
            node, why = await self.pick_node(cluster, role, victims)
            await self.kill_and_restart_node(cluster, number, node, why, at)
            victims.append(node)

    async def pick_node(self, cluster: Cluster, role: str, victims: list[int]) -> tuple[int, str]:
        """The node to kill for `role`, and the role as the action line states it."""
        bootstrap, raw = cluster.bootstrap, self.topics["raw"]
        others = [n for n in ALL_NODES if n not in victims]
        try:
            if role == "leader":
                node = await partition_leader(bootstrap, raw, 0)
                if node < 1:
                    raise LookupError(f"{raw}-0 has no leader")
                return node, f"leader of {raw}-0"
            if role == "group":
                node = await group_coordinator(bootstrap, self.group_id, timeout=15)
                again = f"; it was killed before (kill {victims.index(node) + 1})" if node in victims else ""
                return node, f"coordinator of group {self.group_id}{again}"
            if role == "transactions":
                # The consumer that owns raw partition p runs the transactional producer of p.
                ids = [f"{self.group_id}.{raw}.{p}" for p in range(self.args.partitions)]
                coordinators = [await transaction_coordinator(bootstrap, t, timeout=15) for t in ids]
                first = f"transaction coordinator of {ids[0]}"
                if coordinators[0] not in victims:
                    return coordinators[0], first
                fresh = [(t, n) for t, n in zip(ids, coordinators, strict=True) if n not in victims]
                if fresh:
                    txn_id, node = fresh[0]
                    return node, (
                        f"transaction coordinator of {txn_id} (that of {ids[0]} is node "
                        f"{coordinators[0]}, killed before)"
                    )
                node = self.rng.choice(others or ALL_NODES)
                return node, (
                    f"not a transaction coordinator: every transactional id's coordinator "
                    f"(nodes {sorted(set(coordinators))}) was killed before, so another node"
                )
        except Exception as exc:  # a lookup right after chaos may fail: kill some node anyway
            node = self.rng.choice(others or ALL_NODES)
            return (
                node,
                f"a node not killed yet; looking up the {role} node failed ({type(exc).__name__}: {exc})",
            )
        node = self.rng.choice(others or ALL_NODES)
        return node, "a node not killed yet"

    async def kill_and_restart_node(
        self, cluster: Cluster, number: int, node: int, why: str, at: str
    ) -> None:
        now = time.monotonic
        try:
            controller = LocalCluster(cluster.port, cluster.data_dir).active_controller()
        except OSError:
            controller = None
        role = why + ("; also the active controller" if controller == node else "")
        await cluster.kill_node(node)
        killed = now()
        kill = NodeKill(node, role, at, killed_s=killed - self.started)
        self.action(
            f"{at}: node kill {number}/{len(NODE_KILL_AT)}: SIGKILL node {node} ({role}); "
            f"start-node in {NODE_DOWN_S:.0f} s"
        )
        # Until the controller has fenced it: before that every broker still lists it, so
        # `start-node` would return at once and the ISR would still name it.
        failed = False
        while True:
            try:
                if node not in await broker_ids(cluster.bootstrap):
                    kill.fenced_s = now() - self.started
                    break
            except Exception as exc:  # right after a kill a request may go to the dead node
                if not failed:
                    self.say(f"asking for the brokers failed ({type(exc).__name__}: {exc}); retrying")
                failed = True
            if now() - killed > FENCE_TIMEOUT_S:
                self.say(
                    f"!! node {node} still in the cluster metadata {FENCE_TIMEOUT_S:.0f} s after the kill"
                )
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, killed + NODE_DOWN_S - now()))
        kill.restarting_s = now() - self.started
        kill.start_node_seconds = await cluster.start_node(node, timeout=max(30.0, self.deadline - now()))
        kill.started_s = now() - self.started
        waited = await wait_in_sync(
            cluster.bootstrap, [self.topics["raw"]], CLUSTER_NODES, timeout=max(30.0, self.deadline - now())
        )
        kill.back_in_isr_s = now() - self.started
        self.result.node_kills.append(kill)
        fenced = "never" if kill.fenced_s is None else f"{kill.fenced_s - kill.killed_s:.1f} s after the kill"
        self.action(
            f"node {node} fenced {fenced}, started again (start-node took {kill.start_node_seconds:.1f} s), "
            f"back in the ISR of every {self.topics['raw']} partition {waited:.1f} s later, "
            f"{kill.back_in_isr_s - kill.killed_s:.1f} s after the kill"
        )

    def measure_stalls(self, state: SendState) -> None:
        """Per node kill: the longest a POST waited past the kill for its 2xx, and the 503s."""
        for kill in self.result.node_kills:
            began, ended = self.started + kill.killed_s, self.started + kill.back_in_isr_s
            restarting = self.started + kill.restarting_s
            waits = sorted(
                (end - max(start, began), start - began, tries)
                for start, end, tries in state.chains
                if end > began and start < restarting
            )
            if waits:
                kill.write_stall_s, offset, tries = waits[-1]
                kill.write_stall_post = f"began {offset:+.1f} s from the kill, {tries} tries"
            during_restart = [end - start for start, end, _ in state.chains if restarting <= start < ended]
            kill.slowest_during_restart_s = max(during_restart, default=None)
            kill.accepted_in_window = sum(1 for _, end, _ in state.chains if began <= end < ended)
            kill.refused_503 = sum(1 for t in state.refused_at if began <= t < ended)


# --- the whole run -----------------------------------------------------------------------------------


def code_version() -> str:
    """The commit the processes run, and which of their files differ from it (read-only git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = [
            line[3:] for line in git("status", "--porcelain", "--", *SOURCES).splitlines() if line.strip()
        ]
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"git {head}" + (f", uncommitted changes in {', '.join(changed)}" if changed else "")


def table(results: Sequence[ModeResult]) -> str:
    head: tuple[str, ...] = (
        "mode",
        "accepted",
        "twice",
        "expected",
        "seen",
        "lost",
        "duplicates",
        "unexpected",
        "s",
        "result",
    )
    cluster = any(r.nodes > 1 for r in results)
    if cluster:
        head = (*head[:-2], "503", "stalls s", *head[-2:])
    rows = [
        (
            r.mode,
            str(r.accepted),
            str(r.posted_twice),
            str(r.expected_events),
            str(r.records_seen),
            str(r.lost),
            str(r.duplicates),
            str(r.unexpected),
            *(
                (str(r.refused_503), "/".join(stall_text(k.write_stall_s) for k in r.node_kills) or "-")
                if cluster
                else ()
            ),
            f"{r.seconds:.0f}",
            "ok" if r.passed else ("FAIL" if r.complete else "INCOMPLETE"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = []
    for row in [head, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated list of {', '.join(MODES)}")
    return modes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--webhooks",
        type=int,
        default=6000,
        help="distinct webhooks per mode (default 6000; aim for >= 5000)",
    )
    parser.add_argument(
        "--duplicate-fraction", type=float, default=0.05, help="fraction posted a second time (default 0.05)"
    )
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=list(MODES),
        help="comma-separated, run in this order (default exactly-once,at-least-once)",
    )
    parser.add_argument("--partitions", type=int, default=6, help="partitions of every topic (default 6)")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the bodies, re-posts and victims (default 1)"
    )
    parser.add_argument(
        "--timeout-seconds", type=float, default=900.0, help="bound of each mode's run (default 900)"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="new webhooks posted per second (default 50)"
    )
    parser.add_argument(
        "--nodes",
        type=int,
        choices=(1, CLUSTER_NODES),
        default=None,
        help="1: one broker, SIGKILLed once (default); 3: a three-node cluster per mode, each node "
        "SIGKILLed and restarted in turn (leader, group coordinator, transaction coordinator)",
    )
    parser.add_argument(
        "--cluster-port",
        type=int,
        default=None,
        help="with --cluster-dir: the first port of a running `kafka-local start --nodes 3` cluster, "
        "used by every mode (implies --nodes 3) instead of a fresh cluster per mode",
    )
    parser.add_argument(
        "--cluster-dir",
        type=lambda p: Path(p).resolve(),
        default=None,
        help="with --cluster-port: that cluster's --data-dir. Neither started nor stopped here; every "
        "node killed is started again, also on errors",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory even after a pass")
    args = parser.parse_args(argv)
    if (args.cluster_port is None) != (args.cluster_dir is None):
        parser.error("--cluster-port and --cluster-dir name a running cluster together: give both or neither")
    if args.cluster_dir is not None:
        if args.nodes == 1:
            parser.error(
                f"--cluster-port and --cluster-dir name a {CLUSTER_NODES}-node cluster: not with --nodes 1"
            )
        if not (args.cluster_dir / "kafka-local.json").is_file():
            parser.error(
                f"--cluster-dir {args.cluster_dir} holds no kafka-local cluster (no kafka-local.json)"
            )
        args.nodes = CLUSTER_NODES
    args.nodes = args.nodes or 1
    if args.webhooks < 1 or args.partitions < 1 or args.rate <= 0 or not 0 <= args.duplicate_fraction <= 1:
        parser.error("--webhooks, --partitions and --rate must be positive, --duplicate-fraction within 0..1")
    return args


def where(args: argparse.Namespace) -> str:
    """What the modes run on, for the first line."""
    if args.cluster_dir:
        return f"the running {args.nodes}-node cluster in {args.cluster_dir} (port {args.cluster_port})"
    return "one broker" if args.nodes == 1 else f"a fresh {args.nodes}-node cluster per mode"


async def run_all(
    args: argparse.Namespace, base_dir: Path, out: TextIO, runs: list[ModeRun], version: str
) -> list[ModeResult]:
    if args.nodes > 1:  # our own clients' complaints about a node we killed: expected, not news
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    rng = random.Random(args.seed)
    bodies = make_bodies(args.webhooks, rng)
    posts, twice = make_posts(args.webhooks, args.duplicate_fraction, rng)
    print(
        f"chaos: {args.webhooks} webhooks ({len(twice)} posted twice, "
        f"{sum(map(len, bodies)) / len(bodies):.0f} bytes on average), {args.partitions} partitions, "
        f"{args.rate:g} webhooks/s, seed {args.seed}, "
        f"{where(args)}, "
        f"modes {', '.join(args.modes)}; logs and broker data in {base_dir}",
        file=out,
        flush=True,
    )
    print(f"chaos: code under test: {version}", file=out, flush=True)
    results = []
    for mode in args.modes:
        run = ModeRun(mode, args, base_dir, out)
        runs.append(run)
        result = await run.run(bodies, posts, twice)
        results.append(result)
        print(result.line(), file=out, flush=True)
        for number, kill in enumerate(result.node_kills, start=1):
            print(
                f"  node kill {number}: node {kill.node} ({kill.role}) at {kill.killed_s:.1f} s: write stall "
                f"{stall_text(kill.write_stall_s)} s ({kill.write_stall_post or 'no POST'}), "
                f"{kill.refused_503} answers 503 and {kill.accepted_in_window} accepted until it was back "
                f"in the ISR ({kill.back_in_isr_s - kill.killed_s:.1f} s after the kill); slowest POST "
                f"while it started again {stall_text(kill.slowest_during_restart_s)} s",
                file=out,
                flush=True,
            )
        logs = result.consumer_logs
        lines = "; ".join(
            f"{family} {', '.join(f'{n} {level}' for level, n in sorted(counts.items()))}"
            for family, counts in logs.get("lines", {}).items()
        )
        print(f"  consumer logs ({result.consumers_started} processes): {lines}", file=out, flush=True)
        for event, n in [*logs.get("top_own", []), *logs.get("top_libraries", [])]:
            print(f"    {n:>6} x {event}", file=out, flush=True)
        for note in result.notes():
            print(f"  !! {note}", file=out, flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    base_dir = Path(tempfile.mkdtemp(prefix="exam-events-chaos-")).resolve()
    runs: list[ModeRun] = []
    results: list[ModeResult] = []
    version = code_version()
    status = 1
    try:
        results = asyncio.run(run_all(args, base_dir, out, runs, version))
        status = 0 if results and all(r.passed for r in results) else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos: interrupted", file=out, flush=True)
        status = 130
    finally:
        for run in runs:  # a second time: nothing may outlive the script
            run.cleanup()
    if results:
        print("", file=out)
        print(table(results), file=out, flush=True)
    if args.json:
        document = {
            "passed": status == 0,
            "code": version,
            "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
            "modes": [{**asdict(r), "complete": r.complete, "passed": r.passed} for r in results],
        }
        print(json.dumps(document, indent=2, default=str))  # default: the --cluster-dir path
    if status == 0 and not args.keep:
        shutil.rmtree(base_dir, ignore_errors=True)
        print(f"chaos: passed; removed {base_dir}", file=out, flush=True)
    else:
        print(
            f"chaos: {'passed' if status == 0 else 'FAILED' if status == 1 else 'interrupted'}; "
            f"logs and broker data kept in {base_dir}",
            file=out,
            flush=True,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
