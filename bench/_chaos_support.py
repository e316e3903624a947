"""Processes and Kafka look-ups for bench/chaos.py.

- `Broker`: a `scripts/kafka-local` broker on its own port and data directory, which can be
  SIGKILLed (the pid `kafka-local start` records in `<data dir>/kafka.pid`) and started again.
- `Cluster`: a `scripts/kafka-local start --nodes 3` cluster on three consecutive ports and its own
  data directory; one node at a time is SIGKILLed (`stop-node N --kill`) and started again
  (`start-node N`), and `sigkill()` kills every node (and any kafka-local command still running).
  With `existing=True` it is a cluster someone else runs: `attach()` checks it is whole, and
  `restore()` starts again whatever node this run killed instead of killing them all.
- `Child`: an ingress or consumer subprocess with its log file; `kill()` is safe to call twice.
- Topic provisioning (`scripts/create-topics`, plus the dedup changelog when it is missing), the
  group's committed offsets against the raw topic's end offsets, and reading the output topics
  from the beginning with read_committed, as downstream services do.

Everything here kills what it started: every `kill()` / `sigkill()` is synchronous, so it also works
from a `finally` block while the event loop is being torn down (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

ROOT = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"
CREATE_TOPICS = ROOT / "scripts" / "create-topics"
CLEANUP_POLICY = "cleanup.policy"
DEDUP_CLEANUP_POLICY = "compact,delete"
MIN_INSYNC = "min.insync.replicas"
PROJECT_LOGGERS = frozenset({"consumer", "common", "handlers", "schemas", "ingress"})


def process_gone(pid: int) -> bool:
    """True when the process no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Poll (synchronously) until every pid is gone; False if some still run after `timeout`."""
    deadline = time.monotonic() + timeout
    while not all(process_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- the broker --------------------------------------------------------------------------------


@dataclass
class Broker:
    """A kafka-local broker: one KRaft node on 127.0.0.1:`port`, data and logs in `data_dir`."""

    port: int
    data_dir: Path
    env: Mapping[str, str]
    _starter: asyncio.subprocess.Process | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float) -> float:
        """`kafka-local start --port P --data-dir D`; returns the seconds it took. Raises on failure."""
        started = time.monotonic()
        self._starter = await asyncio.create_subprocess_exec(
            sys.executable,
            str(KAFKA_LOCAL),
            "start",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            cwd=ROOT,
            env=dict(self.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(self._starter.communicate(), timeout)
        except BaseException:
            self.kill_starter()
            raise
        code = self._starter.returncode
        self._starter = None
        if code != 0:
            reason = (err or out).decode(errors="replace").strip()
            raise RuntimeError(f"kafka-local start failed (status {code}): {reason[-2000:]}")
        return time.monotonic() - started

    def kill_starter(self) -> None:
        if self._starter is not None and self._starter.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._starter.kill()
        self._starter = None

    def recorded_pid(self) -> int | None:
        """The pid `kafka-local start` wrote to <data dir>/kafka.pid, if that process is our broker."""
        try:
            pid = int((self.data_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        line = cmdline(pid)
        if "kafka.Kafka" not in line or str(self.data_dir) not in line or process_gone(pid):
            return None
        return pid

    def pids(self) -> list[int]:
        """Every running broker JVM of this data directory (a unique temporary path): the recorded pid,
        plus any other, e.g. one started by a `kafka-local start` killed before it wrote the pid file."""
        found = set()
        recorded = self.recorded_pid()
        if recorded is not None:
            found.add(recorded)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                line = cmdline(int(entry.name))
                if "kafka.Kafka" in line and str(self.data_dir / "server.properties") in line:
                    found.add(int(entry.name))
        return sorted(pid for pid in found if not process_gone(pid))

    def sigkill(self) -> list[int]:
        """SIGKILL the broker (no clean shutdown) and wait until it is gone; returns the pids killed."""
        self.kill_starter()
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not wait_gone(pids, 15.0):
            raise RuntimeError(f"broker process(es) {pids} still run 15 s after SIGKILL")
        return pids


@dataclass
class Cluster:
    """A kafka-local three-node cluster: node n (1..3) serves clients on 127.0.0.1:`port + n - 1`,
    its data, logs and pid file in `data_dir/node-n`.

    `existing`: a cluster someone else started (`kafka-local start --nodes 3`) and keeps: `attach()`
    checks it instead of `start()`, and `restore()` starts again the nodes this run killed instead
    of `sigkill()` killing them all."""

    port: int
    data_dir: Path
    env: Mapping[str, str]
    nodes: int = 3
    existing: bool = False
    killed: set[int] = field(default_factory=set)  # nodes killed and not yet seen started again
    _command: asyncio.subprocess.Process | None = None  # the kafka-local command running now

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + n}" for n in range(self.nodes))

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, str(KAFKA_LOCAL), *args, "--data-dir", str(self.data_dir)]

    async def _run(self, *args: str, timeout: float) -> tuple[int, str, str]:
        """Run `kafka-local ARGS --data-dir D`: (exit status, stdout, stderr)."""
        argv = self._argv(*args)
        self._command = await asyncio.create_subprocess_exec(
            argv[0],
            *argv[1:],
            cwd=ROOT,
            env=dict(self.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(self._command.communicate(), timeout)
        except BaseException:
            self.kill_command()
            raise
        code = self._command.returncode
        self._command = None
        assert code is not None  # communicate() returns once the process has exited
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def _kafka_local(self, *args: str, timeout: float) -> float:
        """Run `kafka-local ARGS --data-dir D`; returns the seconds it took. Raises on failure."""
        started = time.monotonic()
        code, out, err = await self._run(*args, timeout=timeout)
        if code != 0:
            reason = (err or out).strip()
            raise RuntimeError(f"kafka-local {' '.join(args)} failed (status {code}): {reason[-2000:]}")
        return time.monotonic() - started

    async def start(self, timeout: float) -> float:
        """`kafka-local start --nodes 3 --port P`: returns once all three are in the metadata."""
        return await self._kafka_local(
            "start", "--nodes", str(self.nodes), "--port", str(self.port), timeout=timeout
        )

    async def attach(self, timeout: float) -> float:
        """Check that the existing cluster is whole on our ports (`kafka-local status` exits 0 and
        names our bootstrap list); returns the seconds it took. Raises, in one line, otherwise."""
        started = time.monotonic()
        code, out, err = await self._run("status", timeout=timeout)
        lines = out.strip().splitlines()
        if code != 0 or not lines or lines[-1] != self.bootstrap:
            said = "; ".join(line.strip() for line in (out + err).strip().splitlines()) or "no output"
            raise RuntimeError(
                f"the cluster in {self.data_dir} is not running whole on {self.bootstrap} "
                f"(kafka-local status exited {code}: {said})"
            )
        return time.monotonic() - started

    async def kill_node(self, node: int, timeout: float = 30.0) -> float:
        """`kafka-local stop-node N --kill --port P`: SIGKILL, returns once the process is gone."""
        # Counted before the command runs: interrupted half-way, the node may be dead already.
        self.killed.add(node)
        return await self._kafka_local(
            "stop-node", str(node), "--kill", "--port", str(self.port), timeout=timeout
        )

    async def start_node(self, node: int, timeout: float) -> float:
        """`kafka-local start-node N`: returns once every running broker lists the node."""
        seconds = await self._kafka_local("start-node", str(node), "--port", str(self.port), timeout=timeout)
        self.killed.discard(node)
        return seconds

    def kill_command(self) -> bool:
        """Kill the kafka-local command running now, if any; True when there was one."""
        running = self._command is not None and self._command.returncode is None
        if running and self._command is not None:
            with contextlib.suppress(ProcessLookupError):
                self._command.kill()
        self._command = None
        return running

    def restore(self, timeout: float = 180.0) -> list[int]:
        """For an existing cluster, instead of `sigkill()`: stop the kafka-local command running now,
        `start-node` every node this run killed, then wait until `kafka-local status` says all three
        are in the metadata. Synchronous, as `sigkill()`. Returns the nodes started again; raises,
        in one line, when the cluster is not whole within `timeout`."""
        interrupted = self.kill_command()
        if not self.killed and not interrupted:
            return []
        deadline = time.monotonic() + timeout
        restarted: list[int] = []
        errors: list[str] = []
        for node in sorted(self.killed):
            # A start-node interrupted above may have launched the node already: then this one
            # reports it running and starts nothing.
            try:
                proc = subprocess.run(
                    self._argv("start-node", str(node), "--port", str(self.port)),
                    cwd=ROOT,
                    env=dict(self.env),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                errors.append(f"start-node {node} timed out")
                continue
            if proc.returncode == 0:
                restarted.append(node)
            else:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                errors.append(f"start-node {node}: {lines[-1] if lines else f'status {proc.returncode}'}")
        said = ""
        while time.monotonic() < deadline:
            status = subprocess.run(
                self._argv("status"),
                cwd=ROOT,
                env=dict(self.env),
                capture_output=True,
                text=True,
                check=False,
            )
            if status.returncode == 0:
                self.killed.clear()
                return restarted
            said = "; ".join(status.stdout.strip().splitlines()[:-1] or status.stderr.strip().splitlines())
            time.sleep(0.5)
        problems = "; ".join([*errors, said]) or "no answer"
        raise RuntimeError(
            f"the cluster in {self.data_dir} is not whole {timeout:.0f} s after restoring: {problems}"
        )

    def node_pids(self, node: int) -> list[int]:
        """Every running JVM of node `node` (the recorded pid, plus any whose command line names the
        node's server.properties: a node launched by a command killed before it wrote the pid file,
        or its storage formatter)."""
        home = self.data_dir / f"node-{node}"
        found = set()
        with contextlib.suppress(OSError, ValueError):
            pid = int((home / "kafka.pid").read_text().strip())
            if str(home) in cmdline(pid):
                found.add(pid)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and str(home / "server.properties") in cmdline(int(entry.name)):
                found.add(int(entry.name))
        return sorted(pid for pid in found if not process_gone(pid))

    def pids(self) -> list[int]:
        return sorted(pid for node in range(1, self.nodes + 1) for pid in self.node_pids(node))

    def sigkill(self) -> list[int]:
        """SIGKILL every node (and a running kafka-local command) and wait until all are gone."""
        self.kill_command()
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not wait_gone(pids, 15.0):
            raise RuntimeError(f"cluster process(es) {pids} still run 15 s after SIGKILL")
        return pids


# --- ingress and consumer subprocesses -----------------------------------------------------------


@dataclass
class Child:
    """A subprocess we started (`python -m ingress` or `python -m consumer`), its HTTP port and log."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    signalled: str | None = None  # the signal we sent, once we sent one
    signalled_at: float = 0.0
    reported: bool = False  # its exit has been reported
    admin_port: int | None = None  # where /readyz is, when not on `port` (the ingress's admin port)

    @classmethod
    def start(cls, name: str, module: str, env: Mapping[str, str], port: int, log_path: Path) -> Child:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(name, proc, port, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        """Send a signal on purpose (its exit is then expected)."""
        if self.signalled is None:
            self.signalled, self.signalled_at = sig.name, time.monotonic()
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL if still running, and reap it (bounded)."""
        if self.alive():
            if self.signalled is None:
                self.signalled, self.signalled_at = "SIGKILL", time.monotonic()
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    async def get(self, client: httpx.AsyncClient, path: str) -> httpx.Response | None:
        try:
            return await client.get(f"http://127.0.0.1:{self.admin_port or self.port}{path}", timeout=2.0)
        except httpx.HTTPError:
            return None

    async def wait_ready(self, timeout: float, *, json_status: bool) -> float:
        """Poll /readyz until ready (consumer: JSON status "ready"; ingress: 200); returns seconds waited."""
        started = time.monotonic()
        async with httpx.AsyncClient() as client:
            while True:
                if not self.alive():
                    raise RuntimeError(
                        f"{self.name} exited with status {self.proc.returncode} before it was ready; "
                        f"log: {self.log_path}\n{self.log_tail()}"
                    )
                response = await self.get(client, "/readyz")
                if response is not None and response.status_code == 200:
                    if not json_status or response.json().get("status") == "ready":
                        return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; log: {self.log_path}")
                await asyncio.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def log_summary(paths: Sequence[Path], top: int = 6) -> dict[str, Any]:
    """Over the consumers' JSON logs: lines per logger family (`consumer`, `aiokafka`, `faststream`,
    `uvicorn`, ...) and level, and the most frequent warning/error events, the project's own first."""
    levels: dict[str, Counter[str]] = {}
    ours: Counter[str] = Counter()
    theirs: Counter[str] = Counter()
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                levels.setdefault("not-json", Counter())["line"] += 1
                continue
            # The project's structlog lines carry no logger name; library lines do.
            logger = str(entry.get("logger", "consumer"))
            family = logger.split(".")[0]
            level = str(entry.get("level", "?")).lower()
            levels.setdefault(family, Counter())[level] += 1
            if level in ("warning", "error", "critical", "exception"):
                event = " ".join(str(entry.get("event", "?")).split())[:140]
                (ours if family in PROJECT_LOGGERS else theirs)[f"{level} [{logger}] {event}"] += 1
    return {
        "lines": {family: dict(counts) for family, counts in sorted(levels.items())},
        "top_own": ours.most_common(top),
        "top_libraries": theirs.most_common(3),
    }


