"""A three-node KRaft cluster run by `scripts/kafka-local start --nodes 3`, for failure tests.

`local_cluster(dir)` starts one on free ports (brokers on P, P+1, P+2) with its data in `dir` and
stops it on exit; `LocalCluster` stops, kills and restarts single nodes. Node n is broker (and
node.id) n. The helpers below name the broker that leads a partition or coordinates a consumer
group or a transactional id, so a test can kill exactly that node. docs/cluster.md describes the
cluster and its settings.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.support.broker import KAFKA_LOCAL

NODES = 3
GROUP_COORDINATOR = 0
TRANSACTION_COORDINATOR = 1


def consecutive_free_ports(count: int = NODES, attempts: int = 50) -> int:
    """The first of `count` consecutive loopback ports that nothing listens on right now."""
    for _ in range(attempts):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = int(sock.getsockname()[1])
        if first + count > 65535:
            continue
        if all(_bindable(first + i) for i in range(count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    """A kafka-local cluster: node n (1..3) serves clients on `port + n - 1`."""

    port: int
    data_dir: Path
    last_output: str = ""  # stdout of the last start or start-node

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.broker_port(n)}" for n in range(1, NODES + 1))

    def broker_port(self, node: int) -> int:
        return self.port + node - 1

    def kafka_local(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(KAFKA_LOCAL), *args, "--data-dir", str(self.data_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kafka-local {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def start(self) -> None:
        """Start every node that is down; returns once all three are in the cluster metadata."""
        self.last_output = self.kafka_local("start", "--nodes", str(NODES), "--port", str(self.port)).stdout

    def stop(self) -> None:
        self.kafka_local("stop")

    def stop_node(self, node: int, kill: bool = False) -> None:
        """SIGTERM (controlled shutdown) or, with kill, SIGKILL node `node`; waits until it exited."""
        self.kafka_local("stop-node", str(node), *(["--kill"] if kill else []), "--port", str(self.port))

    def start_node(self, node: int) -> None:
        """Start node `node` again; returns once every running broker lists it in its metadata."""
        self.last_output = self.kafka_local("start-node", str(node), "--port", str(self.port)).stdout

    def pid(self, node: int) -> int | None:
        try:
            return int((self.data_dir / f"node-{node}" / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def active_controller(self) -> int | None:
        """The node whose controller is active, from the nodes' logs (aiokafka has no DescribeQuorum).

        The newest "Becoming the active controller at epoch E" line, by epoch, wins; it may lag a
        just-finished election by the time the log line takes to be written.
        """
        best: tuple[int, int | None] = (-1, None)
        pattern = re.compile(r"\[QuorumController id=(\d+)\] Becoming the active controller at epoch (\d+)")
        for node in range(1, NODES + 1):
            log = self.data_dir / f"node-{node}" / "logs" / "server.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            for match in pattern.finditer(text):
                if int(match.group(2)) > best[0]:
                    best = (int(match.group(2)), int(match.group(1)))
        return best[1]


@contextmanager
def local_cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """Start a three-node kafka-local cluster on free ports in `data_dir`; stop it on exit."""
    cluster = LocalCluster(port=consecutive_free_ports(), data_dir=data_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _admin(bootstrap: str) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    return admin


async def broker_ids(bootstrap: str) -> list[int]:
    """The node ids of the brokers in the cluster metadata (unfenced brokers only, in KRaft)."""
    admin = await _admin(bootstrap)
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return sorted(int(b["node_id"]) for b in cluster["brokers"])


async def describe_partition(bootstrap: str, topic: str, partition: int = 0) -> dict[str, Any]:
    """The metadata of one partition: `leader`, `replicas`, `isr` (node ids)."""
    admin = await _admin(bootstrap)
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for part in described["partitions"]:
        if part["partition"] == partition:
            return dict(part)
    raise LookupError(f"{topic} has no partition {partition}")


async def partition_leader(bootstrap: str, topic: str, partition: int = 0) -> int:
    """The node that leads `topic`'s `partition` (-1 while it has none)."""
    return int((await describe_partition(bootstrap, topic, partition))["leader"])


async def wait_for_isr(
    bootstrap: str, topic: str, partition: int, nodes: set[int], timeout: float = 30.0
) -> list[int]:
    """Wait until the partition exists and its ISR holds every node in `nodes`; returns the ISR."""
    deadline = time.monotonic() + timeout
    isr: list[int] = []
    while time.monotonic() < deadline:
        try:
            isr = [int(n) for n in (await describe_partition(bootstrap, topic, partition))["isr"]]
        except LookupError:  # a topic just created may not be in the metadata yet
            isr = []
        if nodes <= set(isr):
            return isr
        await asyncio.sleep(0.25)
    missing = sorted(nodes - set(isr))
    raise TimeoutError(f"{topic}-{partition}: ISR {isr} still lacks {missing} after {timeout}s")


async def _coordinator(bootstrap: str, key: str, kind: int, timeout: float) -> int:
    # The first lookup may create __consumer_offsets or __transaction_state; until its
    # partitions have leaders the broker answers COORDINATOR_NOT_AVAILABLE, so retry.
    admin = await _admin(bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return int(await admin.find_coordinator(key, kind))
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await admin.close()


async def group_coordinator(bootstrap: str, group_id: str, timeout: float = 30.0) -> int:
    """The node that coordinates consumer group `group_id`."""
    return await _coordinator(bootstrap, group_id, GROUP_COORDINATOR, timeout)


async def transaction_coordinator(bootstrap: str, transactional_id: str, timeout: float = 30.0) -> int:
    """The node that coordinates the transactions of producer `transactional_id`."""
    return await _coordinator(bootstrap, transactional_id, TRANSACTION_COORDINATOR, timeout)
