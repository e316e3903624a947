"""Tracing with OpenTelemetry, shared by both processes: W3C trace context in, spans, trace context out.

Configured by the standard `OTEL_*` environment variables, read once at start-up by
`configure_tracing` (the composition root calls it):

- `OTEL_TRACES_EXPORTER`: comma-separated exporters; unset or `none` (our default) means tracing is
  off: no SDK tracer provider is installed, no span is created, no header is read or written.
  `otlp` needs the optional extra (`pip install 'exam-events[otlp]'`); `console` prints spans.
- `OTEL_SDK_DISABLED=true` turns tracing off whatever the exporter says.
- Everything else is the SDK's and the exporter's own: `OTEL_SERVICE_NAME` (default: the process's
  name, e.g. `exam-events-consumer`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
  `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT|PROTOCOL|HEADERS`, `OTEL_BSP_*`, `OTEL_SPAN_*_LIMIT`.

Callers check `Tracing.enabled` once (per request, per batch) and skip all tracing work when it is
off, so tracing that is off costs one attribute read. The ingress, for instance:

    tracing = configure_tracing("exam-events-ingress")                    # at start-up
    if tracing.enabled:                                                   # per request
        parent = extract(scope["headers"])                                # None: a new trace
        with tracing.span("POST /webhooks", parent, kind=SpanKind.SERVER) as span:
            headers = [*headers, *kafka_headers(span)]                    # traceparent (+ tracestate)

Spans carry no personal data: callers set coordinates and outcomes, never names, e-mails or bodies,
and `record_error` records an exception's type, never its message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from common.settings import InvalidSettings

__all__ = [
    "CE_TRACEPARENT",
    "CE_TRACESTATE",
    "NO_TRACING",
    "TRACEPARENT",
    "TRACESTATE",
    "Span",
    "SpanKind",
    "Tracing",
    "cloudevents_headers",
    "configure_tracing",
    "extract",
    "kafka_headers",
    "record_error",
]

# W3C Trace Context header names, as HTTP and Kafka headers carry them.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The CloudEvents distributed-tracing extension in Kafka binary mode: where the event was created.
CE_TRACEPARENT = "ce_traceparent"
CE_TRACESTATE = "ce_tracestate"

# Messaging semantic conventions: attribute names as the specification spells them.
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
MESSAGING_KAFKA_OFFSET = "messaging.kafka.offset"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_MESSAGE_BODY_SIZE = "messaging.message.body.size"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
CLOUDEVENTS_EVENT_ID = "cloudevents.event_id"
CLOUDEVENTS_EVENT_TYPE = "cloudevents.event_type"
ERROR_TYPE = "error.type"
# HTTP semantic conventions (the ingress's receive span).
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"

INSTRUMENTATION_SCOPE = "exam-events"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"  # the entry points the SDK's exporters register
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_PROPAGATOR = TraceContextTextMapPropagator()

Attributes = Mapping[str, AttributeValue]
Headers = Sequence[tuple[str, bytes]]


class Tracing:
    """The process's tracer, and whether it records: off (`NO_TRACING`) means callers skip tracing."""

    __slots__ = ("_provider", "enabled", "tracer")

    def __init__(self, tracer: Tracer | None = None, provider: Any = None) -> None:
        self.enabled = tracer is not None
        self.tracer: Tracer = tracer if tracer is not None else trace.NoOpTracer()
        self._provider = provider

    def start_span(
        self,
        name: str,
        parent: Context | Span | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes | None = None,
        links: Sequence[Link] = (),
    ) -> Span:
        """A started span (end it yourself): a child of `parent`, else the root of a new trace.

        Never a child of the ambient context: a span's parent is always the one named here.
        """
        if isinstance(parent, Span):
            parent = trace.set_span_in_context(parent, Context())
        return self.tracer.start_span(
            name, parent if parent is not None else Context(), kind=kind, attributes=attributes, links=links
        )

    @contextmanager
    def span(
        self,
        name: str,
        parent: Context | Span | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes | None = None,
        links: Sequence[Link] = (),
    ) -> Iterator[Span]:
        """`start_span` as a block: ended on exit; an exception's type is recorded, then re-raised.

        Off, the block gets the invalid span (no headers come of it) and nothing is created.
        """
        if not self.enabled:
            yield INVALID_SPAN
            return
        span = self.start_span(name, parent, kind=kind, attributes=attributes, links=links)
        try:
            yield span
        except BaseException as exc:
            record_error(span, exc)
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        """Export what is pending and stop (also done at interpreter exit)."""
        if self._provider is not None:
            self._provider.shutdown()


