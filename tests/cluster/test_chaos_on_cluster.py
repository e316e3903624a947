"""The chaos run on the session's three-node cluster: `bench/chaos.py --cluster-port P --cluster-dir D`.

Run as a subprocess with small, bounded numbers, on the `kafka_cluster` fixture's cluster (no
cluster of its own: three more JVMs would share the two cores with these): both processing modes,
each with topics and a group of its own, post webhooks through the real ingress to real consumers
while consumers are SIGKILLed and the group scaled, and SIGKILL and restart one node at a time
(the raw-0 leader, the group coordinator, the transaction coordinator). It asserts on correctness
only: nothing lost in either mode, nothing duplicated in exactly-once mode, and every node running
again at the end, for the tests after it. The counts, 503 answers and write stalls are printed
(and recorded as properties), never asserted.

1200 webhooks at 40/s is 30 s of sending per mode, long enough that the node kills (each about
10 s: kill, 3 s down, start-node, back in the ISR) mostly happen while webhooks arrive; with the
catch-up, about a minute per mode on an idle 2-core machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
CHAOS = ROOT / "bench" / "chaos.py"
MODE_TIMEOUT_S = 240  # --timeout-seconds: bound of one mode's run (plus at most 90 s of reading)
# Both modes, each bounded as above, plus the processes' starts: the subprocess must end by then.
RUN_TIMEOUT_S = 2 * (MODE_TIMEOUT_S + 90 + 60)
# After SIGTERM chaos.py starts again any node it had killed (start-node: up to a minute on a busy machine).
SIGTERM_GRACE_S = 180
ARGS = [
    "--webhooks",
    "1200",
    "--rate",
    "40",
    "--partitions",
    "3",
    "--timeout-seconds",
    str(MODE_TIMEOUT_S),
    "--json",
]


def run_chaos(cluster: LocalCluster) -> tuple[int, str, str]:
    """bench/chaos.py with ARGS on `cluster`: (exit status, stdout, stderr). On a timeout, or when
    the test itself is interrupted, chaos.py gets SIGTERM first: it then kills the ingress and the
    consumers and starts again any node it had killed before it exits; SIGKILL only if it has not
    exited SIGTERM_GRACE_S later."""
    on_cluster = ["--cluster-port", str(cluster.port), "--cluster-dir", str(cluster.data_dir)]
    proc = subprocess.Popen(
        [sys.executable, str(CHAOS), *on_cluster, *ARGS],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=SIGTERM_GRACE_S)
        pytest.fail(f"bench/chaos.py ran longer than {RUN_TIMEOUT_S} s; its output:\n{stderr[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SIGTERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc.returncode, stdout, stderr


def stall(seconds: float | None) -> str:
    return "no POST during the outage" if seconds is None else f"{seconds:.1f} s"


@pytest.mark.timeout(RUN_TIMEOUT_S + SIGTERM_GRACE_S + 30)
def test_chaos_on_the_cluster_loses_nothing_exactly_once_duplicates_nothing_and_every_node_runs_after(
    kafka_cluster: LocalCluster,
    record_property: Callable[[str, object], None],
) -> None:
    began = time.monotonic()
    status, stdout, log = run_chaos(kafka_cluster)
    seconds = time.monotonic() - began
    try:
        document = json.loads(stdout)
    except ValueError:
        pytest.fail(f"no JSON from bench/chaos.py (status {status}); its output:\n{log[-6000:]}")
    modes = {m["mode"]: m for m in document["modes"]}

    print(
        f"\nbench/chaos.py --cluster-port {kafka_cluster.port} {' '.join(ARGS)}: "
        f"status {status}, {seconds:.0f} s"
    )
    for name, mode in modes.items():
        stalls = ", ".join(
            f"node {k['node']} ({k['role']}): {stall(k['write_stall_s'])}" for k in mode["node_kills"]
        )
        print(
            f"{name}: accepted {mode['accepted']}, expected {mode['expected_events']}, "
            f"seen {mode['records_seen']}, lost {mode['lost']}, duplicates {mode['duplicates']}, "
            f"503 answers {mode['refused_503']}, {mode['seconds']:.0f} s; write stall per node kill: {stalls}"
        )
        for key in ("accepted", "lost", "duplicates", "refused_503"):
            record_property(f"{name}_{key}", mode[key])
    record_property("seconds", round(seconds))

    assert set(modes) == {"exactly-once", "at-least-once"}, log[-6000:]
    for name, mode in modes.items():
        assert mode["error"] is None, f"{name}: {mode['error']}\n{log[-6000:]}"
        assert mode["complete"], f"{name} did not run completely\n{log[-6000:]}"
        assert len(mode["node_kills"]) == 3, mode["actions"]
        assert mode["lost"] == 0, f"{name} lost {mode['lost']}, e.g. {mode['lost_sample']}\n{log[-6000:]}"
    eo = modes["exactly-once"]
    assert eo["duplicates"] == 0, f"exactly-once duplicated, e.g. {eo['duplicate_sample']}\n{log[-6000:]}"
    assert status == 0, log[-6000:]
    assert document["passed"]
    # kafka-local status exits 0 only when all three nodes run and are in the cluster metadata.
    assert kafka_cluster.kafka_local("status", check=False).returncode == 0
