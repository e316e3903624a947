"""The ingress on a three-node cluster: what it answers 202 is stored, node failures or not, and it
answers 503 only while no in-sync quorum can take the write.

Webhooks are posted steadily (each retried after a 503 until it is accepted, as a sender does)
while nodes are SIGKILLed and started again one at a time, then while two of three are down.
The ingress runs in-process with its real Kafka producer (acks=all, idempotent, 5 s produce
timeout); the raw topic has replication factor 3 and min.insync.replicas 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.cluster import LocalCluster, partition_leader, wait_for_isr
from tests.support.ingress_harness import JSON, basic_auth, running_ingress
from tests.support.kafka_io import read_records

ALL_NODES = {1, 2, 3}
PARTITIONS = 3
SENDERS = 8
# docs/cluster.md: writes stall 2.3-4.3 s after a hard kill with the local cluster's failure
# detection, 5 s more at worst for a produce already waiting (the produce timeout). A 503 later
# than this after a kill, with two nodes still up, would be a 503 that a quorum could have avoided.
STALL_BOUND_S = 10.0


@dataclass
class Answers:
    """Every answer the senders got: (monotonic time it arrived, status), and the accepted bodies."""

    statuses: list[tuple[float, int]] = field(default_factory=list)
    accepted: list[bytes] = field(default_factory=list)
    readiness: list[tuple[float, int]] = field(default_factory=list)  # the admin port's /readyz

    def since(self, began: float, until: float | None = None) -> list[int]:
        return [s for t, s in self.statuses if t >= began and (until is None or t < until)]


async def post_until_accepted(
    client: httpx.AsyncClient, body: bytes, answers: Answers, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        response = await client.post("/webhooks", content=body, headers={**JSON, **basic_auth()})
        answers.statuses.append((time.monotonic(), response.status_code))
        if response.status_code == 202:
            answers.accepted.append(body)
            return
        assert response.status_code == 503, response.text
        await asyncio.sleep(0.2)


async def send_steadily(
    client: httpx.AsyncClient, answers: Answers, stop: asyncio.Event, sender: int
) -> None:
    serial = 0
    while not stop.is_set():
        serial += 1
        body = json.dumps({"user": {"id": f"usr_{sender}_{serial}"}, "n": serial}).encode()
        await post_until_accepted(client, body, answers, stop)
        await asyncio.sleep(0.05)


async def probe_readiness(admin: httpx.AsyncClient, answers: Answers, stop: asyncio.Event) -> None:
    """/readyz every half second, as Kubernetes would."""
    while not stop.is_set():
        answers.readiness.append((time.monotonic(), (await admin.get("/readyz")).status_code))
        await asyncio.sleep(0.5)


async def create_replicated_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=3)])
    finally:
        await admin.close()
    for partition in range(PARTITIONS):
        await wait_for_isr(bootstrap, name, partition, ALL_NODES)


# Five node kills and restarts, each waited out: about 100 s alone, up to three minutes on a busy machine.
@pytest.mark.timeout(600)
async def test_webhooks_accepted_while_nodes_fail_are_all_stored_and_503s_come_only_without_a_quorum(
    kafka_cluster: LocalCluster,
    unique_name: Callable[[str], str],
    record_property: Callable[[str, object], None],
) -> None:
    bootstrap = kafka_cluster.bootstrap
    topic = unique_name("raw-cluster")
    await create_replicated_topic(bootstrap, topic)
    answers = Answers()
    stop = asyncio.Event()
    windows: dict[str, tuple[float, float]] = {}

    async with running_ingress(bootstrap, topic) as ingress:
        senders = [
            asyncio.create_task(send_steadily(ingress.client, answers, stop, n)) for n in range(SENDERS)
        ]
        senders.append(asyncio.create_task(probe_readiness(ingress.admin, answers, stop)))
        try:
            await asyncio.sleep(2)
            # One node at a time: the leader of partition 0, then another node.
            first = await partition_leader(bootstrap, topic, 0)
            for victim in (first, 1 + first % 3):
                began = time.monotonic()
                await asyncio.to_thread(kafka_cluster.stop_node, victim, True)
                await asyncio.sleep(STALL_BOUND_S + 2)
                await asyncio.to_thread(kafka_cluster.start_node, victim)
                for partition in range(PARTITIONS):
                    await wait_for_isr(bootstrap, topic, partition, ALL_NODES, timeout=60)
                windows[f"node {victim} killed"] = (began, time.monotonic())
                await asyncio.sleep(1)

            # Two of three down: no quorum of in-sync replicas, so nothing may be accepted.
            two = sorted(ALL_NODES - {first})
            for victim in two:
                await asyncio.to_thread(kafka_cluster.stop_node, victim, True)
            no_quorum = time.monotonic()
            await asyncio.sleep(8)
            windows["two nodes killed"] = (no_quorum, time.monotonic())
            for victim in two:
                await asyncio.to_thread(kafka_cluster.start_node, victim)
            restored = time.monotonic()
            for partition in range(PARTITIONS):
                await wait_for_isr(bootstrap, topic, partition, ALL_NODES, timeout=60)
            await asyncio.sleep(2)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.gather(*senders), timeout=30)
            for node in ALL_NODES:
                if kafka_cluster.pid(node) is None:
                    kafka_cluster.start_node(node)

    # Nothing answered 202 is missing from the topic (read_committed, from the beginning).
    stored = await read_records(bootstrap, topic, timeout=60)
    stored_values = {record.value for record in stored}
    assert answers.accepted, "no webhook was accepted"
    missing = [body for body in answers.accepted if body not in stored_values]
    assert missing == []

    # One node down: 503s only within the stall right after the kill, none once a quorum took over.
    for name, (began, ended) in windows.items():
        if name == "two nodes killed":
            continue
        late = [s for s in answers.since(began + STALL_BOUND_S, ended) if s != 202]
        assert late == [], f"{name}: {len(late)} refusals after the stall"
        # Every ingress would see the same: not ready would take them all out of service at once.
        probes = [s for t, s in answers.readiness if began <= t < ended]
        assert probes
        assert set(probes) == {200}, f"{name}: /readyz answered {probes}"
    # Two down: nothing is accepted once the produces in flight before the second kill ended.
    began, ended = windows["two nodes killed"]
    assert 202 not in answers.since(began + 5.5, ended)
    assert 503 in answers.since(began, ended)
    # Back to three: accepted again.
    assert 202 in answers.since(restored)

    refused = sum(1 for _, s in answers.statuses if s == 503)
    record_property("accepted", len(answers.accepted))
    record_property("refused_503", refused)
    print(f"\naccepted {len(answers.accepted)} webhooks, all stored; {refused} answers were 503")
