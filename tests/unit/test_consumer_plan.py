"""Planning a batch: which records go where, with which keys and headers, and what gets committed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumer import plan as plan_module
from consumer.plan import BatchPlan, plan_batch
from consumer.settings import ConsumerSettings
from handlers import RulesSettings, build_routing_table
from tests.support.tracing import MemoryTracing
from tests.support.webhooks import encode, results_released


@dataclass(frozen=True)
class FakeRecord:
    """A consumed record as aiokafka hands it over."""

    value: bytes | None
    offset: int = 0
    partition: int = 0
    topic: str = "exam.webhooks.raw"
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


@pytest.fixture
def settings() -> ConsumerSettings:
    return ConsumerSettings(rules=RulesSettings())


def plan(settings: ConsumerSettings, *records: FakeRecord, **options: Any) -> BatchPlan:
    return plan_batch(
        records,
        build_routing_table(settings.rules),
        settings.derived_topics,
        dlq_topic=settings.dlq_topic,
        unrouted_topic=settings.unrouted_topic,
        **options,
    )


def webhook_with_exam_name(length: int, user_id: str = "u1") -> bytes:
    body = results_released(passed=False, user_id=user_id, attempt_id=f"a-{user_id}")
    body["exam"]["name"] = "x" * length
    return encode(body)


def test_a_webhook_whose_derived_record_would_not_fit_its_topic_goes_to_the_dlq_with_the_sizes(
    settings: ConsumerSettings,
) -> None:
    limits = dict.fromkeys(settings.derived_topics.values(), 8 * 1024)
    large, small = webhook_with_exam_name(10_000, "u1"), webhook_with_exam_name(10, "u2")

    result = plan(settings, FakeRecord(large, offset=7), FakeRecord(small, offset=8), output_limits=limits)

    dead, *derived = result.outgoing
    headers = dict(dead.headers)
    assert dead.topic == settings.dlq_topic
    assert dead.value == large
    assert headers["dlq-error-type"] == b"OutputTooLarge"
    assert headers["dlq-output-topic"] == settings.failed_topic.encode()
    assert int(headers["dlq-output-bytes"]) > 10_000
    assert headers["dlq-output-max-bytes"] == b"8192"
    assert headers["dlq-source-offset"] == b"7"
    assert b"x" * 100 not in headers["dlq-error-message"]  # the reason, never the body
    assert derived
    assert all(record.key == b"u2" for record in derived)
    assert result.dead_lettered == {"OutputTooLarge": 1}
    assert result.next_offsets == {("exam.webhooks.raw", 0): 9}


def test_a_derived_record_within_its_topics_limit_is_published(settings: ConsumerSettings) -> None:
    limits = dict.fromkeys(settings.derived_topics.values(), 1024 * 1024)

    result = plan(settings, FakeRecord(webhook_with_exam_name(10_000)), output_limits=limits)

    assert not result.dead_lettered
    assert {record.topic for record in result.outgoing} >= {settings.failed_topic}


def test_a_webhook_whose_outputs_the_broker_refused_goes_to_the_dlq_with_the_reason(
    settings: ConsumerSettings, sample_body: bytes
) -> None:
    refused = {(0, 3): "the broker refused a derived record: MessageSizeTooLargeError"}

    result = plan(
        settings, FakeRecord(sample_body, offset=3), FakeRecord(sample_body, offset=4), rejected=refused
    )

    dead = result.outgoing[0]
    assert dead.topic == settings.dlq_topic
    assert dict(dead.headers)["dlq-error-type"] == b"OutputRejected"
    assert b"MessageSizeTooLargeError" in dict(dead.headers)["dlq-error-message"]
    assert [record.topic for record in result.outgoing[1:]] == ["exam.results.passed", "exam.xapi.statements"]


def test_a_passed_result_goes_to_the_passed_topic_keyed_by_learner_with_cloudevents_headers(
    settings: ConsumerSettings, sample_body: bytes
) -> None:
    result = plan(settings, FakeRecord(sample_body, offset=41))

    record, statement = result.outgoing
    assert statement.topic == "exam.xapi.statements"
    headers = dict(record.headers)
    assert record.topic == "exam.results.passed"
    assert record.key == b"usr_8f2c1a7e"
    assert headers["ce_type"] == b"exam.result.passed"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_subject"] == b"att_5b9e0c2d"
    assert headers["content-type"] == b"application/json"
    assert json.loads(record.value or b"")["source"]["offset"] == 41
    assert result.next_offsets == {("exam.webhooks.raw", 0): 42}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            results_released(passed=False, resit_count=0),
            [
                ("exam.results.failed", "exam.result.failed"),
                ("exam.resits", "exam.resit.available"),
                ("exam.xapi.statements", "exam.xapi.statement"),
            ],
        ),
        (
            results_released(passed=False, resit_count=2),
            [
                ("exam.results.failed", "exam.result.failed"),
                ("exam.resits", "exam.resit.exhausted"),
                ("exam.xapi.statements", "exam.xapi.statement"),
            ],
        ),
        (
            results_released(passed=True, resit_count=1),
            [
                ("exam.results.passed", "exam.result.passed"),
                ("exam.resits", "exam.resit.passed"),
                ("exam.xapi.statements", "exam.xapi.statement"),
            ],
        ),
    ],
    ids=["failed-with-resits-left", "failed-without-resits", "passed-on-a-resit"],
)
def test_each_derived_event_type_goes_to_its_configured_topic(
    settings: ConsumerSettings, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    result = plan(settings, FakeRecord(encode(body)))

    assert [(r.topic, dict(r.headers)["ce_type"].decode()) for r in result.outgoing] == expected


def test_topics_follow_the_settings(sample_body: bytes) -> None:
    settings = ConsumerSettings(passed_topic="custom.passed", xapi_topic="custom.xapi", rules=RulesSettings())

    assert [r.topic for r in plan(settings, FakeRecord(sample_body)).outgoing] == [
        "custom.passed",
        "custom.xapi",
    ]


def test_a_revoked_attempt_emits_nothing_but_is_counted_and_committed(settings: ConsumerSettings) -> None:
    result = plan(settings, FakeRecord(encode(results_released(revoked=True)), offset=7))

    assert result.outgoing == []
    assert result.count("revoked") == 1
    assert result.next_offsets == {("exam.webhooks.raw", 0): 8}


def test_a_body_that_is_not_json_goes_to_the_dlq_byte_for_byte_with_why_headers(
    settings: ConsumerSettings,
) -> None:
    raw = b"\xff\xfe not json {"
    result = plan(settings, FakeRecord(raw, offset=3, partition=2, key=b"k", headers=[("webhook-id", b"w1")]))

    (record,) = result.outgoing
    headers = dict(record.headers)
    assert (record.topic, record.key, record.value) == ("exam.webhooks.dlq", b"k", raw)
    assert headers["dlq-error-type"] == b"InvalidJson"
    assert headers["dlq-error-message"]
    assert headers["dlq-source-topic"] == b"exam.webhooks.raw"
    assert (headers["dlq-source-partition"], headers["dlq-source-offset"]) == (b"2", b"3")
    assert headers["webhook-id"] == b"w1"  # the record's own headers travel with it
    assert result.dead_lettered == {"InvalidJson": 1}


def test_a_known_event_that_fails_validation_goes_to_the_dlq_without_personal_data_in_headers(
    settings: ConsumerSettings,
) -> None:
    body = results_released()
    del body["attempt"]["grade"]
    raw = encode(body)

    (record,) = plan(settings, FakeRecord(raw)).outgoing

    headers = dict(record.headers)
    assert (record.topic, record.value) == ("exam.webhooks.dlq", raw)
    assert headers["dlq-error-type"] == b"ValidationError"
    assert headers["dlq-event-name"] == b"exam.resultsReleased"
    assert b"grade" in headers["dlq-error-message"]
    assert body["user"]["email"].encode() not in headers["dlq-error-message"]


@pytest.mark.parametrize(
    ("body", "event_name"),
    [({"meta": {"eventName": "user.updated"}, "user": {}}, b"user.updated"), ({"user": {}}, None)],
    ids=["unknown-event-name", "missing-event-name"],
)
def test_json_without_a_handler_goes_to_the_unrouted_topic_unchanged(
    settings: ConsumerSettings, body: dict[str, Any], event_name: bytes | None
) -> None:
    raw = encode(body)

    (record,) = plan(settings, FakeRecord(raw, offset=5, key=b"k")).outgoing

    headers = dict(record.headers)
    assert (record.topic, record.key, record.value) == ("exam.webhooks.unrouted", b"k", raw)
    assert headers.get("unrouted-event-name") == event_name
    assert headers["unrouted-source-offset"] == b"5"
    assert headers["unrouted-reason"]


def test_a_handler_that_raises_sends_its_record_to_the_dlq_instead_of_blocking_the_partition(
    settings: ConsumerSettings, sample_body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(plan_module, "route_webhook", broken)

    (record,) = plan(settings, FakeRecord(sample_body)).outgoing

    assert record.topic == "exam.webhooks.dlq"
    assert dict(record.headers)["dlq-error-type"] == b"HandlerError"


def test_outputs_keep_input_order_and_each_partition_commits_after_its_last_record(
    settings: ConsumerSettings,
) -> None:
    records = [
        FakeRecord(encode(results_released(user_id="u1", attempt_id="a1")), offset=10, partition=0),
        FakeRecord(encode(results_released(user_id="u1", attempt_id="a2", passed=False)), offset=11),
        FakeRecord(b"nope", offset=4, partition=1),
    ]

    result = plan(settings, *records)

    # a1: passed and its statement; a2: failed, resit available and its statement; then the DLQ copy.
    assert [r.key for r in result.outgoing] == [b"u1"] * 5 + [None]
    assert [dict(r.headers).get("ce_subject") for r in result.outgoing[:5]] == [b"a1"] * 2 + [b"a2"] * 3
    assert result.next_offsets == {("exam.webhooks.raw", 0): 12, ("exam.webhooks.raw", 1): 5}
    assert len(result.handler_seconds) == 3


def test_the_same_webhook_twice_gives_identical_records(
    settings: ConsumerSettings, sample_body: bytes
) -> None:
    first = plan(settings, FakeRecord(sample_body, offset=1)).outgoing
    again = plan(settings, FakeRecord(sample_body, offset=1)).outgoing

    assert first == again


def _without_event_name(body: dict[str, Any]) -> bytes:
    del body["meta"]["eventName"]
    return encode(body)


def test_a_body_without_meta_event_name_is_routed_by_its_event_name_header(
    settings: ConsumerSettings,
) -> None:
    # Exam Results Released requires meta.eventName: routed by the header, it fails validation.
    record = FakeRecord(
        _without_event_name(results_released()), headers=(("event-name", b"exam.resultsReleased"),)
    )

    result = plan(settings, record)

    assert [r.topic for r in result.outgoing] == [settings.dlq_topic]
    assert result.outcomes[0].event_name == "exam.resultsReleased"
    assert result.outcomes[0].conflicting_event_name is None


def test_when_the_header_and_meta_event_name_disagree_the_body_wins_and_the_conflict_is_noted(
    settings: ConsumerSettings, sample_body: bytes
) -> None:
    result = plan(settings, FakeRecord(sample_body, headers=(("event-name", b"exam.completed"),)))

    assert [r.topic for r in result.outgoing] == ["exam.results.passed", "exam.xapi.statements"]
    (outcome,) = result.outcomes
    assert outcome.event_name == "exam.resultsReleased"
    assert outcome.conflicting_event_name == "exam.completed"


def test_a_header_that_agrees_with_meta_event_name_is_no_conflict(
    settings: ConsumerSettings, sample_body: bytes
) -> None:
    result = plan(settings, FakeRecord(sample_body, headers=(("event-name", b"exam.resultsReleased"),)))

    assert result.outcomes[0].conflicting_event_name is None


def test_a_header_that_is_not_utf8_is_ignored(settings: ConsumerSettings) -> None:
    result = plan(
        settings, FakeRecord(_without_event_name(results_released()), headers=(("event-name", b"\xff"),))
    )

    assert [r.topic for r in result.outgoing] == [settings.unrouted_topic]


def test_the_consumer_reads_the_event_name_header_the_ingress_writes() -> None:
    from ingress.app import HEADER_EVENT_NAME

    assert plan_module.EVENT_NAME_HEADER == HEADER_EVENT_NAME


def test_with_tracing_on_the_tracestate_that_came_in_counts_twice_against_the_limit(
    settings: ConsumerSettings,
) -> None:
    limits = dict.fromkeys(settings.derived_topics.values(), 8 * 1024)
    body = webhook_with_exam_name(4_000)  # fits by itself
    tracestate = ("vendor=" + "x" * 2_000).encode()
    headers = (("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("tracestate", tracestate))

    untraced = plan(settings, FakeRecord(body, headers=headers), output_limits=limits)
    traced = plan(settings, FakeRecord(body, headers=headers), output_limits=limits, tracing=MemoryTracing())

    assert not untraced.dead_lettered
    assert traced.dead_lettered == {"OutputTooLarge": 1}


def test_a_copy_its_dead_letter_topic_cannot_take_goes_there_without_its_value(
    settings: ConsumerSettings,
) -> None:
    raw = b"x" * 5_000  # not JSON: a dead letter
    limits = {settings.dlq_topic: 4 * 1024}

    (dead,) = plan(settings, FakeRecord(raw, offset=9, key=b"u1"), output_limits=limits).outgoing

    headers = dict(dead.headers)
    assert dead.topic == settings.dlq_topic
    assert dead.value is None
    assert headers["value-omitted-bytes"] == b"5000"
    assert headers["dlq-error-type"] == b"InvalidJson"
    assert headers["dlq-source-offset"] == b"9"  # where the raw record still is
    assert dead.key == b"u1"


def test_a_copy_that_fits_its_topic_keeps_its_value(settings: ConsumerSettings) -> None:
    (dead,) = plan(settings, FakeRecord(b"x" * 100), output_limits={settings.dlq_topic: 4 * 1024}).outgoing

    assert dead.value == b"x" * 100
    assert "value-omitted-bytes" not in dict(dead.headers)
