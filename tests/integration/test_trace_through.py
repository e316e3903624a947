"""One webhook followed from its HTTP request to its derived events, on the real broker: the sender's
trace id reaches every derived record, and the spans chain receive -> produce -> consume -> publish.

Both processes export to one in-memory exporter (no collector); outputs are read with read_committed.
"""

from __future__ import annotations

from collections.abc import Callable

from common.tracing import CE_TRACEPARENT, TRACEPARENT
from consumer.app import create_app
from tests.support.consumer_harness import (
    ConsumerTopics,
    consumer_settings,
    make_consumer_topics,
    read_derived,
    running,
    wait_until,
)
from tests.support.ingress_harness import JSON, basic_auth, running_ingress
from tests.support.kafka_io import read_records
from tests.support.tracing import MemoryTracing, span_id, trace_id
from tests.support.webhooks import encode, results_released

SENDER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SENDER_PARENT = "b7ad6b7169203331"


async def test_the_senders_trace_id_reaches_every_derived_event_through_both_processes(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
    memory_tracing: MemoryTracing,
) -> None:
    topics: ConsumerTopics = await make_consumer_topics(kafka_bootstrap, unique_name)
    # A failed attempt with a resit left: exam.result.failed and exam.resit.available.
    traced = encode(results_released(passed=False, user_id="u1", attempt_id="a1"))
    untraced = encode(results_released(user_id="u2", attempt_id="a2"))

    async with running_ingress(kafka_bootstrap, topics.raw, tracing=memory_tracing) as ingress:
        headers = {**JSON, **basic_auth()}
        sender = {TRACEPARENT: f"00-{SENDER_TRACE_ID}-{SENDER_PARENT}-01"}
        assert (
            await ingress.client.post("/webhooks", content=traced, headers={**headers, **sender})
        ).status_code == 202
        assert (await ingress.client.post("/webhooks", content=untraced, headers=headers)).status_code == 202

    settings = consumer_settings(kafka_bootstrap, topics, new_group_id())
    async with running(create_app(settings, tracing=memory_tracing)):
        derived = await read_derived(kafka_bootstrap, topics, count=5)

        async def consumed() -> bool:
            return len(memory_tracing.spans("consume")) >= 2

        await wait_until(consumed, timeout=30, what="the consume spans of the committed batch")

    raw = {record.key: record for record in await read_records(kafka_bootstrap, topics.raw, count=2)}
    produce_spans = {span_id(span): span for span in memory_tracing.spans("produce")}
    consume_spans = memory_tracing.spans("consume")

    # u1 failed: failed, resit available, xAPI statement; u2 passed: passed, xAPI statement.
    for key, expected_events in ((b"u1", 3), (b"u2", 2)):
        # The raw record names the ingress's produce span ...
        raw_parent = raw[key].headers[TRACEPARENT].split(b"-")
        produce = produce_spans[raw_parent[2].decode()]
        assert produce.parent is not None
        receive = next(
            s for s in memory_tracing.spans("receive") if s.context.span_id == produce.parent.span_id
        )
        trace = trace_id(receive)
        # ... the consumer's consume span is its child ...
        (consume,) = [
            s for s in consume_spans if s.parent is not None and s.parent.span_id == produce.context.span_id
        ]
        assert trace_id(consume) == trace
        # ... and every derived record of the webhook carries the trace in both headers.
        events = [record for record in derived if record.key == key]
        assert len(events) == expected_events
        for event in events:
            assert event.headers[TRACEPARENT].startswith(f"00-{trace}-".encode())
            assert event.headers[CE_TRACEPARENT].startswith(f"00-{trace}-".encode())
        if key == b"u1":
            assert trace == SENDER_TRACE_ID
            assert receive.parent is not None
            assert f"{receive.parent.span_id:016x}" == SENDER_PARENT
        else:
            assert receive.parent is None  # no traceparent came in: the ingress started the trace
            assert trace != SENDER_TRACE_ID
