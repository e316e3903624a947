"""On a real broker: what is answered 202 is on the raw topic, byte for byte; what is refused is not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.support.ingress_harness import JSON, basic_auth, running_ingress, signed
from tests.support.kafka_io import read_records

NewTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def topic(new_topic: NewTopic) -> str:
    return await new_topic("raw", partitions=3)


@pytest.fixture
async def client(kafka_bootstrap: str, topic: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running_ingress(kafka_bootstrap, topic, max_body_bytes=64 * 1024) as ingress:
        yield ingress.client


async def post(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/webhooks", content=body, headers=headers)


async def test_a_posted_body_arrives_byte_identical_with_its_key_and_headers(
    client: httpx.AsyncClient, kafka_bootstrap: str, topic: str, sample_body: bytes
) -> None:
    response = await post(client, sample_body, {**JSON, **signed(sample_body, msg_id="msg_roundtrip")})

    assert response.status_code == 202
    [record] = await read_records(kafka_bootstrap, topic, count=1)
    assert record.value == sample_body
    assert record.key == b"usr_8f2c1a7e"
    assert (record.partition, record.offset) == (response.json()["partition"], response.json()["offset"])
    assert record.headers["webhook-id"] == b"msg_roundtrip"
    assert record.headers["event-name"] == b"exam.resultsReleased"
    assert record.headers["content-type"] == b"application/json"
    assert record.headers["received-at"].startswith(b"20")


async def only_the_marker_is_on_the_topic(client: httpx.AsyncClient, bootstrap: str, topic: str) -> None:
    """Post one valid marker body last; the topic must then hold exactly that one record."""
    marker = b'{"marker":true}'
    assert (await post(client, marker, {**JSON, **basic_auth()})).status_code == 202
    records = await read_records(bootstrap, topic)
    assert [r.value for r in records] == [marker]


async def test_unauthenticated_posts_get_401_and_nothing_reaches_the_topic(
    client: httpx.AsyncClient, kafka_bootstrap: str, topic: str, sample_body: bytes
) -> None:
    missing_signature = signed(sample_body)
    del missing_signature["webhook-signature"]
    attempts = {
        "wrong password": basic_auth(password="wrong"),
        "bad signature": signed(sample_body + b" "),
        "stale timestamp": signed(sample_body, timestamp=1_600_000_000),
        "missing signature header": missing_signature,
        "no credentials": {},
    }

    statuses = {
        name: (await post(client, sample_body, {**JSON, **h})).status_code for name, h in attempts.items()
    }

    assert statuses == dict.fromkeys(attempts, 401)
    await only_the_marker_is_on_the_topic(client, kafka_bootstrap, topic)


async def test_oversize_wrong_type_and_malformed_posts_are_refused_and_nothing_reaches_the_topic(
    client: httpx.AsyncClient, kafka_bootstrap: str, topic: str
) -> None:
    auth = basic_auth()
    oversize = b'{"pad":"' + b"x" * (64 * 1024) + b'"}'

    statuses = [
        (await post(client, oversize, {**JSON, **auth})).status_code,
        (await post(client, b"{}", {"content-type": "text/plain", **auth})).status_code,
        (await post(client, b'{"user":', {**JSON, **auth})).status_code,
        (await post(client, b"[]", {**JSON, **auth})).status_code,
    ]

    assert statuses == [413, 415, 400, 400]
    await only_the_marker_is_on_the_topic(client, kafka_bootstrap, topic)


async def test_500_concurrent_posts_make_exactly_500_records_each_with_its_own_offset(
    client: httpx.AsyncClient, kafka_bootstrap: str, topic: str, sample_body: bytes
) -> None:
    bodies = [sample_body.replace(b"usr_8f2c1a7e", f"usr_{i:04d}".encode()) for i in range(500)]
    headers = {**JSON, **basic_auth()}

    responses = await asyncio.gather(*(post(client, body, headers) for body in bodies))

    assert [r.status_code for r in responses] == [202] * 500
    places = {(r.json()["partition"], r.json()["offset"]) for r in responses}
    assert len(places) == 500
    records = await read_records(kafka_bootstrap, topic, timeout=60)
    assert len(records) == 500
    assert {(r.partition, r.offset) for r in records} == places
    assert sorted(r.value or b"" for r in records) == sorted(bodies)
    by_place = {(r.partition, r.offset): r.value for r in records}
    for body, response in zip(bodies, responses, strict=True):
        assert by_place[(response.json()["partition"], response.json()["offset"])] == body


async def test_records_of_one_user_share_a_partition(
    client: httpx.AsyncClient, kafka_bootstrap: str, topic: str
) -> None:
    bodies = [json.dumps({"user": {"id": "usr_same"}, "n": n}).encode() for n in range(10)]

    for body in bodies:
        assert (await post(client, body, {**JSON, **basic_auth()})).status_code == 202

    records = await read_records(kafka_bootstrap, topic, count=10)
    assert len({r.partition for r in records}) == 1
    assert [r.value for r in records] == bodies
