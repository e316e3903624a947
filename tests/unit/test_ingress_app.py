"""The ASGI app's answers, with a recording producer where Kafka itself is beside the point."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ingress.app import (
    IngressApp,
    InvalidBody,
    create_app,
    is_json_media_type,
    parse_object,
    parse_object_stdlib,
    received_at,
    webhook_id,
)
from ingress.metrics import METRIC_PREFIX
from ingress.openapi import SERVER_RESPONSES, WEBHOOK_RESPONSES
from ingress.producer import Delivery, ProduceFailed
from tests.support.ingress_harness import (
    JSON,
    RecordingProducer,
    basic_auth,
    client_for,
    ingress_settings,
    signed,
    unavailable,
)

SMALL_LIMIT = 4096


@pytest.fixture
def producer() -> RecordingProducer:
    return RecordingProducer()


@pytest.fixture
def app(producer: RecordingProducer) -> IngressApp:
    return create_app(ingress_settings(max_body_bytes=SMALL_LIMIT, retry_after_seconds=7), producer=producer)


@pytest.fixture
async def client(app: IngressApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


@pytest.fixture
async def admin(app: IngressApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app.admin) as http:
        yield http


async def post(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/webhooks", content=body, headers=headers if headers is not None else {**JSON, **basic_auth()}
    )


async def test_an_authenticated_json_object_is_produced_unchanged_and_answered_202(
    client: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    response = await post(client, sample_body)

    assert response.status_code == 202
    assert [r.value for r in producer.records] == [sample_body]
    assert response.json() == {
        "webhookId": producer.records[0].headers["webhook-id"].decode(),
        "topic": "exam.webhooks.raw",
        "partition": 0,
        "offset": 0,
    }


async def test_the_record_is_keyed_by_user_id_and_carries_its_headers(
    client: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    await post(client, sample_body, {"content-type": "application/json; charset=utf-8", **basic_auth()})

    record = producer.records[0]
    assert record.key == b"usr_8f2c1a7e"
    assert record.headers["event-name"] == b"exam.resultsReleased"
    assert record.headers["content-type"] == b"application/json; charset=utf-8"
    assert record.headers["received-at"].endswith(b"Z")
    assert len(record.headers["webhook-id"]) == 36  # a generated uuid


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"user": {"id": "u1"}, "attempt": {"id": "a1"}}, b"u1"),
        ({"attempt": {"id": "a1"}}, b"a1"),
        ({"user": {"objectId": "u1"}, "attempt": {"id": 42}}, b"42"),
        ({"user": "u1"}, None),
        ({"user": {"id": True}}, None),
        ({}, None),
    ],
)
async def test_the_key_is_user_id_else_attempt_id_else_none(
    client: httpx.AsyncClient, producer: RecordingProducer, document: dict[str, Any], key: bytes | None
) -> None:
    await post(client, json.dumps(document).encode())

    assert producer.records[0].key == key


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"user": {"id": "u" * 255}, "attempt": {"id": "a1"}}, b"u" * 255),
        ({"user": {"id": "u" * 256}, "attempt": {"id": "a1"}}, b"a1"),
        ({"user": {"id": "u" * 256}, "attempt": {"id": "a" * 256}}, None),
        ({"user": {"id": int("9" * 256)}}, None),
    ],
    ids=["255 characters", "256 characters", "both too long", "a 256-digit integer"],
)
async def test_an_id_longer_than_the_models_allow_counts_as_absent_for_the_key(
    client: httpx.AsyncClient, producer: RecordingProducer, document: dict[str, Any], key: bytes | None
) -> None:
    await post(client, json.dumps(document).encode())

    assert producer.records[0].key == key


async def test_a_webhook_with_a_540_kb_user_id_is_stored_unchanged_without_that_key(
    producer: RecordingProducer, sample_body: bytes
) -> None:
    document = json.loads(sample_body)
    document["user"]["id"] = "u" * 540_000
    body = json.dumps(document).encode()
    app = create_app(ingress_settings(max_body_bytes=1024 * 1024), producer=producer)
    async with client_for(app) as client:
        response = await post(client, body)

    assert response.status_code == 202  # the consumer dead-letters it, with the reason
    [record] = producer.records
    assert record.value == body
    assert record.key == document["attempt"]["id"].encode()


async def test_a_body_without_an_event_name_gets_no_event_name_header(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    await post(client, b'{"meta":{"timestamp":"x"}}')

    assert "event-name" not in producer.records[0].headers


async def test_the_standard_webhooks_id_becomes_the_webhook_id(
    client: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    response = await post(
        client, sample_body, {**JSON, **signed(sample_body, msg_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")}
    )

    assert response.status_code == 202
    assert response.json()["webhookId"] == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
    assert producer.records[0].headers["webhook-id"] == b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


@pytest.mark.parametrize(
    "headers",
    [
        {**JSON},
        {**JSON, **basic_auth(password="wrong")},
        {**JSON, **signed(b'{"other":1}')},
    ],
    ids=["no credentials", "wrong password", "signature of another body"],
)
async def test_unauthenticated_requests_get_401_with_a_basic_challenge_and_produce_nothing(
    client: httpx.AsyncClient, producer: RecordingProducer, headers: dict[str, str]
) -> None:
    response = await post(client, b'{"user":{"id":"u1"}}', headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert producer.records == []


async def test_without_basic_configured_a_401_carries_no_basic_challenge(producer: RecordingProducer) -> None:
    app = create_app(ingress_settings(basic_auth_username=None, basic_auth_password=None), producer=producer)
    async with client_for(app) as client:
        response = await post(client, b"{}", {**JSON})

    assert response.status_code == 401
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "json"])
async def test_a_content_type_other_than_json_gets_415(
    client: httpx.AsyncClient, producer: RecordingProducer, content_type: str | None
) -> None:
    headers = basic_auth() | ({"content-type": content_type} if content_type else {})

    response = await post(client, b"{}", headers)

    assert response.status_code == 415
    assert producer.records == []


@pytest.mark.parametrize(
    "content_type",
    [b"application/json", b"Application/JSON ; charset=UTF-8", b"application/cloudevents+json"],
)
def test_json_and_plus_json_media_types_with_parameters_count_as_json(content_type: bytes) -> None:
    assert is_json_media_type(content_type)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (b"null", "not an object"),
        (b'{"score": NaN}', "non-finite number in JSON: NaN"),
        (b'{"name": "\xff"}', "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
async def test_a_body_that_is_not_a_json_object_gets_400_with_a_short_reason(
    producer: RecordingProducer, body: bytes, reason: str
) -> None:
    app = create_app(ingress_settings(), producer=producer)
    async with client_for(app) as client:
        response = await post(client, body)

    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert len(response.json()["error"]) < 80
    assert producer.records == []


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        (b"1e999", "non-finite number in JSON: a number too large for a double"),
        (b"-1e999", "non-finite number in JSON: a number too large for a double"),
        (b"1" + b"0" * 400 + b".5", "non-finite number in JSON: a number too large for a double"),
        (b"NaN", "non-finite number in JSON: NaN"),
        (b"Infinity", "non-finite number in JSON: Infinity"),
        (b"-Infinity", "non-finite number in JSON: -Infinity"),
    ],
)
async def test_a_body_with_a_non_finite_number_gets_400_with_the_reason_and_nothing_is_produced(
    client: httpx.AsyncClient, producer: RecordingProducer, literal: bytes, reason: str
) -> None:
    response = await post(client, b'{"attempt":{"score":[1.5,{"x":' + literal + b"}]}}")

    assert response.status_code == 400
    assert response.json() == {"error": reason}
    assert producer.records == []


@pytest.mark.parametrize("literal", [b"1e308", b"-1.7976931348623157e308", b"1e-999", b"1" + b"0" * 300])
async def test_a_body_with_large_finite_numbers_is_accepted_unchanged(
    client: httpx.AsyncClient, producer: RecordingProducer, literal: bytes
) -> None:
    body = b'{"attempt":{"score":' + literal + b"}}"

    response = await post(client, body)

    assert response.status_code == 202
    assert producer.records[0].value == body


async def test_a_body_over_the_limit_gets_413_and_produces_nothing(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    body = b'{"pad":"' + b"x" * SMALL_LIMIT + b'"}'

    response = await post(client, body)

    assert response.status_code == 413
    assert producer.records == []


async def test_a_body_exactly_at_the_limit_is_accepted(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    body = b'{"pad":"' + b"x" * (SMALL_LIMIT - 10) + b'"}'
    assert len(body) == SMALL_LIMIT

    response = await post(client, body)

    assert response.status_code == 202


class EndlessBody:
    """An ASGI receive() that never ends its body, counting the bytes it handed out."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.sent = 0

    async def __call__(self) -> dict[str, Any]:
        self.sent += len(self.chunk)
        return {"type": "http.request", "body": self.chunk, "more_body": True}