# --- topics --------------------------------------------------------------------------------------


async def provision_topics(
    bootstrap: str,
    env: Mapping[str, str],
    topics: Mapping[str, str],
    partitions: int,
    log_path: Path,
    replication: int = 1,
) -> str:
    """`scripts/create-topics --partitions P`, then the dedup changelog if create-topics left it out
    (cleanup.policy=compact,delete), then a check that every topic has P partitions with leaders.
    create-topics picks the replication factor itself (min(3, brokers), min.insync.replicas=2 at 3);
    with `replication` above 1 every topic must then have that many replicas of every partition,
    all in sync, and min.insync.replicas=2. Returns a short note on the dedup topic's
    cleanup.policy (and the replication)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CREATE_TOPICS),
        "--partitions",
        str(partitions),
        cwd=ROOT,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        raise
    _write(log_path, out)
    if proc.returncode != 0:
        text = out.decode(errors="replace")
        raise RuntimeError(f"scripts/create-topics failed ({proc.returncode}): {text}")

    dedup = topics["dedup"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        created_here = False
        if dedup not in set(await admin.list_topics()):
            await admin.create_topics(
                [
                    NewTopic(
                        dedup,
                        num_partitions=partitions,
                        replication_factor=replication,
                        topic_configs={
                            CLEANUP_POLICY: DEDUP_CLEANUP_POLICY,
                            **({MIN_INSYNC: "2"} if replication >= 3 else {}),
                        },
                    )
                ]
            )
            created_here = True
        names = sorted(topics.values())
        descriptions = await admin.describe_topics(names)
        described = {t["topic"]: len(t["partitions"]) for t in descriptions}
        wrong = {name: described.get(name) for name in names if described.get(name) != partitions}
        if wrong:
            raise RuntimeError(f"topics without {partitions} partitions after provisioning: {wrong}")
        policy = await _topic_config(admin, dedup, CLEANUP_POLICY)
        replicated = ""
        if replication > 1:
            factors = {
                t["topic"]: sorted({len(p["replicas"]) for p in t["partitions"]}) for t in descriptions
            }
            wrong_factor = {name: f for name, f in factors.items() if f != [replication]}
            if wrong_factor:
                raise RuntimeError(f"topics without replication factor {replication}: {wrong_factor}")
            min_isr = {name: await _topic_config(admin, name, MIN_INSYNC) for name in names}
            wrong_isr = {name: value for name, value in min_isr.items() if value != "2"}
            if replication >= 3 and wrong_isr:
                raise RuntimeError(f"topics without {MIN_INSYNC}=2: {wrong_isr}")
            replicated = f"; every topic replication factor {replication}, {MIN_INSYNC} 2"
    finally:
        await admin.close()
    await _wait_for_leaders(bootstrap, list(topics.values()), partitions, replicas=replication)
    who = "created by bench/chaos.py" if created_here else "created by scripts/create-topics"
    return f"{dedup} {who}, {CLEANUP_POLICY}={policy}{replicated}"


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


async def _topic_config(admin: Any, topic: str, name: str) -> str:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: None})]
    )
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if entry["config_names"] == name:
                    return str(entry["config_value"])
    return "?"


async def _wait_for_leaders(
    bootstrap: str, names: Sequence[str], partitions: int, timeout: float = 60, replicas: int = 1
) -> None:
    """Until every partition has a leader (and, with `replicas` > 1, that many in-sync replicas)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            await consumer._client.force_metadata_update()
            cluster = consumer._client.cluster
            if all(
                cluster.leader_for_partition(TopicPartition(name, p)) is not None
                for name in names
                for p in range(partitions)
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {list(names)} have no leaders after {timeout:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    if replicas > 1:
        await wait_in_sync(bootstrap, names, replicas, max(1.0, deadline - time.monotonic()))


async def in_sync_counts(bootstrap: str, names: Sequence[str]) -> dict[str, int]:
    """The size of the ISR of every partition of `names`, as "topic[p]" -> count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return {f"{t['topic']}[{p['partition']}]": len(p["isr"]) for t in described for p in t["partitions"]}


async def wait_in_sync(bootstrap: str, names: Sequence[str], replicas: int, timeout: float) -> float:
    """Until every partition of `names` has `replicas` replicas in sync; returns the seconds waited."""
    started = time.monotonic()
    short: dict[str, int] = {}
    while True:
        try:
            counts = await in_sync_counts(bootstrap, names)
            short = {name: n for name, n in counts.items() if n < replicas}
            if counts and not short:
                return time.monotonic() - started
        except Exception as exc:  # a node may have just died or come back: ask again
            short = {"?": 0, type(exc).__name__: 0}
        if time.monotonic() - started > timeout:
            raise TimeoutError(
                f"partitions with fewer than {replicas} in-sync replicas after {timeout:.0f} s: {short}"
            )
        await asyncio.sleep(0.25)


# --- the group's progress --------------------------------------------------------------------------


@dataclass
class GroupProgress:
    """Committed offsets of the group against the raw topic's end offsets, per partition."""

    committed: dict[int, int]
    ends: dict[int, int]

    @property
    def caught_up(self) -> bool:
        return bool(self.ends) and all(self.committed.get(p, 0) >= end for p, end in self.ends.items())

    @property
    def lag(self) -> int:
        return sum(max(0, end - self.committed.get(p, 0)) for p, end in self.ends.items())

    @property
    def total(self) -> int:
        return sum(self.ends.values())


async def group_progress(bootstrap: str, group_id: str, raw_topic: str, partitions: int) -> GroupProgress:
    """The group's committed offset and the end offset of every raw partition (fresh clients each
    time: the broker may have been restarted in between)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    committed = {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == raw_topic and meta.offset >= 0
    }
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(raw_topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = {tp.partition: int(offset) for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
    return GroupProgress(committed, ends)


# --- reading the outputs ----------------------------------------------------------------------------


@dataclass
class OutputRead:
    """What the output topics hold, read from the beginning with read_committed."""

    ce_ids: Counter[str] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)  # per topic
    without_ce_id: int = 0
    open_transactions: list[str] = field(default_factory=list)  # partitions whose LSO stayed below the HW
    unread: list[str] = field(default_factory=list)  # partitions not read up to their end in time


async def read_outputs(
    bootstrap: str, derived: Sequence[str], others: Sequence[str], partitions: int, timeout: float
) -> OutputRead:
    """Read `derived` (counting ce_ids) and `others` (counting records) without a group, read_committed.

    First waits (within `timeout`) until no transaction is open on any of their partitions, i.e.
    until each partition's last stable offset (read_committed end) equals its high watermark, so
    that "read to the end" means every transaction has been decided; then reads each partition up
    to that end offset.
    """
    deadline = time.monotonic() + timeout
    result = OutputRead()
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    watermarks = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    await watermarks.start()
    try:
        tps = [TopicPartition(t, p) for t in (*derived, *others) for p in range(partitions)]
        reader.assign(tps)
        watermarks.assign(tps)
        while True:
            stable = await reader.end_offsets(tps)
            high = await watermarks.end_offsets(tps)
            still_open = [tp for tp in tps if stable[tp] < high[tp]]
            if not still_open or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        result.open_transactions = [f"{tp.topic}[{tp.partition}]" for tp in still_open]
        await reader.seek_to_beginning(*tps)
        derived_set = set(derived)
        pending = {tp for tp in tps if stable[tp] > 0}
        while pending and time.monotonic() < deadline:
            batch = await reader.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                for message in messages:
                    result.records[tp.topic] += 1
                    if tp.topic in derived_set:
                        ce_id = dict(message.headers).get("ce_id")
                        if ce_id is None:
                            result.without_ce_id += 1
                        else:
                            result.ce_ids[ce_id.decode(errors="replace")] += 1
            for tp in list(pending):
                if await reader.position(tp) >= stable[tp]:
                    pending.discard(tp)
        result.unread = [f"{tp.topic}[{tp.partition}]" for tp in sorted(pending)]
    finally:
        await reader.stop()
        await watermarks.stop()
    return result
