"""Tracing that records into memory (the SDK's in-memory exporter), and the W3C example trace."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.tracing import Tracing

# The W3C specification's own example.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT_VALUE = f"00-{TRACE_ID}-{PARENT_ID}-01"


class MemoryTracing(Tracing):
    """Tracing that records into memory: `exporter.get_finished_spans()` holds every ended span."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        super().__init__(provider.get_tracer("tests"), provider)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Ended spans, in the order they ended; only those called `name` when given."""
        return [span for span in self.exporter.get_finished_spans() if name is None or span.name == name]


def trace_id(span: ReadableSpan) -> str:
    """The span's trace id as traceparent writes it."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def span_id(span: ReadableSpan) -> str:
    """The span's id as traceparent writes it."""
    assert span.context is not None
    return f"{span.context.span_id:016x}"
