"""scripts/kafka-local runs a real broker that keeps its data across restarts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.broker import KAFKA_LOCAL, LocalBroker
from tests.support.kafka_io import create_topics, produce, read_records


def kafka_local(broker: LocalBroker, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(KAFKA_LOCAL), *args, "--data-dir", str(broker.data_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def java_pids_for(data_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"kafka.Kafka.*{data_dir}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_second_start_reports_the_running_broker_and_starts_nothing(
    restartable_broker: LocalBroker,
) -> None:
    again = kafka_local(restartable_broker, "start", "--port", str(restartable_broker.port))
    assert again.returncode == 0
    assert "already running" in again.stdout
    assert again.stdout.strip().endswith(restartable_broker.bootstrap)
    assert len(java_pids_for(restartable_broker.data_dir)) == 1


def test_status_prints_the_address_while_running_and_fails_after_stop(
    restartable_broker: LocalBroker,
) -> None:
    running = kafka_local(restartable_broker, "status")
    assert running.returncode == 0
    assert running.stdout.strip() == restartable_broker.bootstrap
    restartable_broker.stop()
    assert kafka_local(restartable_broker, "status").returncode != 0
    restartable_broker.start()  # the fixture stops it at the end


async def test_stop_leaves_no_java_and_a_closed_port_and_start_finds_earlier_records(
    restartable_broker: LocalBroker,
) -> None:
    bootstrap = restartable_broker.bootstrap
    await create_topics(bootstrap, ["kept"], partitions=1)
    await produce(bootstrap, "kept", [b"first", b"second"])

    restartable_broker.stop()
    assert java_pids_for(restartable_broker.data_dir) == []
    assert port_is_closed(restartable_broker.port)

    restartable_broker.start()
    records = await read_records(bootstrap, "kept", count=2)
    assert [r.value for r in records] == [b"first", b"second"]


def test_a_taken_port_is_named_in_a_one_line_error(restartable_broker: LocalBroker, tmp_path: Path) -> None:
    other = LocalBroker(port=restartable_broker.port, data_dir=tmp_path / "other")
    result = kafka_local(other, "start", "--port", str(other.port))
    assert result.returncode == 1
    assert f"port {other.port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stop_node_and_start_node_refuse_a_port_other_than_the_clusters_before_acting(tmp_path: Path) -> None:
    # A cluster's saved state is all either command reads before it refuses: no JVM is needed.
    state = {"nodes": 3, "port": 29092, "controller_ports": [29100, 29101, 29102], "cluster_id": "x"}
    (tmp_path / "kafka-local.json").write_text(json.dumps(state))
    for command in (["stop-node", "1", "--kill"], ["start-node", "1"]):
        result = subprocess.run(
            [sys.executable, str(KAFKA_LOCAL), *command, "--port", "29095", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        refusal = f"kafka-local: error: the cluster in {tmp_path} uses --port 29092, not 29095"
        assert result.stderr == refusal + "\n"
