"""common/tracing.py: configured by OTEL_*, off by default; W3C trace context in and out of headers."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import StatusCode

from common.settings import InvalidSettings
from common.tracing import (
    CE_TRACEPARENT,
    CE_TRACESTATE,
    NO_TRACING,
    TRACEPARENT,
    TRACESTATE,
    SpanKind,
    Tracing,
    cloudevents_headers,
    configure_tracing,
    extract,
    kafka_headers,
    record_error,
)
from tests.support.tracing import PARENT_ID, TRACE_ID, TRACEPARENT_VALUE, MemoryTracing


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the machine's environment reaches the test."""
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_tracing_is_off_unless_an_exporter_is_named(otel_env: pytest.MonkeyPatch) -> None:
    assert configure_tracing("exam-events-test") is NO_TRACING
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_tracing("exam-events-test") is NO_TRACING
    # Nothing was installed: the global provider is still the API's placeholder, not an SDK one.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_otel_sdk_disabled_turns_tracing_off_whatever_the_exporter(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    otel_env.setenv("OTEL_SDK_DISABLED", "true")

    assert configure_tracing("exam-events-test") is NO_TRACING


def service_name(tracing: Tracing) -> object:
    """The service.name of the tracing's spans."""
    span = tracing.start_span("a span")
    assert isinstance(span, ReadableSpan)
    span.end()
    return span.resource.attributes.get("service.name")


def test_a_named_exporter_turns_tracing_on_with_the_process_as_default_service_name(
    otel_env: pytest.MonkeyPatch,
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    tracing = configure_tracing("exam-events-test", register_global=False)

    assert tracing.enabled
    assert service_name(tracing) == "exam-events-test"
    tracing.shutdown()


def test_otel_service_name_names_the_service(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    otel_env.setenv("OTEL_SERVICE_NAME", "consumer-blue")
    tracing = configure_tracing("exam-events-test", register_global=False)

    assert service_name(tracing) == "consumer-blue"
    tracing.shutdown()


def test_otlp_selects_the_http_exporter_of_the_otlp_extra(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    tracing = configure_tracing("exam-events-test", register_global=False)

    assert tracing.enabled
    tracing.shutdown()  # nothing to export: no collector is needed


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "jaeger-thrift", "OTEL_TRACES_EXPORTER: unknown exporter 'jaeger-thrift'"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"),
    ],
)
def test_an_exporter_that_cannot_be_had_is_a_one_line_settings_error(
    otel_env: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv(variable, value)

    with pytest.raises(InvalidSettings) as raised:
        configure_tracing("exam-events-test", register_global=False)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_span_continues_the_trace_of_inbound_http_headers_and_hands_it_on_in_kafka_headers(
    memory_tracing: MemoryTracing,
) -> None:
    # ASGI headers: bytes, names in any case.
    parent = extract([(b"Content-Type", b"application/json"), (b"TraceParent", TRACEPARENT_VALUE.encode())])

    with memory_tracing.span("POST /webhooks", parent, kind=SpanKind.SERVER) as span:
        headers = kafka_headers(span)

    (ended,) = memory_tracing.spans()
    assert ended.parent is not None
    assert f"{ended.parent.span_id:016x}" == PARENT_ID
    assert headers == [(TRACEPARENT, f"00-{TRACE_ID}-{ended.context.span_id:016x}-01".encode())]
    # What went out comes back in as the same span context.
    again = trace.get_current_span(extract(headers)).get_span_context()
    assert (again.trace_id, again.span_id) == (ended.context.trace_id, ended.context.span_id)


def test_a_mapping_of_headers_is_read_too() -> None:
    parent = extract({b"content-type": b"application/json", b"traceparent": TRACEPARENT_VALUE.encode()})

    assert parent is not None
    assert f"{trace.get_current_span(parent).get_span_context().trace_id:032x}" == TRACE_ID


def test_a_tracestate_travels_with_the_trace_and_repeated_ones_are_one_list(
    memory_tracing: MemoryTracing,
) -> None:
    parent = extract(
        [
            (TRACEPARENT, TRACEPARENT_VALUE.encode()),
            (TRACESTATE, b"congo=t61rcWkgMzE"),
            (TRACESTATE, b"rojo=00f067aa0ba902b7"),
        ]
    )

    with memory_tracing.span("consume", parent) as span:
        headers = dict(kafka_headers(span))
        ce_headers = dict(cloudevents_headers(span))

    assert headers[TRACESTATE] == b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert ce_headers[CE_TRACEPARENT] == headers[TRACEPARENT]
    assert ce_headers[CE_TRACESTATE] == headers[TRACESTATE]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("webhook-id", b"msg_1")],
        [(TRACEPARENT, b"not a traceparent")],
        [(TRACEPARENT, f"00-{'0' * 32}-{PARENT_ID}-01".encode())],  # an all-zero trace id is invalid
        [(TRACESTATE, b"congo=t61rcWkgMzE")],  # a tracestate alone is no trace
    ],
)
def test_headers_without_a_valid_traceparent_give_no_parent(headers: list[tuple[str, bytes]]) -> None:
    assert extract(headers) is None


def test_without_a_parent_a_span_starts_a_new_trace_even_inside_another_span(
    memory_tracing: MemoryTracing,
) -> None:
    outer = memory_tracing.start_span("outer")
    with trace.use_span(outer, end_on_exit=True), memory_tracing.span("consume", None):
        pass

    consume, outer_ended = memory_tracing.spans()
    assert consume.parent is None
    assert consume.context.trace_id != outer_ended.context.trace_id


def test_tracing_off_creates_no_span_and_gives_no_headers() -> None:
    with NO_TRACING.span("consume", extract([(TRACEPARENT, TRACEPARENT_VALUE.encode())])) as span:
        assert not span.is_recording()
        assert kafka_headers(span) == []
        assert cloudevents_headers(span) == []
    assert not NO_TRACING.enabled


def test_an_error_is_recorded_by_its_type_never_its_message(memory_tracing: MemoryTracing) -> None:
    with pytest.raises(ValueError), memory_tracing.span("derive"):
        raise ValueError("learner ada@example.org")
    span = memory_tracing.start_span("publish")
    record_error(span, "ValidationError")
    span.end()

    derive, publish = memory_tracing.spans()
    assert derive.status.status_code is StatusCode.ERROR
    assert derive.attributes is not None
    assert derive.attributes["error.type"] == "ValueError"
    assert "ada@example.org" not in repr([derive.to_json(), publish.to_json()])
    assert publish.attributes is not None
    assert publish.attributes["error.type"] == "ValidationError"
