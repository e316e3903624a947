"""The platform's other events: score overrides, attempts submitted and completed, exam registrations."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from handlers import Handled, Invalid, RulesSettings, SourceRecord, build_routing_table, route_webhook
from schemas.cloudevents import DerivedEvent
from schemas.platform import AttemptOverrideCreated, AttemptReported, UserRegisteredForExam
from tests.support.webhooks import encode, platform_body

SOURCE = SourceRecord(topic="exam.webhooks.raw", partition=1, offset=7)
TABLE = build_routing_table(RulesSettings())


def derive(body: dict[str, Any], header_name: str | None = None) -> DerivedEvent:
    result = route_webhook(encode(body), SOURCE, TABLE, header_name)
    assert isinstance(result, Handled), result
    (event,) = result.output.events
    return event


def data_of(event: DerivedEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.value())
    return data


# --- attemptOverride.created -> exam.score.overridden ------------------------------------------


def test_an_override_becomes_a_score_overridden_event_with_old_and_new_values() -> None:
    event = derive(platform_body("attempt-override-created"))

    assert event.type == "exam.score.overridden"
    assert (event.key, event.subject, event.time) == (
        "usr_8f2c1a7e",
        "att_5b9e0c2d",
        "2026-06-13T15:12:09.204Z",
    )
    assert event.source == "urn:exam-events:portal:prt_01HZX4"
    assert data_of(event) == {
        "learnerId": "usr_8f2c1a7e",
        "portalId": "prt_01HZX4",
        "examId": "exm_acc201_s26",
        "attemptId": "att_5b9e0c2d",
        "actionType": "manualScoreOverride",
        "score": {"oldValue": 67.5, "newValue": 72.5, "isOriginal": False},
        "points": {"oldValue": 27, "newValue": 29, "isOriginal": False},
        "credits": {"oldValue": 0, "newValue": 2, "isOriginal": False},
        "penalties": {"oldValue": 0, "newValue": 0, "isOriginal": True},
        "overriddenAt": "2026-06-13T15:12:09.204Z",
        "source": {"topic": "exam.webhooks.raw", "partition": 1, "offset": 7},
    }


def test_an_override_carries_no_name_or_email() -> None:
    body = platform_body("attempt-override-created")
    text = derive(body).value().decode()

    assert body["user"]["name"] not in text
    assert body["user"]["email"] not in text


@pytest.mark.parametrize("attempt_user", [{"id": "usr_learner"}, "usr_learner"])
def test_the_override_is_keyed_by_the_attempts_learner_however_it_is_written(attempt_user: object) -> None:
    body = platform_body("attempt-override-created")
    body["attempt"]["user"] = attempt_user

    assert derive(body).key == "usr_learner"


def test_an_override_without_the_attempts_user_is_keyed_by_the_events_user() -> None:
    body = platform_body("attempt-override-created")
    del body["attempt"]["user"]

    assert derive(body).key == "usr_8f2c1a7e"


def test_a_redelivered_override_keeps_its_id_and_a_second_override_gets_a_new_one() -> None:
    body = platform_body("attempt-override-created")
    first = derive(body)
    body["meta"]["timestamp"] = "2026-06-13T16:00:00.000Z"

    assert derive(platform_body("attempt-override-created")).id == first.id
    assert derive(body).id != first.id
    assert uuid.UUID(first.id).version == 5


def test_an_override_without_one_of_its_four_values_is_invalid() -> None:
    body = platform_body("attempt-override-created")
    del body["penalties"]

    result = route_webhook(encode(body), SOURCE, TABLE)

    assert isinstance(result, Invalid)
    assert "penalties" in result.message


def test_unknown_fields_of_an_override_are_kept() -> None:
    webhook = AttemptOverrideCreated.model_validate(platform_body("attempt-override-created"))

    assert webhook.model_dump(by_alias=True)["reason"] == "Question 17 re-marked after moderation"


# --- exam.submitted / exam.completed / attempt.* -> exam.attempt.* -------------------------------


@pytest.mark.parametrize(
    ("event_name", "event_type"),
    [
        ("exam.submitted", "exam.attempt.submitted"),
        ("attempt.submitted", "exam.attempt.submitted"),
        ("exam.completed", "exam.attempt.completed"),
        ("attempt.completed", "exam.attempt.completed"),
    ],
)
def test_exam_and_attempt_events_of_the_same_kind_derive_the_same_type(
    event_name: str, event_type: str
) -> None:
    body = platform_body("exam-completed")
    body["meta"]["eventName"] = event_name

    assert derive(body).type == event_type


def test_a_submitted_exam_before_marking_has_its_marking_status_and_times_but_no_marks() -> None:
    event = derive(platform_body("exam-submitted"))
    data = data_of(event)

    assert (event.type, event.key, event.subject) == (
        "exam.attempt.submitted",
        "usr_3d41b9aa",
        "att_9c2e71f0",
    )
    assert event.time == "2026-06-01T10:41:38.112Z"
    assert data["isExam"] is True
    assert data["marking"] == {"status": "notStarted", "pendingMarks": 12, "done": False}
    assert data["marks"] is None
    assert data["attempt"] == {
        "id": "att_9c2e71f0",
        "status": "completed",
        "examStatus": "submitted",
        "resitCount": 0,
        "timeStarted": "2026-06-01T09:00:00.000Z",
        "timeCompleted": "2026-06-01T10:41:37.000Z",
        "timeSpentInMs": 6097000,
    }
    assert data["exam"] == {"id": "exm_acc201_s26", "name": "ACC-201 Summer 2026"}
    assert data["test"] == {"id": "tst_acc201_final", "title": "ACC-201 Final Examination"}
    assert data["learner"]["id"] == "usr_3d41b9aa"


def test_a_completed_exam_once_marked_carries_the_marks() -> None:
    data = data_of(derive(platform_body("exam-completed")))

    assert data["marking"] == {"status": "completed", "pendingMarks": 0, "done": True}
    assert data["marks"] == {
        "points": 24.5,
        "maxPoints": 40,
        "credits": 1,
        "penalties": 0.5,
        "score": 61.25,
        "scoreFrac": 0.6125,
    }


def test_a_submitted_practice_test_is_told_apart_from_an_exam() -> None:
    data = data_of(derive(platform_body("attempt-submitted")))

    assert data["isExam"] is False
    assert data["exam"] is None
    assert data["test"]["id"] == "tst_acc201_practice_3"


def test_an_exam_attempt_reported_by_its_exam_and_its_attempt_webhook_gets_one_id() -> None:
    exam_event = platform_body("exam-submitted")
    attempt_event = platform_body("exam-submitted")
    attempt_event["meta"] = {"timestamp": "2026-06-01T10:41:38.530Z", "eventName": "attempt.submitted"}

    assert derive(exam_event).id == derive(attempt_event).id
    assert derive(exam_event).id != derive(platform_body("exam-completed")).id


def test_an_attempt_event_without_a_marking_status_is_invalid() -> None:
    body = platform_body("exam-submitted")
    del body["attempt"]["state"]["results"]["markingStatus"]

    result = route_webhook(encode(body), SOURCE, TABLE)

    assert isinstance(result, Invalid)
    assert "attempt.state.results.markingStatus" in result.message


def test_unknown_fields_of_an_attempt_event_are_kept() -> None:
    webhook = AttemptReported.model_validate(platform_body("exam-completed"))

    assert webhook.model_dump(by_alias=True)["attempt"]["proctorStatus"] == "clear"


# --- user.registeredForExam -> exam.registration.created -----------------------------------------


def test_a_registration_without_meta_event_name_is_routed_by_its_subscription_name() -> None:
    body = platform_body("user-registered-for-exam")
    assert "eventName" not in body["meta"]

    event = derive(body, "user.registeredForExam")

    assert event.type == "exam.registration.created"
    assert (event.key, event.subject, event.time) == (
        "usr_5e0f2c19",
        "exm_acc201_s26",
        "2026-05-02T11:17:45.068Z",
    )
    data = data_of(event)
    assert data["exam"] == {
        "id": "exm_acc201_s26",
        "name": "ACC-201 Summer 2026",
        "url": "https://learn.example.org/exams/exm_acc201_s26",
        "schedule": {"openDate": "2026-06-01T08:00:00.000Z", "closeDate": "2026-06-01T12:00:00.000Z"},
    }
    assert data["userGroup"] == {"id": "ug_acc_2026a", "name": "Accounting 2026 Cohort A"}
    assert data["learner"]["id"] == "usr_5e0f2c19"
    assert data["registeredAt"] == "2026-05-02T11:17:45.068Z"


def test_a_registration_that_writes_its_ids_as_id_is_read_the_same() -> None:
    body = platform_body("user-registered-for-exam")
    body["exam"]["id"] = body["exam"].pop("objectId")
    body["userGroup"]["id"] = body["userGroup"].pop("objectId")

    assert derive(body, "user.registeredForExam") == derive(
        platform_body("user-registered-for-exam"), "user.registeredForExam"
    )


def test_a_registration_without_a_user_group_or_dates_still_derives_its_event() -> None:
    body = platform_body("user-registered-for-exam")
    del body["userGroup"]
    body["exam"]["schedule"] = {"openDate": None}

    data = data_of(derive(body, "user.registeredForExam"))

    assert data["userGroup"] is None
    assert data["exam"]["schedule"] == {"openDate": None, "closeDate": None}


def test_a_registration_with_a_timestamp_that_is_no_instant_is_invalid() -> None:
    body = platform_body("user-registered-for-exam")
    body["meta"]["timestamp"] = "yesterday"

    result = route_webhook(encode(body), SOURCE, TABLE, "user.registeredForExam")

    assert isinstance(result, Invalid)
    assert "meta.timestamp" in result.message
    assert "yesterday" not in result.message


def test_unknown_fields_of_a_registration_are_kept() -> None:
    webhook = UserRegisteredForExam.model_validate(platform_body("user-registered-for-exam"))

    assert webhook.model_dump(by_alias=True)["exam"]["attr"] == {
        "exam-group-id": "grp_acc201",
        "cohort_number": "2026-A",
    }


def test_every_new_event_is_a_cloudevent_in_binary_mode() -> None:
    for event in [
        derive(platform_body("attempt-override-created")),
        derive(platform_body("exam-completed")),
        derive(platform_body("user-registered-for-exam"), "user.registeredForExam"),
    ]:
        headers = dict(event.kafka_headers())
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_type"] == event.type.encode()
        assert headers["content-type"] == b"application/json"
