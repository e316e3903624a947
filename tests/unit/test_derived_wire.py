"""Handlers build each derived event's data as it goes on the wire, without validating it again: the
bytes must be exactly those that validating it by its model and serialising the model would give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import Handled, Invalid, RulesSettings, SourceRecord, build_routing_table, route_webhook
from schemas.cloudevents import DerivedEvent
from tests.support.webhooks import encode, platform_body, results_released

TABLE = build_routing_table(RulesSettings())
SOURCE = SourceRecord("exam.webhooks.raw", 2, 4711)
# Each derived record of RECORDED_CASES as the handlers made it when they still validated every
# event's data by its model (commit 397374d): type, ce_id, key and value, one JSON object a line.
RECORDED = Path(__file__).resolve().parents[1] / "data" / "derived-records.jsonl"


def recorded_cases() -> list[tuple[str, dict[str, Any], str | None]]:
    cases: list[tuple[str, dict[str, Any], str | None]] = [
        (
            f"results passed={passed} resits={resits} publish={publish}",
            results_released(passed=passed, resit_count=resits, publish_grade=publish),
            None,
        )
        for passed in (True, False)
        for resits in (0, 1, 5)
        for publish in (True, False)
    ]
    for name in ("attempt-override-created", "exam-submitted", "exam-completed", "attempt-submitted"):
        cases.append((name, platform_body(name), None))
    cases.append(
        ("user-registered-for-exam", platform_body("user-registered-for-exam"), "user.registeredForExam")
    )
    return cases


def derived(body: dict[str, Any], subscribed: str | None = None) -> tuple[DerivedEvent, ...]:
    result = route_webhook(encode(body), SOURCE, TABLE, subscribed)
    assert isinstance(result, Handled), result
    return result.output.events


def assert_as_validated(event: DerivedEvent) -> None:
    """The event's value is its data validated by its model and serialised, byte for byte."""
    assert event.value() == event.validated().model_dump_json(by_alias=True).encode()


def test_the_records_are_byte_for_byte_those_of_the_validating_handlers() -> None:
    made = [
        {"case": case, "type": event.type, "id": event.id, "key": event.key, "value": event.value().decode()}
        for case, body, subscribed in recorded_cases()
        for event in derived(body, subscribed)
    ]
    recorded = [json.loads(line) for line in RECORDED.read_text().splitlines()]
    assert len(made) == len(recorded) == 39
    for mine, theirs in zip(made, recorded, strict=True):
        assert mine == theirs


@pytest.mark.parametrize(
    ("name", "subscribed"),
    [
        ("attempt-override-created", None),
        ("exam-submitted", None),
        ("exam-completed", None),
        ("attempt-submitted", None),
        ("user-registered-for-exam", "user.registeredForExam"),
    ],
)
def test_every_platform_event_serialises_as_its_validated_model(name: str, subscribed: str | None) -> None:
    events = derived(platform_body(name), subscribed)
    assert events
    for event in events:
        assert_as_validated(event)


@pytest.mark.parametrize("passed", [True, False])
@pytest.mark.parametrize("resit_count", [0, 1, 5])
@pytest.mark.parametrize("publish_grade", [True, False])
def test_every_result_event_and_statement_serialise_as_their_validated_models(
    passed: bool, resit_count: int, publish_grade: bool
) -> None:
    body = results_released(passed=passed, resit_count=resit_count, publish_grade=publish_grade)
    events = derived(body)
    assert len(events) >= 2  # a result event, maybe a resit event, and the xAPI statement
    for event in events:
        assert_as_validated(event)


numbers = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
)
texts = st.text(min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    passed=st.booleans(),
    resit_count=st.integers(min_value=0, max_value=10),
    publish_grade=st.booleans(),
    user_id=texts,
    name=st.text(max_size=30),
    sub_portal_id=st.one_of(st.none(), texts),
    exam_name=st.text(max_size=30),
    weight=numbers,
    score=numbers,
    score_frac=st.one_of(st.integers(min_value=0, max_value=1), st.floats(min_value=0, max_value=1)),
    points=numbers,
    max_points=numbers,
    min_score=numbers,
    time_spent=st.integers(min_value=0, max_value=10**10),
)
def test_any_valid_release_serialises_as_its_validated_models(
    passed: bool,
    resit_count: int,
    publish_grade: bool,
    user_id: str,
    name: str,
    sub_portal_id: str | None,
    exam_name: str,
    weight: float,
    score: float,
    score_frac: float,
    points: float,
    max_points: float,
    min_score: float,
    time_spent: int,
) -> None:
    body = results_released(
        passed=passed, resit_count=resit_count, publish_grade=publish_grade, user_id=user_id
    )
    body["user"] |= {"name": name, "subPortalId": sub_portal_id}
    body["exam"]["name"] = exam_name
    body["exam"]["attr"]["exam-weight"] = weight
    body["attempt"] |= {"score": score, "scoreFrac": score_frac, "timeSpentInMs": time_spent}
    body["attempt"]["marks"] |= {"points": points, "maxPoints": max_points}
    body["attempt"]["grade"]["minScore"] = min_score
    for event in derived(body):
        assert_as_validated(event)


@pytest.mark.parametrize("score_frac", [1.5, -0.2])
def test_a_score_fraction_outside_0_to_1_leaves_the_score_out_of_the_statement_not_the_events_out(
    score_frac: float,
) -> None:
    body = results_released(passed=False, resit_count=1)
    body["attempt"]["scoreFrac"] = score_frac
    events = derived(body)
    assert [event.type for event in events] == [
        "exam.result.failed",
        "exam.resit.available",
        "exam.xapi.statement",
    ]
    statement = json.loads(events[-1].value())
    assert "score" not in statement["result"]
    assert statement["result"]["success"] is False
    for event in events:
        assert_as_validated(event)


@pytest.mark.parametrize("non_finite", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_a_number_that_is_not_finite_is_dead_lettered_not_written_as_null(non_finite: str) -> None:
    raw = encode(results_released()).replace(b'"maxPoints": 40', b'"maxPoints": ' + non_finite.encode())
    assert non_finite.encode() in raw
    result = route_webhook(raw, SOURCE, TABLE)
    assert isinstance(result, Invalid), result
    assert result.error_type == "InvalidJson"
    assert "non-finite number" in result.message