def webhook_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/webhooks", "headers": headers}


async def call(app: IngressApp, scope: dict[str, Any], receive: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


async def test_an_endless_chunked_body_gets_413_after_reading_little_more_than_the_limit(
    app: IngressApp, producer: RecordingProducer
) -> None:
    body = EndlessBody(b"x" * 1000)
    auth = basic_auth()["authorization"].encode()

    sent = await call(
        app, webhook_scope([(b"content-type", b"application/json"), (b"authorization", auth)]), body
    )

    assert sent[0]["status"] == 413
    assert body.sent <= SMALL_LIMIT + 1000
    assert producer.records == []


async def test_a_declared_content_length_over_the_limit_gets_413_before_any_body_is_read(
    app: IngressApp,
) -> None:
    body = EndlessBody(b"x")

    sent = await call(app, webhook_scope([(b"content-length", str(SMALL_LIMIT + 1).encode())]), body)

    assert sent[0]["status"] == 413
    assert body.sent == 0


class UnreadBody:
    """An ASGI receive() whose body never arrives, recording whether the app asked for it."""

    def __init__(self) -> None:
        self.asked = False

    async def __call__(self) -> dict[str, Any]:
        self.asked = True
        await asyncio.sleep(60)  # bounded: the test's timeout ends it
        return {"type": "http.disconnect"}


def headers_of(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in headers.items()]


def long_signature() -> dict[str, str]:
    headers = signed(b"{}")
    headers["webhook-signature"] = "v1," + "A" * 5000
    return headers


def without(name: str) -> dict[str, str]:
    headers = signed(b"{}")
    del headers[name]
    return headers


def with_header(name: str, value: str) -> dict[str, str]:
    return {**signed(b"{}"), name: value}


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        basic_auth(password="wrong"),
        {**basic_auth(password="wrong"), **without("webhook-signature")},
        without("webhook-id"),
        without("webhook-timestamp"),
        with_header("webhook-timestamp", "soon"),
        with_header("webhook-timestamp", "1000000000"),
        with_header("webhook-signature", "v2,abc v1a,def"),
        long_signature(),
    ],
    ids=[
        "no credentials",
        "wrong password",
        "wrong password and no signature",
        "signature without webhook-id",
        "signature without timestamp",
        "timestamp not digits",
        "timestamp out of tolerance",
        "no v1 entry",
        "signature header too long",
    ],
)
async def test_a_request_the_headers_cannot_admit_gets_401_and_close_without_its_body_being_read(
    app: IngressApp, producer: RecordingProducer, credentials: dict[str, str]
) -> None:
    body = UnreadBody()

    sent = await asyncio.wait_for(call(app, webhook_scope(headers_of(credentials)), body), 10)

    assert sent[0]["status"] == 401
    assert (b"connection", b"close") in sent[0]["headers"]
    assert any(name == b"www-authenticate" for name, _ in sent[0]["headers"])
    assert not body.asked
    assert producer.records == []


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"basic_auth_username": None, "basic_auth_password": None},
    ],
    ids=["basic and signatures", "signatures only"],
)
async def test_well_formed_signature_headers_let_the_body_be_read_and_a_wrong_signature_gets_401(
    producer: RecordingProducer, settings: dict[str, Any]
) -> None:
    app = create_app(ingress_settings(**settings), producer=producer)
    sent_body = b'{"user":{"id":"u1"}}'
    credentials = signed(b'{"user":{"id":"u2"}}')  # well formed, for another body
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        return {"type": "http.request", "body": sent_body, "more_body": False}

    sent = await call(app, webhook_scope(headers_of(credentials)), receive)

    assert read
    assert sent[0]["status"] == 401
    assert (b"connection", b"close") not in sent[0]["headers"]  # the body was read: the connection is clean
    assert producer.records == []


