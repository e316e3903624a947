"""The consumer continues each raw record's trace: consume, derive and publish spans, trace headers out."""

from __future__ import annotations

import ast
from pathlib import Path

from opentelemetry.trace import SpanKind, StatusCode

from common.tracing import (
    CE_TRACEPARENT,
    CE_TRACESTATE,
    NO_TRACING,
    TRACEPARENT,
    TRACESTATE,
    Tracing,
    extract,
)
from consumer.metrics import ConsumerMetrics
from consumer.plan import BatchPlan, BatchTrace, plan_batch
from consumer.settings import ConsumerSettings
from handlers import RulesSettings, build_routing_table
from tests.support.tracing import PARENT_ID, TRACE_ID, TRACEPARENT_VALUE, MemoryTracing, span_id, trace_id
from tests.support.webhooks import encode, results_released
from tests.unit.test_consumer_batch import RecordingCommit, ScriptedSender, processor
from tests.unit.test_consumer_plan import FakeRecord

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ConsumerSettings(rules=RulesSettings())
INBOUND = ((TRACEPARENT, TRACEPARENT_VALUE.encode()), (TRACESTATE, b"congo=t61rcWkgMzE"))


def traced_plan(tracing: Tracing, *records: FakeRecord) -> BatchPlan:
    return plan_batch(
        records,
        build_routing_table(SETTINGS.rules),
        SETTINGS.derived_topics,
        dlq_topic=SETTINGS.dlq_topic,
        unrouted_topic=SETTINGS.unrouted_topic,
        tracing=tracing,
        group_id="exam-events",
    )


def test_derived_events_carry_the_raw_records_trace_in_traceparent_and_ce_traceparent(
    memory_tracing: MemoryTracing,
) -> None:
    failed = FakeRecord(encode(results_released(passed=False)), headers=INBOUND)
    plan = traced_plan(memory_tracing, failed)

    outgoing = plan.trace.start_publish(plan.outgoing)
    plan.trace.published()
    plan.trace.finish()

    (consume,) = memory_tracing.spans("consume")
    (derive,) = memory_tracing.spans("derive")
    publishes = memory_tracing.spans("publish")
    # exam.result.failed, exam.resit.available and the result's xAPI statement
    assert len(outgoing) == len(publishes) == 3
    assert consume.parent is not None
    assert f"{consume.parent.span_id:016x}" == PARENT_ID
    assert {trace_id(span) for span in [consume, derive, *publishes]} == {TRACE_ID}
    assert derive.parent is not None
    assert derive.parent.span_id == consume.context.span_id
    for record, publish in zip(outgoing, publishes, strict=True):
        headers = dict(record.headers)
        assert headers[TRACEPARENT] == f"00-{TRACE_ID}-{span_id(publish)}-01".encode()
        assert headers[CE_TRACEPARENT] == f"00-{TRACE_ID}-{span_id(derive)}-01".encode()
        assert headers[TRACESTATE] == headers[CE_TRACESTATE] == b"congo=t61rcWkgMzE"
        assert publish.parent is not None
        assert publish.parent.span_id == consume.context.span_id
        assert publish.attributes is not None
        assert publish.attributes["messaging.destination.name"] == record.topic
        assert publish.attributes["cloudevents.event_id"] == headers["ce_id"].decode()


def test_the_spans_use_the_messaging_conventions_and_carry_no_personal_data(
    memory_tracing: MemoryTracing,
) -> None:
    body = results_released(passed=True)
    record = FakeRecord(encode(body), offset=7, partition=2, headers=INBOUND)
    plan = traced_plan(memory_tracing, record)
    plan.trace.start_publish(plan.outgoing)
    plan.trace.published()
    with plan.trace.committing({"messaging.destination.name": record.topic}):
        pass
    plan.trace.finish()

    (consume,) = memory_tracing.spans("consume")
    publish, _statement = memory_tracing.spans("publish")  # exam.result.passed, its xAPI statement
    (commit,) = memory_tracing.spans("commit")
    assert (consume.kind, publish.kind) == (SpanKind.CONSUMER, SpanKind.PRODUCER)
    assert consume.attributes is not None
    assert dict(consume.attributes) | {"messaging.message.body.size": 0} == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "consume",
        "messaging.destination.name": "exam.webhooks.raw",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 7,
        "messaging.consumer.group.name": "exam-events",
        "messaging.message.body.size": 0,
        "exam_events.outcome": "emitted",
        "exam_events.event_name": "exam.resultsReleased",
        "exam_events.events": 2,  # exam.result.passed and its xAPI statement
    }
    # The commit span (a trace of its own) links to the consume span of every record it commits.
    assert [link.context.span_id for link in commit.links] == [consume.context.span_id]
    exported = repr([span.to_json() for span in memory_tracing.spans()])
    for personal in (body["user"]["email"], body["user"]["name"], body["user"]["id"], body["attempt"]["id"]):
        assert str(personal) not in exported