NO_TRACING = Tracing()


def configure_tracing(service_name: str, *, register_global: bool = True) -> Tracing:
    """The tracing the `OTEL_*` environment asks for; off unless an exporter is named.

    On: an SDK tracer provider (sampler, resource and limits from the environment) with a batch
    span processor per exporter, also registered as the global provider (`register_global`) for any
    library instrumentation. Raises `InvalidSettings` for an unknown or uninstalled exporter.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return NO_TRACING
    names = [name.strip().lower() for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name and name != "none"]
    if not names:
        return NO_TRACING
    # Imported only when on: tracing that is off never loads the SDK.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(name) for name in names]
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named the service.
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if register_global:
        trace.set_tracer_provider(provider)
    return Tracing(provider.get_tracer(INSTRUMENTATION_SCOPE), provider)


def _exporter(name: str) -> Any:
    """The span exporter registered under `name` (`otlp`: the one of the configured protocol)."""
    entry_name = name
    if name == "otlp":
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol not in _OTLP_BY_PROTOCOL:
            raise InvalidSettings(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
            )
        entry_name = _OTLP_BY_PROTOCOL[protocol]
    found = list(entry_points(group=_EXPORTER_GROUP, name=entry_name))
    if not found:
        if name == "otlp":
            package = "opentelemetry-exporter-" + entry_name.replace("_", "-")
            raise InvalidSettings(
                f"OTEL_TRACES_EXPORTER: otlp needs {package} (http/protobuf: pip install 'exam-events[otlp]')"
            )
        known = sorted({"none", "otlp", *(point.name for point in entry_points(group=_EXPORTER_GROUP))})
        raise InvalidSettings(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (known: {', '.join(known)})")
    return found[0].load()()


def extract(
    headers: Iterable[tuple[str | bytes, str | bytes]] | Mapping[bytes, bytes] | Mapping[str, str],
) -> Context | None:
    """The W3C trace context in HTTP or Kafka headers (pairs or a mapping; names in any case); None
    when there is no valid `traceparent`, so the caller starts a new trace."""
    pairs: Iterable[tuple[str | bytes, str | bytes]] = (
        headers.items() if isinstance(headers, Mapping) else headers
    )
    carrier: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        if name != TRACEPARENT and name != TRACESTATE:
            continue
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if name == TRACESTATE and name in carrier:
            carrier[name] += "," + value  # repeated tracestate headers are one list (W3C)
        else:
            carrier.setdefault(name, value)
    if TRACEPARENT not in carrier:
        return None
    context = _PROPAGATOR.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def kafka_headers(span: Span | SpanContext) -> list[tuple[str, bytes]]:
    """`traceparent` (and `tracestate` when there is one) of the span, as Kafka record headers;
    none for an invalid span (tracing off)."""
    return _headers(span, TRACEPARENT, TRACESTATE)


def cloudevents_headers(span: Span | SpanContext) -> list[tuple[str, bytes]]:
    """`ce_traceparent` (and `ce_tracestate`) of the span: the CloudEvents distributed-tracing extension."""
    return _headers(span, CE_TRACEPARENT, CE_TRACESTATE)


def _headers(span: Span | SpanContext, parent_name: str, state_name: str) -> list[tuple[str, bytes]]:
    context = span if isinstance(span, SpanContext) else span.get_span_context()
    if not context.is_valid:
        return []
    # The W3C version 00 format, exactly as TraceContextTextMapPropagator writes it.
    value = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    headers = [(parent_name, value.encode())]
    if context.trace_state:
        headers.append((state_name, context.trace_state.to_header().encode()))
    return headers


def record_error(span: Span, error: BaseException | str) -> None:
    """Mark the span failed with the error's type (`error.type`), never its message: messages may
    quote a body."""
    error_type = error if isinstance(error, str) else type(error).__name__
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))
