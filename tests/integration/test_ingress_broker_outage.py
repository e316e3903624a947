"""When the broker goes away the ingress says 503 and Retry-After, at once once it knows; when the
broker is back, the condition clears by itself and posts get 202 again."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from common.kafka import KafkaConnectionSettings
from ingress.bootstrap import build_producer
from ingress.producer import KafkaRecordProducer
from tests.support.broker import LocalBroker
from tests.support.ingress_harness import JSON, basic_auth, ingress_settings
from tests.support.ingress_server import ServedIngress, running_servers
from tests.support.kafka_io import create_topics, read_records

TOPIC = "exam.webhooks.raw.outage"
HEADERS = {**JSON, **basic_auth()}
PRODUCE_TIMEOUT = 5.0  # the default: what each 503 would cost without failing fast
FAST = 1.0  # a generous bound for "at once" on a shared, noisy machine
UNREACHABLE = "exam_events_ingress_kafka_unreachable"


def body(n: int) -> bytes:
    return json.dumps({"user": {"id": "usr_outage"}, "n": n}).encode()


@asynccontextmanager
async def ingress_on(bootstrap: str) -> AsyncIterator[tuple[ServedIngress, KafkaRecordProducer]]:
    """Both ports of the ingress on loopback, with a started Kafka producer."""
    overrides: dict[str, Any] = {
        "raw_topic": TOPIC,
        "kafka": KafkaConnectionSettings(bootstrap_servers=bootstrap),
        "produce_timeout_seconds": PRODUCE_TIMEOUT,
        "retry_after_seconds": 3,
    }
    producer = build_producer(ingress_settings(**overrides))
    await producer.start()
    try:
        async with running_servers(producer, **overrides) as served:
            yield served, producer
    finally:
        await producer.stop()


async def test_a_stopped_broker_gets_fast_503s_and_a_restarted_one_202_without_restarting_the_ingress(
    restartable_broker: LocalBroker,
) -> None:
    bootstrap = restartable_broker.bootstrap
    await create_topics(bootstrap, [TOPIC])
    async with (
        ingress_on(bootstrap) as (served, _producer),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}", timeout=30) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.admin_port}", timeout=30) as admin,
    ):
        before = await client.post("/webhooks", content=body(0), headers=HEADERS)
        assert before.status_code == 202
        assert (await admin.get("/readyz")).json()["status"] == "ready"

        await asyncio.to_thread(restartable_broker.stop)
        await until_gauge(admin, UNREACHABLE, 1.0)  # the outage is detected without any post
        refused_before = await gauge(admin, "exam_events_ingress_fast_refusals_total")
        during, latencies = [], []
        for n in range(20):
            started = time.perf_counter()
            during.append(await client.post("/webhooks", content=body(100 + n), headers=HEADERS))
            latencies.append(time.perf_counter() - started)
        not_ready = await admin.get("/readyz")
        refused = await gauge(admin, "exam_events_ingress_fast_refusals_total") - refused_before

        await asyncio.to_thread(restartable_broker.start)
        await until_gauge(admin, UNREACHABLE, 0.0)  # clears by itself: no post pays for it
        started = time.perf_counter()
        after = await client.post("/webhooks", content=body(2), headers=HEADERS)
        first_after = time.perf_counter() - started
        after = await post_until_accepted(client, after, body(2), attempts=60)
        ready = await admin.get("/readyz")

    print(
        f"\nfast 503 over HTTP while the broker is down, {len(latencies)} posts: "
        f"median {statistics.median(latencies) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms "
        f"(produce timeout {PRODUCE_TIMEOUT:g} s); first post after the restart: {first_after * 1000:.1f} ms"
    )
    assert [r.status_code for r in during] == [503] * 20
    assert all(r.headers["retry-after"] == "3" for r in during)
    assert max(latencies) < FAST
    assert refused == 20
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["broker_reachable"] is False
    assert after.status_code == 202
    assert ready.status_code == 200
    records = {(r.partition, r.offset): r.value for r in await read_records(bootstrap, TOPIC)}
    assert records[(before.json()["partition"], before.json()["offset"])] == body(0)
    assert records[(after.json()["partition"], after.json()["offset"])] == body(2)
    assert not any(json.loads(value or b"{}").get("n", 0) >= 100 for value in records.values())


async def gauge(admin: httpx.AsyncClient, name: str) -> float:
    """The value of an unlabelled metric on the admin port."""
    for line in (await admin.get("/metrics")).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


async def until_gauge(admin: httpx.AsyncClient, name: str, value: float, attempts: int = 300) -> None:
    """Poll the metric every 0.1 s (bounded) until it has the value."""
    for _ in range(attempts):
        if await gauge(admin, name) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} still not {value} after {attempts} polls")


async def post_until_accepted(
    client: httpx.AsyncClient, response: httpx.Response, content: bytes, *, attempts: int
) -> httpx.Response:
    """Post like a retrying sender: 503 means wait and try again; anything else ends the loop."""
    for _ in range(attempts):
        if response.status_code != 503:
            break
        await asyncio.sleep(1)
        response = await client.post("/webhooks", content=content, headers=HEADERS)
    return response
