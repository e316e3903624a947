"""The consumer on the real broker continues each webhook's trace, in both processing guarantees.

Spans go to an in-memory exporter (no collector); outputs are read with read_committed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.tracing import CE_TRACEPARENT, CE_TRACESTATE, TRACEPARENT, TRACESTATE
from consumer.app import create_app
from consumer.settings import ProcessingGuarantee
from tests.support.consumer_harness import (
    ConsumerTopics,
    consumer_settings,
    make_consumer_topics,
    read_derived,
    running,
    wait_until,
)
from tests.support.kafka_io import produce, read_records
from tests.support.tracing import MemoryTracing
from tests.support.webhooks import encode, results_released

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
INBOUND_PARENT = "b7ad6b7169203331"
INBOUND = [
    (TRACEPARENT, f"00-{TRACE_ID}-{INBOUND_PARENT}-01".encode()),
    (TRACESTATE, b"congo=t61rcWkgMzE"),
]


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    return await make_consumer_topics(kafka_bootstrap, unique_name)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
async def test_derived_records_continue_the_raw_records_trace_and_its_spans_are_exported(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    new_group_id: Callable[[], str],
    memory_tracing: MemoryTracing,
    guarantee: ProcessingGuarantee,
) -> None:
    settings = consumer_settings(kafka_bootstrap, topics, new_group_id(), processing_guarantee=guarantee)
    # A failed attempt with a resit left: two derived events, exam.result.failed and exam.resit.available.
    await produce(
        kafka_bootstrap,
        topics.raw,
        [encode(results_released(passed=False, user_id="u1", attempt_id="a1"))],
        headers=INBOUND,
        partition=0,
    )
    await produce(kafka_bootstrap, topics.raw, [b"not json"], headers=INBOUND, partition=0)
    await produce(
        kafka_bootstrap, topics.raw, [encode(results_released(user_id="u2", attempt_id="a2"))], partition=1
    )

    async with running(create_app(settings, tracing=memory_tracing)):
        derived = await read_derived(kafka_bootstrap, topics, count=5)
        (dead_lettered,) = await read_records(kafka_bootstrap, topics.dlq, count=1)

        async def spans_ended() -> bool:
            # Consume spans end just after their commit returned, a moment after the records show.
            return len(memory_tracing.spans("consume")) >= 3 and bool(memory_tracing.spans("commit"))

        await wait_until(spans_ended, timeout=30, what="the spans of the committed batches")

    continued = [r for r in derived if r.key == b"u1"]
    assert len(continued) == 3  # exam.result.failed, exam.resit.available and the xAPI statement
    for record in continued:
        assert record.headers[TRACEPARENT].startswith(f"00-{TRACE_ID}-".encode())
        assert record.headers[CE_TRACEPARENT].startswith(f"00-{TRACE_ID}-".encode())
        # A child span of the consumer's, not the ingress's span handed on.
        assert INBOUND_PARENT.encode() not in record.headers[TRACEPARENT]
        assert record.headers[TRACESTATE] == record.headers[CE_TRACESTATE] == b"congo=t61rcWkgMzE"
    (new_trace,) = [r for r in derived if r.key == b"u2" and r.topic == topics.passed]
    assert not new_trace.headers[TRACEPARENT].startswith(f"00-{TRACE_ID}-".encode())
    assert TRACESTATE not in new_trace.headers
    assert CE_TRACESTATE not in new_trace.headers
    # The dead-letter copy keeps the raw record's headers: the ingress's traceparent, nothing added.
    assert dead_lettered.headers[TRACEPARENT] == INBOUND[0][1]
    assert CE_TRACEPARENT not in dead_lettered.headers

    in_trace = [span for span in memory_tracing.spans() if f"{span.context.trace_id:032x}" == TRACE_ID]
    names = [span.name for span in in_trace]
    assert names.count("consume") >= 2  # the webhook and the body that is not JSON
    assert names.count("derive") >= 2
    assert names.count("publish") >= 3  # two events and the dead-letter copy
    published = {f"{span.context.span_id:016x}" for span in in_trace if span.name == "publish"}
    assert {record.headers[TRACEPARENT].split(b"-")[2].decode() for record in continued} <= published
    consumed_from_ingress = [span for span in in_trace if span.name == "consume"]
    assert all(
        span.parent is not None and f"{span.parent.span_id:016x}" == INBOUND_PARENT
        for span in consumed_from_ingress
    )
    assert all(
        span.attributes is not None
        and span.attributes["messaging.system"] == "kafka"
        and span.attributes["messaging.destination.name"] == topics.raw
        and span.attributes["messaging.consumer.group.name"] == settings.group_id
        for span in consumed_from_ingress
    )
    # Each batch commit links to the consume spans it committed.
    linked = {link.context.span_id for span in memory_tracing.spans("commit") for link in span.links}
    assert {span.context.span_id for span in consumed_from_ingress} & linked
