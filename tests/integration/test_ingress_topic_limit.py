"""On a real broker: a body the raw topic cannot store gets 413, and the partition keeps working.

A default-config topic stores batches up to 1,048,588 bytes (`max.message.bytes`); a 1 MiB body
plus its headers does not fit. Refused by the broker, the batch's sequence number would be lost and
every later post to that partition would get OutOfOrderSequenceNumber (503) for good.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx

from common.kafka import KafkaConnectionSettings
from common.topics import max_message_bytes
from tests.support.ingress_harness import JSON, basic_auth, running_ingress
from tests.support.kafka_io import read_records, set_max_message_bytes

NewTopic = Callable[..., Awaitable[str]]
HEADERS = {**JSON, **basic_auth()}
USER = {"user": {"id": "usr_limit"}}  # one key: every post goes to the same partition


def body_of(size: int) -> bytes:
    """A JSON object of exactly `size` bytes, keyed like the small posts."""
    head, tail = b'{"user":{"id":"usr_limit"},"pad":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def post(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post("/webhooks", content=content, headers=HEADERS)


async def test_a_body_at_the_limit_on_a_default_topic_gets_413_and_later_posts_202(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic("raw-default-config")
    assert await max_message_bytes(KafkaConnectionSettings(bootstrap_servers=kafka_bootstrap), topic) < (
        1024 * 1024 + 1024
    )
    async with running_ingress(kafka_bootstrap, topic, max_body_bytes=1024 * 1024) as ingress:
        at_limit = await post(ingress.client, body_of(1024 * 1024))
        small = [await post(ingress.client, json.dumps({**USER, "n": n}).encode()) for n in range(3)]
        ready = await ingress.admin.get("/readyz")

    assert at_limit.status_code == 413
    assert [r.status_code for r in small] == [202, 202, 202]
    assert ready.status_code == 200
    records = await read_records(kafka_bootstrap, topic, count=3)
    assert [json.loads(r.value or b"")["n"] for r in records] == [0, 1, 2]


async def test_a_limit_lowered_after_connecting_gets_413_once_and_the_producer_recovers(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic("raw-lowered")
    async with running_ingress(kafka_bootstrap, topic, max_body_bytes=64 * 1024) as ingress:
        client = ingress.client
        assert (await post(client, body_of(100))).status_code == 202
        await set_max_message_bytes(kafka_bootstrap, [topic], 16 * 1024)

        refused = await post(client, body_of(32 * 1024))
        after = await post_until_accepted(client, body_of(200), attempts=30)

    assert refused.status_code == 413
    assert after.status_code == 202
    records = await read_records(kafka_bootstrap, topic, count=2)
    assert [len(r.value or b"") for r in records] == [100, 200]


async def post_until_accepted(client: httpx.AsyncClient, content: bytes, *, attempts: int) -> httpx.Response:
    """Post like a retrying sender: 503 means wait and try again."""
    response = await post(client, content)
    for _ in range(attempts):
        if response.status_code != 503:
            break
        await asyncio.sleep(0.5)
        response = await post(client, content)
    return response
