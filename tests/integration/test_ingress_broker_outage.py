"""When the broker goes away the ingress says 503 and Retry-After; when it is back, 202 again."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.support.broker import LocalBroker
from tests.support.ingress_harness import JSON, basic_auth, running_ingress
from tests.support.kafka_io import create_topics, read_records

TOPIC = "exam.webhooks.raw.outage"
HEADERS = {**JSON, **basic_auth()}


def body(n: int) -> bytes:
    return json.dumps({"user": {"id": "usr_outage"}, "n": n}).encode()


async def test_a_stopped_broker_gets_503_and_a_restarted_one_202_without_restarting_the_ingress(
    restartable_broker: LocalBroker,
) -> None:
    bootstrap = restartable_broker.bootstrap
    await create_topics(bootstrap, [TOPIC])
    async with running_ingress(bootstrap, TOPIC, produce_timeout_seconds=2, retry_after_seconds=3) as (
        client,
        _producer,
    ):
        before = await client.post("/webhooks", content=body(0), headers=HEADERS)
        assert before.status_code == 202
        assert (await client.get("/readyz")).status_code == 200

        await asyncio.to_thread(restartable_broker.stop)
        during = await client.post("/webhooks", content=body(1), headers=HEADERS)
        assert during.status_code == 503
        assert during.headers["retry-after"] == "3"
        assert (await client.get("/readyz")).status_code == 503

        await asyncio.to_thread(restartable_broker.start)
        after = await post_until_accepted(client, body(2), attempts=60)
        assert after.status_code == 202
        assert (await client.get("/readyz")).status_code == 200

    records = {(r.partition, r.offset): r.value for r in await read_records(bootstrap, TOPIC)}
    assert records[(before.json()["partition"], before.json()["offset"])] == body(0)
    assert records[(after.json()["partition"], after.json()["offset"])] == body(2)


async def post_until_accepted(client: httpx.AsyncClient, content: bytes, *, attempts: int) -> httpx.Response:
    """Post like a retrying sender: 503 means wait and try again; anything else ends the loop."""
    response = await client.post("/webhooks", content=content, headers=HEADERS)
    for _ in range(attempts):
        if response.status_code != 503:
            break
        await asyncio.sleep(1)
        response = await client.post("/webhooks", content=content, headers=HEADERS)
    return response
