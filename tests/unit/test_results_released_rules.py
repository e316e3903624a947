"""The rules that turn an Exam Results Released webhook into derived events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from handlers import Handled, RulesSettings, SourceRecord, build_routing_table, route_webhook
from schemas.cloudevents import DerivedEvent
from tests.support.webhooks import encode, results_released

SOURCE = SourceRecord(topic="exam.webhooks.raw", partition=2, offset=41)
STATEMENT = "exam.xapi.statement"


def derive(body: dict[str, Any], rules: RulesSettings | None = None) -> Handled:
    result = route_webhook(encode(body), SOURCE, build_routing_table(rules or RulesSettings()))
    assert isinstance(result, Handled), result
    return result


def types_of(body: dict[str, Any], rules: RulesSettings | None = None) -> list[str]:
    return [event.type for event in derive(body, rules).output.events]


def result_events(body: dict[str, Any], rules: RulesSettings | None = None) -> list[DerivedEvent]:
    """The derived events, without the result's xAPI statement (tests/unit/test_xapi_statements.py)."""
    events = derive(body, rules).output.events
    assert events[-1].type == STATEMENT
    return list(events[:-1])


def data_of(event: DerivedEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.value())
    return data


@pytest.mark.parametrize(
    ("passed", "resit_count", "expected"),
    [
        (True, 0, ["exam.result.passed", STATEMENT]),
        (True, 1, ["exam.result.passed", "exam.resit.passed", STATEMENT]),
        (True, 5, ["exam.result.passed", "exam.resit.passed", STATEMENT]),
        (False, 0, ["exam.result.failed", "exam.resit.available", STATEMENT]),
        (False, 1, ["exam.result.failed", "exam.resit.available", STATEMENT]),
        (False, 2, ["exam.result.failed", "exam.resit.exhausted", STATEMENT]),
        (False, 3, ["exam.result.failed", "exam.resit.exhausted", STATEMENT]),
    ],
)
def test_a_release_derives_the_events_of_its_row_in_the_rules_table(
    passed: bool, resit_count: int, expected: list[str]
) -> None:
    assert types_of(results_released(passed=passed, resit_count=resit_count)) == expected


@pytest.mark.parametrize("passed", [True, False])
def test_a_revoked_attempt_derives_nothing_and_says_it_was_revoked(passed: bool) -> None:
    output = derive(results_released(passed=passed, revoked=True)).output
    assert output.events == ()
    assert output.skipped_reason == "revoked"


def test_max_resits_is_a_setting() -> None:
    generous = RulesSettings(max_resits=5)
    assert types_of(results_released(passed=False, resit_count=3), generous)[1] == "exam.resit.available"
    strict = RulesSettings(max_resits=0)
    assert types_of(results_released(passed=False, resit_count=0), strict)[1] == "exam.resit.exhausted"


def test_resit_available_says_how_many_resits_remain() -> None:
    events = derive(results_released(passed=False, resit_count=1)).output.events
    assert data_of(events[1])["maxResits"] == 2
    assert data_of(events[1])["resitsRemaining"] == 1


def test_a_withheld_grade_still_emits_events_without_grade_or_score() -> None:
    events = result_events(results_released(passed=False, publish_grade=False))
    assert [e.type for e in events] == ["exam.result.failed", "exam.resit.available"]
    for event in events:
        data = data_of(event)
        assert data["gradeWithheld"] is True
        assert data["grade"] is None
        assert data["attempt"]["score"] is None
        assert data["attempt"]["scoreFrac"] is None
        assert data["attempt"]["points"] is None
        assert data["attempt"]["maxPoints"] == 40
        assert "Fail" not in event.value().decode()


def test_a_published_grade_carries_label_score_and_min_score() -> None:
    (event,) = result_events(results_released())
    data = data_of(event)
    assert data["gradeWithheld"] is False
    assert data["grade"] == {"label": "Merit", "minScore": 70}
    assert data["attempt"] | {"timeCompleted": None} == {
        "id": "att_5b9e0c2d",
        "resitCount": 0,
        "timeCompleted": None,
        "score": 72.5,
        "scoreFrac": 0.725,
        "points": 29,
        "maxPoints": 40,
    }


def test_the_data_carries_what_downstream_services_need() -> None:
    (event,) = result_events(results_released())
    data = data_of(event)
    assert data["learner"] == {
        "id": "usr_8f2c1a7e",
        "name": "Amara Okafor",
        "email": "amara.okafor@example.org",
        "subPortalId": "sub_north",
    }
    assert data["portalId"] == "prt_01HZX4"
    assert data["exam"] == {
        "id": "exm_acc201_s26",
        "name": "ACC-201 Summer 2026",
        "groupId": "grp_acc201",
        "weight": 0.6,
        "qualification": "Level 4 Diploma in Accounting",
        "cohort": "2026-A",
    }
    assert data["test"] == {"id": "tst_acc201_final", "title": "ACC-201 Final Examination"}
    assert data["passed"] is True
    assert data["releasedAt"] == "2026-06-14T09:30:00.000Z"
    assert data["source"] == {"topic": "exam.webhooks.raw", "partition": 2, "offset": 41}


def test_cloudevent_attributes_come_from_the_webhook() -> None:
    (event,) = result_events(results_released(user_id="usr_1", attempt_id="att_9"))
    assert event.key == "usr_1"
    assert event.subject == "att_9"
    assert event.time == "2026-06-14T09:30:00.000Z"
    assert event.source == "urn:exam-events:portal:prt_01HZX4"
    headers = dict(event.kafka_headers())
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"exam.result.passed"
    assert headers["ce_id"] == event.id.encode()
    assert headers["content-type"] == b"application/json"
    assert uuid.UUID(event.id).version == 5


def test_the_same_webhook_delivered_twice_gives_identical_ids() -> None:
    body = results_released(passed=False)
    first = derive(body).output.events
    # A redelivery lands at another offset; the ids must not depend on where it was read.
    again = route_webhook(
        encode(body), SourceRecord("exam.webhooks.raw", 0, 999), build_routing_table(RulesSettings())
    )
    assert isinstance(again, Handled)
    assert [e.id for e in first] == [e.id for e in again.output.events]


def test_a_re_release_of_the_same_attempt_gives_new_ids() -> None:
    first = derive(results_released(released_at="2026-06-14T09:30:00.000Z")).output.events
    rereleased = derive(results_released(released_at="2026-06-20T12:00:00.000Z")).output.events
    assert {e.id for e in first}.isdisjoint(e.id for e in rereleased)


def test_events_of_one_webhook_have_distinct_ids() -> None:
    events = derive(results_released(passed=False)).output.events
    assert len({e.id for e in events}) == len(events) == 3  # failed, resit available, the statement