def test_dead_letter_and_unrouted_copies_keep_their_headers_as_they_came(
    memory_tracing: MemoryTracing,
) -> None:
    invalid = FakeRecord(b"not json", offset=0, headers=INBOUND)
    unrouted = FakeRecord(encode({"meta": {"eventName": "user.updated"}}), offset=1, headers=INBOUND)
    plan = traced_plan(memory_tracing, invalid, unrouted)

    dlq_copy, unrouted_copy = plan.trace.start_publish(plan.outgoing)
    plan.trace.published()
    plan.trace.finish()

    for copy in (dlq_copy, unrouted_copy):
        assert copy.headers[: len(INBOUND)] == INBOUND  # the original traceparent, unchanged
        assert [name for name, _ in copy.headers].count(TRACEPARENT) == 1
        assert CE_TRACEPARENT not in dict(copy.headers)
    # Still published under the record's trace, and the failed derivation says why.
    assert {trace_id(span) for span in memory_tracing.spans()} == {TRACE_ID}
    dlq_derive = memory_tracing.spans("derive")[0]
    assert dlq_derive.status.status_code is StatusCode.ERROR
    assert dlq_derive.attributes is not None
    assert dlq_derive.attributes["error.type"] == "InvalidJson"


def test_a_record_without_traceparent_starts_a_trace_of_its_own(memory_tracing: MemoryTracing) -> None:
    plan = traced_plan(
        memory_tracing,
        FakeRecord(encode(results_released(user_id="u1")), offset=0),
        FakeRecord(encode(results_released(user_id="u2")), offset=1),
    )
    first, _, second, _ = plan.trace.start_publish(plan.outgoing)  # each passed event, then its statement
    plan.trace.finish()

    consumes = memory_tracing.spans("consume")
    assert [span.parent for span in consumes] == [None, None]
    assert consumes[0].context.trace_id != consumes[1].context.trace_id
    for record, consume in zip((first, second), consumes, strict=True):
        received = extract(record.headers)
        assert received is not None
        assert dict(record.headers)[TRACEPARENT].startswith(f"00-{trace_id(consume)}-".encode())
        assert TRACESTATE not in dict(record.headers)  # no tracestate came in


def test_with_tracing_off_no_span_is_made_and_no_trace_header_added(memory_tracing: MemoryTracing) -> None:
    plan = traced_plan(NO_TRACING, FakeRecord(encode(results_released(passed=False)), headers=INBOUND))

    assert plan.trace is BatchTrace.OFF
    outgoing = plan.trace.start_publish(plan.outgoing)
    assert outgoing is plan.outgoing
    assert all(
        name not in {TRACEPARENT, TRACESTATE, CE_TRACEPARENT, CE_TRACESTATE}
        for record in outgoing
        for name, _ in record.headers
    )
    assert memory_tracing.spans() == []


async def test_at_least_once_publish_spans_last_until_acknowledged_and_retries_keep_the_headers(
    memory_tracing: MemoryTracing,
) -> None:
    sender = ScriptedSender(failures=1)
    work = processor(sender, RecordingCommit(sender), ConsumerMetrics.create(), [])
    work._tracing = memory_tracing

    await work.process([FakeRecord(encode(results_released(passed=True)), headers=INBOUND)])

    # exam.result.passed and its xAPI statement, sent twice: the retry re-sends the same traceparents.
    first_attempt, _, second_attempt, _ = sender.attempts
    assert first_attempt.headers == second_attempt.headers
    publish, _statement = memory_tracing.spans("publish")
    (consume,) = memory_tracing.spans("consume")
    (commit,) = memory_tracing.spans("commit")
    assert dict(second_attempt.headers)[TRACEPARENT] == f"00-{TRACE_ID}-{span_id(publish)}-01".encode()
    # publish ends once acknowledged, commit after it, consume last (its batch committed).
    assert publish.end_time is not None
    assert commit.start_time is not None
    assert consume.end_time is not None
    assert publish.end_time <= commit.start_time
    assert commit.end_time is not None
    assert commit.end_time <= consume.end_time
    assert consume.status.status_code is StatusCode.UNSET


async def test_a_batch_dropped_uncommitted_ends_its_spans_as_failed(memory_tracing: MemoryTracing) -> None:
    sender = ScriptedSender(failures=10**6)
    work = processor(sender, RecordingCommit(sender), ConsumerMetrics.create(), [])
    work._tracing = memory_tracing
    work._owned = lambda _partitions: set()  # evicted while retrying

    assert await work.process([FakeRecord(encode(results_released()), headers=INBOUND)]) is False

    spans = memory_tracing.spans()
    assert {span.name for span in spans} == {"consume", "derive", "publish"}  # no commit
    failed = [span for span in spans if span.name != "derive"]
    assert all(span.status.status_code is StatusCode.ERROR for span in failed)
    assert all(span.attributes is not None and span.attributes["error.type"] for span in failed)


def test_the_handlers_know_nothing_of_tracing() -> None:
    imported: set[str] = set()
    for path in (ROOT / "handlers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    assert imported
    assert not {name for name in imported if name.startswith(("opentelemetry", "common.tracing"))}
