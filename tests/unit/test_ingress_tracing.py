"""The ingress continues the sender's trace (or starts one): a receive span per request, a produce
span per record, and the record's `traceparent` naming the produce span."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from common.tracing import TRACEPARENT, TRACESTATE
from ingress.app import IngressApp, create_app
from tests.support.ingress_harness import (
    JSON,
    RecordingProducer,
    basic_auth,
    client_for,
    ingress_settings,
    unavailable,
)
from tests.support.tracing import PARENT_ID, TRACE_ID, TRACEPARENT_VALUE, MemoryTracing, span_id, trace_id

BODY = b'{"meta":{"eventName":"exam.resultsReleased"},"user":{"id":"u1","name":"Ada Lovelace"}}'
SENDER_TRACE = {TRACEPARENT: TRACEPARENT_VALUE, TRACESTATE: "congo=t61rcWkgMzE"}


@pytest.fixture
def producer() -> RecordingProducer:
    return RecordingProducer()


@pytest.fixture
def app(producer: RecordingProducer, memory_tracing: MemoryTracing) -> IngressApp:
    return create_app(ingress_settings(), producer=producer, tracing=memory_tracing)


@pytest.fixture
async def client(app: IngressApp) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


async def post(client: httpx.AsyncClient, headers: dict[str, str] | None = None, body: bytes = BODY) -> int:
    response = await client.post(
        "/webhooks", content=body, headers={**JSON, **basic_auth(), **(headers or {})}
    )
    return response.status_code


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_request_with_a_traceparent_continues_the_senders_trace(
    client: httpx.AsyncClient, memory_tracing: MemoryTracing
) -> None:
    assert await post(client, SENDER_TRACE) == 202

    receive = only(memory_tracing.spans("receive"))
    assert receive.kind is SpanKind.SERVER
    assert trace_id(receive) == TRACE_ID
    assert receive.parent is not None
    assert f"{receive.parent.span_id:016x}" == PARENT_ID
    assert attributes(receive)["http.response.status_code"] == 202
    assert attributes(receive)["http.route"] == "/webhooks"
    assert receive.status.status_code is StatusCode.UNSET


async def test_the_produce_span_is_a_child_of_the_receive_span_and_says_where_the_record_went(
    client: httpx.AsyncClient, memory_tracing: MemoryTracing
) -> None:
    await post(client, SENDER_TRACE)

    receive = only(memory_tracing.spans("receive"))
    produce = only(memory_tracing.spans("produce"))
    assert produce.kind is SpanKind.PRODUCER
    assert produce.parent is not None
    assert produce.parent.span_id == receive.context.span_id
    assert attributes(produce) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "produce",
        "messaging.destination.name": "exam.webhooks.raw",
        "messaging.message.body.size": len(BODY),
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
    }


async def test_the_raw_record_carries_the_traceparent_of_its_produce_span_and_the_tracestate(
    client: httpx.AsyncClient, producer: RecordingProducer, memory_tracing: MemoryTracing
) -> None:
    await post(client, SENDER_TRACE)

    produce = only(memory_tracing.spans("produce"))
    (record,) = producer.records
    assert record.headers[TRACEPARENT] == f"00-{TRACE_ID}-{span_id(produce)}-01".encode()
    assert record.headers[TRACESTATE] == b"congo=t61rcWkgMzE"
    assert record.value == BODY  # the body itself is never touched


@pytest.mark.parametrize("traceparent", [None, "00-zzzz-not-a-traceparent", f"00-{'0' * 32}-{PARENT_ID}-01"])
async def test_without_a_valid_traceparent_the_ingress_starts_a_trace_of_its_own(
    client: httpx.AsyncClient,
    producer: RecordingProducer,
    memory_tracing: MemoryTracing,
    traceparent: str | None,
) -> None:
    await post(client, {TRACEPARENT: traceparent} if traceparent else {})

    receive = only(memory_tracing.spans("receive"))
    assert receive.parent is None
    produce = only(memory_tracing.spans("produce"))
    # Its own trace flags (sampled, perhaps also the W3C random flag), so only the ids are compared.
    assert (
        producer.records[0]
        .headers[TRACEPARENT]
        .startswith(f"00-{trace_id(receive)}-{span_id(produce)}-".encode())
    )
    assert TRACESTATE not in producer.records[0].headers


async def test_a_refused_request_is_traced_without_a_produce_and_a_4xx_is_no_server_error(
    client: httpx.AsyncClient, producer: RecordingProducer, memory_tracing: MemoryTracing
) -> None:
    response = await client.post("/webhooks", content=BODY, headers={**JSON, **SENDER_TRACE})

    assert response.status_code == 401
    receive = only(memory_tracing.spans("receive"))
    assert attributes(receive)["http.response.status_code"] == 401
    assert receive.status.status_code is StatusCode.UNSET
    assert memory_tracing.spans("produce") == []
    assert producer.records == []


async def test_a_503_marks_both_spans_failed_with_the_error_type_only(
    client: httpx.AsyncClient, producer: RecordingProducer, memory_tracing: MemoryTracing
) -> None:
    producer.failure = unavailable()

    assert await post(client, SENDER_TRACE) == 503

    receive = only(memory_tracing.spans("receive"))
    assert receive.status.status_code is StatusCode.ERROR
    assert attributes(receive)["error.type"] == "503"
    produce = only(memory_tracing.spans("produce"))
    assert produce.status.status_code is StatusCode.ERROR
    assert attributes(produce)["error.type"] == "ProduceFailed"
    assert produce.status.description == "ProduceFailed"  # not the exception's message


async def test_while_kafka_is_known_unreachable_the_produce_span_says_so(
    client: httpx.AsyncClient, producer: RecordingProducer, memory_tracing: MemoryTracing
) -> None:
    producer.unreachable_reason = "no broker connection"

    assert await post(client) == 503

    assert attributes(only(memory_tracing.spans("produce")))["error.type"] == "KafkaUnreachable"


async def test_spans_carry_ids_and_outcomes_but_nothing_personal(
    client: httpx.AsyncClient, memory_tracing: MemoryTracing
) -> None:
    await post(client, {"webhook-id": "msg_42"})

    receive = only(memory_tracing.spans("receive"))
    assert attributes(receive)["messaging.message.id"] == "msg_42"
    assert attributes(receive)["exam_events.event_name"] == "exam.resultsReleased"
    for span in memory_tracing.spans():
        assert "Ada" not in repr(attributes(span))
        assert "Lovelace" not in repr(attributes(span))


async def test_a_client_that_disconnects_mid_body_ends_its_span_as_failed(
    app: IngressApp, memory_tracing: MemoryTracing
) -> None:
    sent: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]
    messages = iter(sent)

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(_: Any) -> None:
        raise AssertionError("nobody to answer")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks",
        # Authenticated: a request without credentials gets its 401 before the body is read.
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", basic_auth()["authorization"].encode()),
        ],
    }
    await app(scope, receive, send)

    receive_span = only(memory_tracing.spans("receive"))
    assert attributes(receive_span)["error.type"] == "ClientDisconnected"
    assert "http.response.status_code" not in attributes(receive_span)


async def test_with_tracing_off_no_span_is_made_and_the_record_gets_no_trace_header(
    producer: RecordingProducer,
) -> None:
    async with client_for(create_app(ingress_settings(), producer=producer)) as client:
        assert await post(client, SENDER_TRACE) == 202

    assert TRACEPARENT not in producer.records[0].headers
    assert TRACESTATE not in producer.records[0].headers


async def test_a_post_to_an_event_path_names_its_route_template_and_the_paths_event_name(
    client: httpx.AsyncClient, memory_tracing: MemoryTracing
) -> None:
    response = await client.post(
        "/webhooks/user.registeredForExam", content=b'{"user":{"id":"u1"}}', headers={**JSON, **basic_auth()}
    )

    assert response.status_code == 202
    receive = only(memory_tracing.spans("receive"))
    assert attributes(receive)["http.route"] == "/webhooks/{eventName}"
    assert attributes(receive)["url.path"] == "/webhooks/user.registeredForExam"
    assert attributes(receive)["exam_events.event_name"] == "user.registeredForExam"
