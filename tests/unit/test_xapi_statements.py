"""Each exam result also comes out as an xAPI 1.0.3 statement (docs/xapi.md maps every field)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from handlers import Handled, RulesSettings, SourceRecord, build_routing_table, route_webhook
from handlers.xapi import iso8601_duration, statement_id
from schemas.cloudevents import DerivedEvent
from tests.support.webhooks import encode, results_released

HOME = "https://exams.example.org"
RULES = RulesSettings(xapi_account_home_page=HOME)
SOURCE = SourceRecord(topic="exam.webhooks.raw", partition=0, offset=3)


def events_of(body: dict[str, Any], rules: RulesSettings = RULES) -> tuple[DerivedEvent, ...]:
    result = route_webhook(encode(body), SOURCE, build_routing_table(rules))
    assert isinstance(result, Handled), result
    return result.output.events


def statement_of(body: dict[str, Any], rules: RulesSettings = RULES) -> tuple[DerivedEvent, dict[str, Any]]:
    (event,) = [e for e in events_of(body, rules) if e.type == "exam.xapi.statement"]
    statement: dict[str, Any] = json.loads(event.value())
    return event, statement


def test_a_passed_result_is_a_passed_statement_about_the_exam_as_an_assessment() -> None:
    _, statement = statement_of(results_released(passed=True))

    assert statement["verb"] == {
        "id": "http://adlnet.gov/expapi/verbs/passed",
        "display": {"en-US": "passed"},
    }
    assert statement["object"] == {
        "objectType": "Activity",
        "id": f"{HOME}/exams/exm_acc201_s26",
        "definition": {
            "type": "http://adlnet.gov/expapi/activities/assessment",
            "name": {"und": "ACC-201 Summer 2026"},
        },
    }
    assert statement["result"] == {
        "success": True,
        "score": {"scaled": 0.725, "raw": 29.0, "min": 0.0, "max": 40.0},
        "duration": "PT1H41M37S",
    }
    assert statement["timestamp"] == "2026-06-14T09:30:00.000Z"


def test_a_failed_result_is_a_failed_statement_without_success() -> None:
    _, statement = statement_of(results_released(passed=False))

    assert statement["verb"]["id"] == "http://adlnet.gov/expapi/verbs/failed"
    assert statement["result"]["success"] is False
    assert statement["result"]["score"]["scaled"] == 0.315


def test_the_learner_is_an_account_never_a_name_or_an_email() -> None:
    body = results_released(user_id="usr_42")
    event, statement = statement_of(body)

    assert statement["actor"] == {"objectType": "Agent", "account": {"homePage": HOME, "name": "usr_42"}}
    assert body["user"]["name"] not in event.value().decode()
    assert body["user"]["email"] not in event.value().decode()


def test_a_withheld_grade_gives_no_score_at_all() -> None:
    _, statement = statement_of(results_released(publish_grade=False))

    assert "score" not in statement["result"]
    assert statement["result"]["success"] is True


def test_there_is_no_completion_and_no_null_anywhere() -> None:
    for body in (results_released(), results_released(passed=False, publish_grade=False)):
        _, statement = statement_of(body)
        assert "completion" not in statement["result"]
        assert "null" not in json.dumps(statement)


def test_the_statement_id_is_derived_from_the_result_events_ce_id_and_is_its_ce_id() -> None:
    events = events_of(results_released(passed=False))
    result, statement_event = events[0], events[-1]

    assert statement_event.id == statement_id(result.id)
    assert json.loads(statement_event.value())["id"] == statement_event.id
    assert uuid.UUID(statement_event.id).version == 5
    assert dict(statement_event.kafka_headers())["ce_type"] == b"exam.xapi.statement"
    assert (statement_event.key, statement_event.subject, statement_event.time) == (
        result.key,
        result.subject,
        result.time,
    )


def test_the_same_webhook_redelivered_gives_the_same_statement_and_a_re_release_a_new_one() -> None:
    body = results_released()
    first = statement_of(body)[0]
    again = route_webhook(encode(body), SourceRecord("exam.webhooks.raw", 5, 999), build_routing_table(RULES))
    assert isinstance(again, Handled)
    assert again.output.events[-1].value() == first.value()

    rereleased = statement_of(results_released(released_at="2026-06-20T12:00:00.000Z"))[0]
    assert rereleased.id != first.id


def test_one_statement_per_result_and_none_for_resits_or_revoked_attempts() -> None:
    failed_with_resit = [e.type for e in events_of(results_released(passed=False, resit_count=0))]
    assert failed_with_resit.count("exam.xapi.statement") == 1
    assert events_of(results_released(revoked=True)) == ()


def test_points_outside_the_range_leave_raw_min_and_max_out() -> None:
    body = results_released()
    body["attempt"]["marks"]["points"] = 45  # credits can lift points above maxPoints

    _, statement = statement_of(body)

    assert statement["result"]["score"] == {"scaled": 0.725}


def test_exam_ids_are_percent_encoded_in_the_activity_iri() -> None:
    body = results_released()
    body["exam"]["id"] = "exm 1/a"

    _, statement = statement_of(body)

    assert statement["object"]["id"] == f"{HOME}/exams/exm%201%2Fa"


@pytest.mark.parametrize(
    ("milliseconds", "duration"),
    [
        (0, "PT0S"),
        (1, "PT0.001S"),
        (1500, "PT1.5S"),
        (60_000, "PT1M"),
        (3_600_000, "PT1H"),
        (6_097_000, "PT1H41M37S"),
    ],
)
def test_durations_are_iso_8601(milliseconds: int, duration: str) -> None:
    assert iso8601_duration(milliseconds) == duration


@pytest.mark.parametrize("home_page", ["exams.example.org", "ftp://exams.example.org", "https://"])
def test_the_home_page_must_be_an_http_url(home_page: str) -> None:
    with pytest.raises(ValidationError):
        RulesSettings(xapi_account_home_page=home_page)
