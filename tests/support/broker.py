"""Where the tests' real Kafka broker comes from.

In order: `KAFKA_BOOTSTRAP_SERVERS` when set; an `apache/kafka` container through testcontainers
when a Docker engine answers; otherwise `scripts/kafka-local` on a free port with its own data
directory (Apache Kafka from Maven Central jars, run by the machine's Java).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"
KAFKA_IMAGE = os.environ.get("KAFKA_TEST_IMAGE", "apache/kafka:4.4.0")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalBroker:
    """A broker run by scripts/kafka-local, which a test may stop and start again."""

    port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, *args: str) -> None:
        cmd = [sys.executable, str(KAFKA_LOCAL), *args, "--data-dir", str(self.data_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka-local {args[0]} failed: {proc.stderr.strip()}")

    def start(self) -> None:
        self._run("start", "--port", str(self.port))

    def stop(self) -> None:
        self._run("stop")


@contextmanager
def local_broker(data_dir: Path) -> Iterator[LocalBroker]:
    """Start a kafka-local broker on a free port; stop it on exit."""
    broker = LocalBroker(port=free_port(), data_dir=data_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) responds."""
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextmanager
def container_broker() -> Iterator[str]:
    """An apache/kafka container with its client port published on a fixed free host port."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_NUM_PARTITIONS", "3")
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=120)
        yield f"127.0.0.1:{port}"
