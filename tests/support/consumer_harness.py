"""Helpers to run the consumer against a real broker: its topics, in-process apps, subprocesses, offsets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from common.kafka import KafkaConnectionSettings
from consumer.app import ConsumerApp
from consumer.plan import OutgoingRecord, plan_batch
from consumer.settings import ConsumerSettings
from handlers import RulesSettings, build_routing_table
from tests.support.broker import free_port
from tests.support.kafka_io import Record, create_topics, read_records

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ConsumerTopics:
    """One test's own raw and output topics (the later derived topics last: some callers build it
    positionally from the field names)."""

    raw: str
    passed: str
    failed: str
    resits: str
    dlq: str
    unrouted: str
    dedup: str
    overrides: str
    attempts: str
    registrations: str
    xapi: str
    lrs_dlq: str  # lrs-forward's dead-letter topic: the project's topics include it

    @property
    def outputs(self) -> list[str]:
        return [
            self.passed,
            self.failed,
            self.resits,
            self.overrides,
            self.attempts,
            self.registrations,
            self.xapi,
            self.dlq,
            self.unrouted,
            self.lrs_dlq,
        ]

    def env(self) -> dict[str, str]:
        """The CONSUMER_*_TOPIC variables naming these topics."""
        return {
            "CONSUMER_RAW_TOPIC": self.raw,
            "CONSUMER_PASSED_TOPIC": self.passed,
            "CONSUMER_FAILED_TOPIC": self.failed,
            "CONSUMER_RESITS_TOPIC": self.resits,
            "CONSUMER_DLQ_TOPIC": self.dlq,
            "CONSUMER_UNROUTED_TOPIC": self.unrouted,
            "CONSUMER_DEDUP_TOPIC": self.dedup,
            "CONSUMER_OVERRIDES_TOPIC": self.overrides,
            "CONSUMER_ATTEMPTS_TOPIC": self.attempts,
            "CONSUMER_REGISTRATIONS_TOPIC": self.registrations,
            "CONSUMER_XAPI_TOPIC": self.xapi,
            "LRS_DLQ_TOPIC": self.lrs_dlq,
        }


async def make_consumer_topics(
    bootstrap: str, unique_name: Callable[[str], str], raw_partitions: int = 3
) -> ConsumerTopics:
    """Create a raw topic with `raw_partitions` partitions, the ten output topics, lrs-forward's
    dead-letter topic among them (3 partitions), and the dedup changelog (as many partitions as the
    raw topic)."""
    topics = ConsumerTopics(
        raw=unique_name("raw"),
        passed=unique_name("passed"),
        failed=unique_name("failed"),
        resits=unique_name("resits"),
        dlq=unique_name("dlq"),
        unrouted=unique_name("unrouted"),
        dedup=unique_name("dedup"),
        overrides=unique_name("overrides"),
        attempts=unique_name("attempts"),
        registrations=unique_name("registrations"),
        xapi=unique_name("xapi"),
        lrs_dlq=unique_name("lrs-dlq"),
    )
    await create_topics(bootstrap, [topics.raw, topics.dedup], raw_partitions)
    await create_topics(bootstrap, topics.outputs, 3)
    return topics


def consumer_settings(
    bootstrap: str, topics: ConsumerTopics, group_id: str, **overrides: Any
) -> ConsumerSettings:
    """Settings for a consumer on these topics, with short timeouts suited to tests."""
    values: dict[str, Any] = {
        "raw_topic": topics.raw,
        "passed_topic": topics.passed,
        "failed_topic": topics.failed,
        "resits_topic": topics.resits,
        "dlq_topic": topics.dlq,
        "unrouted_topic": topics.unrouted,
        "dedup_topic": topics.dedup,
        "overrides_topic": topics.overrides,
        "attempts_topic": topics.attempts,
        "registrations_topic": topics.registrations,
        "xapi_topic": topics.xapi,
        "group_id": group_id,
        "http_port": free_port(),
        "retry_backoff_initial_seconds": 0.05,
        "retry_backoff_max_seconds": 0.2,
        "graceful_timeout_seconds": 10.0,
        "processing_guarantee": "at-least-once",
        "transaction_timeout_ms": 10_000,
        "kafka": KafkaConnectionSettings(bootstrap_servers=bootstrap),
        "rules": RulesSettings(),
    }
    values.update(overrides)
    return ConsumerSettings(**values)


@asynccontextmanager
async def running(app: ConsumerApp, timeout: float = 30.0) -> AsyncIterator[ConsumerApp]:
    """Run the app in this event loop (as uvicorn's lifespan would) until its partitions are assigned."""
    async with app.start_lifespan_context():
        deadline = time.monotonic() + timeout
        while not app.metrics.registry.get_sample_value("exam_events_consumer_assigned_partitions"):
            if time.monotonic() > deadline:
                raise TimeoutError("the consumer got no partitions")
            await asyncio.sleep(0.05)
        yield app


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (partitions without a commit are absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    }


async def group_members(bootstrap: str, group_id: str) -> int:
    """How many members the group has right now, as the coordinator sees it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    groups = response[0].groups
    # (error_code, group_id, state, protocol_type, protocol, members, ...) in every response version.
    return len(groups[0][5])


def expected_outputs(values: Sequence[bytes], raw_topic: str = "raw") -> list[OutgoingRecord]:
    """What the consumer must publish for these raw values (handlers are pure: compute it here)."""

    @dataclass
    class _Raw:
        topic: str
        partition: int
        offset: int
        key: bytes | None
        value: bytes | None
        headers: Sequence[tuple[str, bytes]]

    settings = ConsumerSettings(kafka=KafkaConnectionSettings(), rules=RulesSettings())
    records = [_Raw(raw_topic, 0, offset, None, value, ()) for offset, value in enumerate(values)]
    plan = plan_batch(
        records,
        build_routing_table(settings.rules),
        settings.derived_topics,
        dlq_topic="dlq",
        unrouted_topic="unrouted",
    )
    return plan.outgoing


def ce_ids(records: Sequence[Record]) -> Counter[str]:
    """How often each `ce_id` occurs among records."""
    return Counter(r.headers["ce_id"].decode() for r in records)


async def read_derived(
    bootstrap: str,
    topics: ConsumerTopics,
    count: int,
    timeout: float = 60.0,
    isolation_level: str = "read_committed",
) -> list[Record]:
    """Read `count` records from the topics of the results' derived events together: passed, failed,
    resits and the xAPI statements (fails if fewer arrive in time)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [
            r
            for topic in (topics.passed, topics.failed, topics.resits, topics.xapi)
            for r in await read_records(
                bootstrap, topic, idle=0.3, timeout=10, isolation_level=isolation_level
            )
        ]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.5)


class ConsumerProcess:
    """`python -m consumer` (or another command) as a subprocess with its own environment."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        command: Sequence[str] = (sys.executable, "-m", "consumer"),
    ) -> None:
        self.port = int(env["CONSUMER_HTTP_PORT"])
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    async def get(self, path: str) -> httpx.Response | None:
        """GET a path of its HTTP port; None while nothing answers."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return await client.get(f"http://127.0.0.1:{self.port}{path}")
        except httpx.HTTPError:
            return None

    async def readiness(self) -> dict[str, Any]:
        response = await self.get("/readyz")
        return response.json() if response is not None else {}

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async def ready() -> bool:
            self.assert_running()
            return (await self.readiness()).get("status") == "ready"

        await wait_until(ready, timeout=timeout, what=f"consumer on port {self.port} to be ready")

    async def metric(self, name: str) -> float:
        """The value of an unlabelled metric (0 when the process does not answer)."""
        response = await self.get("/metrics")
        if response is None:
            return 0.0
        for line in response.text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def assert_running(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"consumer exited:\n{self.log_tail()}"

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