async def test_with_both_schemes_valid_basic_credentials_need_no_signature(
    app: IngressApp, producer: RecordingProducer
) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent = await call(app, webhook_scope(headers_of(basic_auth())), receive)

    assert sent[0]["status"] == 202
    assert len(producer.records) == 1


async def test_a_client_that_disconnects_mid_body_gets_no_answer_and_nothing_is_produced(
    app: IngressApp, producer: RecordingProducer
) -> None:
    messages: Iterator[dict[str, Any]] = iter(
        [{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    sent = await call(
        app, webhook_scope([(b"authorization", basic_auth()["authorization"].encode())]), receive
    )

    assert sent == []
    assert producer.records == []


@pytest.mark.parametrize("failure", [unavailable(), RuntimeError("bug in a producer")])
async def test_when_kafka_does_not_acknowledge_the_answer_is_503_with_retry_after(
    client: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes, failure: Exception
) -> None:
    producer.failure = failure

    response = await post(client, sample_body)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


async def test_every_status_the_endpoint_answers_is_documented(
    client: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    seen = {
        (await post(client, sample_body)).status_code,
        (await post(client, b"[]")).status_code,
        (await post(client, sample_body, JSON)).status_code,
        (await post(client, b"x" * (SMALL_LIMIT + 1))).status_code,
        (await post(client, sample_body, basic_auth())).status_code,
    }
    producer.failure = ProduceFailed("down")
    seen.add((await post(client, sample_body)).status_code)
    producer.failure = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ingress.app.record_key", crash)
        seen.add((await post(client, sample_body)).status_code)
    slow = create_app(ingress_settings(body_read_timeout_seconds=0.05), producer=producer)
    authorized = [(b"authorization", basic_auth()["authorization"].encode())]
    seen.add((await call(slow, webhook_scope(authorized), stalled_body))[0]["status"])

    assert seen == set(WEBHOOK_RESPONSES)


async def test_healthz_answers_200_on_the_admin_app(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("ready", "status", "verdict"), [(True, 200, "ready"), (False, 503, "not ready")])
async def test_readyz_follows_the_producer_in_the_shared_readiness_shape(
    admin: httpx.AsyncClient, producer: RecordingProducer, ready: bool, status: int, verdict: str
) -> None:
    producer.is_ready = ready

    response = await admin.get("/readyz")

    assert response.status_code == status
    assert response.json() == {
        "status": verdict,
        "checks": {"producer_running": ready, "shutting_down": False},
    }


async def test_readyz_is_not_ready_once_a_shutdown_began(app: IngressApp, admin: httpx.AsyncClient) -> None:
    app.admin.shutting_down = True

    response = await admin.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["shutting_down"] is True


async def test_a_readiness_check_that_crashes_reads_as_not_ready(
    admin: httpx.AsyncClient, producer: RecordingProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash_readiness() -> None:
        raise RuntimeError("a bug in the readiness check")

    monkeypatch.setattr(producer, "readiness", crash_readiness)

    response = await admin.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {"readiness_check_crashed": True, "shutting_down": False},
    }


async def test_metrics_count_requests_by_status_and_bytes_under_the_exam_events_ingress_prefix(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, sample_body: bytes
) -> None:
    await post(client, sample_body)
    await post(client, sample_body, JSON)

    page = (await admin.get("/metrics")).text

    assert 'exam_events_ingress_requests_total{status="202"} 1.0' in page
    assert 'exam_events_ingress_requests_total{status="401"} 1.0' in page
    assert f"exam_events_ingress_produced_bytes_total {float(len(sample_body))}" in page
    # The 401's body was never read: only the accepted one was received.
    assert f"exam_events_ingress_received_bytes_total {float(len(sample_body))}" in page
    assert "exam_events_ingress_produce_seconds_count 1.0" in page
    assert "exam_events_ingress_kafka_unreachable 0.0" in page
    assert "exam_events_ingress_fast_refusals_total 0.0" in page
    metric_names = [line.split()[2] for line in page.splitlines() if line.startswith("# TYPE")]
    assert metric_names
    assert all(name.startswith(METRIC_PREFIX) for name in metric_names), metric_names


async def test_while_kafka_is_known_unreachable_a_webhook_gets_503_at_once_and_counts_as_fast_refusal(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    producer.unreachable_reason = "no broker reachable"

    response = await post(client, sample_body)
    page = (await admin.get("/metrics")).text

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert producer.records == []
    assert "exam_events_ingress_kafka_unreachable 1.0" in page
    assert "exam_events_ingress_fast_refusals_total 1.0" in page
    assert 'exam_events_ingress_requests_total{status="503"} 1.0' in page
    assert "exam_events_ingress_produce_seconds_count 0.0" in page  # nothing was tried


async def test_a_produce_that_fails_slowly_is_no_fast_refusal(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    producer.failure = unavailable()

    response = await post(client, sample_body)
    page = (await admin.get("/metrics")).text

    assert response.status_code == 503
    assert "exam_events_ingress_fast_refusals_total 0.0" in page
    assert "exam_events_ingress_produce_seconds_count 1.0" in page


async def test_two_apps_in_one_process_keep_separate_metrics(producer: RecordingProducer) -> None:
    first = create_app(ingress_settings(), producer=producer)
    second = create_app(ingress_settings(), producer=producer)
    async with client_for(first) as client:
        await post(client, b"{}")

    assert 'status="202"' in first.metrics.exposition().decode()
    assert 'status="202"' not in second.metrics.exposition().decode()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/webhooks", 405),
        ("GET", "/webhooks/user.registeredForExam", 405),
        ("POST", "/openapi.json", 405),
        ("POST", "/webhooksx", 404),
        ("GET", "/nope", 404),
        ("GET", "/healthz", 404),
        ("GET", "/readyz", 404),
        ("GET", "/metrics", 404),
    ],
)
async def test_the_public_app_answers_only_the_webhook_routes_and_the_openapi_document(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    assert (await client.request(method, path)).status_code == status


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/healthz", 405),
        ("POST", "/webhooks", 404),
        ("GET", "/openapi.json", 404),
        ("GET", "/nope", 404),
    ],
)
async def test_the_admin_app_answers_only_probes_and_metrics(
    admin: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    assert (await admin.request(method, path)).status_code == status


async def test_the_openapi_document_is_served(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    documented = {str(s) for s in [*WEBHOOK_RESPONSES, *SERVER_RESPONSES]}
    assert set(document["paths"]["/webhooks"]["post"]["responses"]) == documented
    assert set(document["paths"]["/webhooks/{eventName}"]["post"]["responses"]) == documented
    # What the public app serves.
    assert set(document["paths"]) == {"/webhooks", "/webhooks/{eventName}", "/openapi.json"}


@pytest.mark.parametrize("now", [0.0, 1_781_429_412.4815, 1_781_429_412.999_9, 1_781_429_413.0005])
def test_received_at_is_iso_8601_utc_with_milliseconds_as_datetime_writes_it(now: float) -> None:
    expected = (
        datetime.fromtimestamp(int(now), UTC).replace(microsecond=int((now - int(now)) * 1000) * 1000)
    ).isoformat(timespec="milliseconds")
    assert received_at(now) == expected.replace("+00:00", "Z")
    assert received_at(now) == received_at(now)  # the cached second gives the same text


def test_generated_webhook_ids_are_random_version_4_uuids() -> None:
    ids = {webhook_id(None) for _ in range(1000)}

    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


async def test_the_202_body_is_the_json_of_id_topic_partition_offset_exactly(
    producer: RecordingProducer, sample_body: bytes
) -> None:
    app = create_app(ingress_settings(raw_topic='odd "topic" \u00e9'), producer=producer)
    async with client_for(app) as client:
        response = await post(client, sample_body, {**JSON, **basic_auth(), "webhook-id": 'a"b\\c'})

    assert response.status_code == 202
    ident = producer.records[0].headers["webhook-id"].decode()
    assert ident == 'a"b\\c'
    assert (
        response.content
        == json.dumps(
            {"webhookId": ident, "topic": 'odd "topic" \u00e9', "partition": 0, "offset": 0},
            separators=(",", ":"),
        ).encode()
    )


def crash(*_: object) -> None:
    raise RuntimeError("a bug of ours")


async def stalled_body() -> dict[str, Any]:
    """A client that sent the headers and then nothing more (bounded: the test's timeout ends it)."""
    await asyncio.sleep(60)
    return {"type": "http.disconnect"}


async def test_a_bug_of_ours_gets_a_json_500_with_its_log_line_and_metric(
    app: IngressApp, client: httpx.AsyncClient, producer: RecordingProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ingress.app.record_key", crash)

    with structlog.testing.capture_logs() as logs:
        response = await post(client, b'{"user":{"id":"usr_secret_body_value"}}')

    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert response.headers["connection"] == "close"
    assert producer.records == []
    [line] = [entry for entry in logs if entry["event"] == "webhook"]
    assert line["status"] == 500
    assert line["error"].startswith("RuntimeError at test_ingress_app.py:")
    assert "usr_secret_body_value" not in str(logs)
    assert 'exam_events_ingress_requests_total{status="500"} 1.0' in app.metrics.exposition().decode()


async def test_a_body_not_received_within_the_timeout_gets_408_and_the_connection_closes(
    producer: RecordingProducer,
) -> None:
    app = create_app(ingress_settings(body_read_timeout_seconds=0.05), producer=producer)

    sent = await call(
        app, webhook_scope([(b"authorization", basic_auth()["authorization"].encode())]), stalled_body
    )

    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert producer.records == []


async def test_a_request_cancelled_by_the_shutdown_gets_503_with_retry_after_and_is_still_cancelled(
    app: IngressApp, producer: RecordingProducer
) -> None:
    produced = asyncio.Event()

    async def produce_forever(*_: object) -> Delivery:
        produced.set()
        await asyncio.sleep(60)
        raise AssertionError("not cancelled")

    producer.produce = produce_forever  # type: ignore[method-assign,assignment]
    sent: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = webhook_scope(
        [(b"content-type", b"application/json"), (b"authorization", basic_auth()["authorization"].encode())]
    )
    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(produced.wait(), 10)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"7") in sent[0]["headers"]


@pytest.mark.parametrize(
    ("body", "key", "name"),
    [
        (b'{"user":{"id":"\\udfff"},"meta":{"eventName":"e"}}', None, b"e"),
        (b'{"user":{"id":"\\ud800x"},"attempt":{"id":"att_1"}}', b"att_1", None),
        (b'{"user":{"id":"u"},"meta":{"eventName":"\\ud800"}}', b"u", None),
        (b'{"user":{"id":"u"},"meta":{"eventName":"' + b"e" * 129 + b'"}}', b"u", None),
        (b'{"user":{"id":"u"},"meta":{"eventName":"' + b"e" * 128 + b'"}}', b"u", b"e" * 128),
    ],
)
async def test_unencodable_or_overlong_ids_and_event_names_count_as_absent(
    client: httpx.AsyncClient, producer: RecordingProducer, body: bytes, key: bytes | None, name: bytes | None
) -> None:
    response = await post(client, body)

    assert response.status_code == 202
    [record] = producer.records
    assert record.value == body
    assert record.key == key
    assert record.headers.get("event-name") == name


async def test_an_integer_too_long_for_python_gets_400(producer: RecordingProducer) -> None:
    app = create_app(ingress_settings(max_body_bytes=64 * 1024), producer=producer)
    async with client_for(app) as client:
        response = await post(client, b'{"a":' + b"1" * 5000 + b"}")

    assert response.status_code == 400
    assert response.json() == {"error": "JSON number too long"}
    assert producer.records == []


async def test_an_overlong_content_type_gets_415(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    content_type = "application/json; x=" + "a" * 300

    response = await post(client, b"{}", {"content-type": content_type, **basic_auth()})

    assert response.status_code == 415
    assert producer.records == []


@pytest.mark.parametrize("given", ["i" * 257, "has space"])
async def test_a_signed_webhook_id_that_is_replaced_is_logged_as_replaced(
    client: httpx.AsyncClient, producer: RecordingProducer, given: str
) -> None:
    body = b'{"n":1}'

    with structlog.testing.capture_logs() as logs:
        response = await post(client, body, {**JSON, **signed(body, msg_id=given)})

    assert response.status_code == 202
    assert response.json()["webhookId"] != given
    [line] = [entry for entry in logs if entry["event"] == "webhook"]
    assert line["reason"] == "webhook-id replaced"


async def post_for_event(client: httpx.AsyncClient, name: str, body: bytes) -> httpx.Response:
    return await client.post(f"/webhooks/{name}", content=body, headers={**JSON, **basic_auth()})


async def test_the_path_event_name_becomes_the_event_name_header_of_a_body_without_one(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    response = await post_for_event(client, "user.registeredForExam", b'{"user":{"id":"u1"}}')

    assert response.status_code == 202
    (record,) = producer.records
    assert record.headers["event-name"] == b"user.registeredForExam"
    assert record.value == b'{"user":{"id":"u1"}}'
    assert record.key == b"u1"


async def test_the_path_event_name_is_recorded_even_when_the_body_names_another_event(
    client: httpx.AsyncClient, producer: RecordingProducer, sample_body: bytes
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await post_for_event(client, "exam.completed", sample_body)

    assert response.status_code == 202
    assert producer.records[0].headers["event-name"] == b"exam.completed"
    [line] = [entry for entry in logs if entry["event"] == "webhook"]
    assert line["event_name"] == "exam.completed"
    assert line["reason"] == "the path's event name differs from meta.eventName"


async def test_a_percent_encoded_path_event_name_is_decoded_as_asgi_gives_it(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    response = await post_for_event(client, "exam%3Aresults%25Released", b"{}")

    assert response.status_code == 202
    assert producer.records[0].headers["event-name"] == b"exam:results%Released"


@pytest.mark.parametrize(
    "name",
    ["", "a%2Fb", "a/b", "with%20space", "tab%09", "nul%00", "x" * 129, "exam.r%C3%A9sultat", "nel%C2%85"],
)
async def test_a_malformed_path_event_name_gets_400_and_nothing_is_produced(
    client: httpx.AsyncClient, producer: RecordingProducer, name: str
) -> None:
    response = await post_for_event(client, name, b"{}")

    assert response.status_code == 400
    assert "event name in the path" in response.json()["error"]
    assert producer.records == []


async def test_a_path_event_name_of_128_characters_is_accepted(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    assert (await post_for_event(client, "x" * 128, b"{}")).status_code == 202


async def test_an_unauthenticated_post_with_a_malformed_path_event_name_gets_401(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    response = await client.post("/webhooks/a%2Fb", content=b"{}", headers=JSON)

    assert response.status_code == 401


def parsed(parse: Any, body: bytes) -> tuple[str, Any]:
    """What a parser makes of `body`: ("object", the dict) or ("refused", the reason)."""
    try:
        return "object", parse(body)
    except InvalidBody as exc:
        return "refused", str(exc)


# Bodies where pydantic_core's parser and the standard library's could part ways.
EDGE_BODIES = [
    b'{"a":1',
    b"[1]",
    b'{"a":NaN}',
    b'{"a":-Infinity}',
    b'{"a":1e400}',
    b'{"a":-1e999}',
    b'{"a":[1E+400]}',
    b"[1e999]",
    b'{"a":1e308,"b":1.7976931348623157e308,"c":1.7976931348623159e308}',
    b'{"a":1' + b"0" * 310 + b".0}",
    b'{"a":1' + b"0" * 310 + b"}",
    b'{"a":"1e999"}',
    b'{"a":1e999,"b":NaN}',
    b'{"a":1e999',
    b'{"a":"\\ud800"}',
    b'{"\\ud800":1}',
    b'{"a":"\\udc00\\ud800"}',
    b'{"a":"\\ud83d\\ude00"}',
    b'{"a":1,"a":2}',
    b'{"a":' + b"9" * 4300 + b"}",
    b'{"a":' + b"9" * 4301 + b"}",
    b'{"a":"\xff"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\xc0\xaf"}',
    b"\xef\xbb\xbf{}",
    b'{"a":' + b"[" * 300 + b"]" * 300 + b"}",
    b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a":"\x01"}',
    b'{"a":"\\u0000"}',
    b'{"a":01}',
    b'{"a":1,}',
    b"{'a':1}",
    b"",
    b" \t\r\n{} \n",
    b'{\x0c"a":1}',
    b'{"a":1}\x00',
    b'{"user":{"id":12345678901234567890123}}',
    b'{"user":{"id":1.0},"attempt":{"id":"at_1"}}',
]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_the_fast_parser_answers_every_body_as_the_standard_librarys_did(body: bytes) -> None:
    assert parsed(parse_object, body) == parsed(parse_object_stdlib, body)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_any_json_document_is_parsed_alike_by_both_parsers(document: Any) -> None:
    body = json.dumps({"doc": document}).encode()

    assert parsed(parse_object, body) == parsed(parse_object_stdlib, body)


class SilentProducer(RecordingProducer):
    """A producer whose Kafka never acknowledges."""

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> Delivery:
        await asyncio.Event().wait()
        raise AssertionError("never acknowledged")


async def test_a_record_kafka_does_not_acknowledge_within_the_produce_timeout_gets_503_with_retry_after() -> (
    None
):
    app = create_app(
        ingress_settings(produce_timeout_seconds=0.05, retry_after_seconds=7), producer=SilentProducer()
    )
    with structlog.testing.capture_logs() as logs:
        async with client_for(app) as client:
            response = await post(client, b'{"user":{"id":"usr_1"}}')

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    [line] = [entry for entry in logs if entry["event"] == "webhook"]
    assert line["reason"] == "no acknowledgement within 0.05 s"
    assert "exam_events_ingress_produce_seconds_count 1.0" in app.metrics.exposition().decode()


async def test_the_produce_gets_its_own_timeout_whatever_the_body_read_took() -> None:
    # One deadline per request: moved to the produce timeout once the body is in, not kept.
    producer = RecordingProducer()
    slow = SlowAcknowledgement(producer, seconds=0.2)
    app = create_app(
        ingress_settings(body_read_timeout_seconds=0.05, produce_timeout_seconds=30), producer=slow
    )
    async with client_for(app) as client:
        response = await post(client, b'{"user":{"id":"usr_1"}}')

    assert response.status_code == 202
    assert len(producer.records) == 1


class SlowAcknowledgement:
    """A producer whose acknowledgement takes longer than the body read timeout."""

    def __init__(self, producer: RecordingProducer, *, seconds: float) -> None:
        self._producer = producer
        self._seconds = seconds

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> Delivery:
        await asyncio.sleep(self._seconds)
        return await self._producer.produce(topic, value, key, headers)

    def unreachable(self) -> str | None:
        return None

    async def readiness(self) -> Any:
        return await self._producer.readiness()
