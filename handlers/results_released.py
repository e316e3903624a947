"""Exam Results Released: pass/fail and resit events, by the rules in README "Derived events", and
the result's xAPI statement."""

from __future__ import annotations

from typing import Any

from handlers.event_ids import event_id
from handlers.routing import HandlerOutput, SourceRecord
from handlers.settings import RulesSettings
from handlers.shared_data import learner_data
from handlers.xapi import result_statement
from schemas.cloudevents import DerivedEvent
from schemas.derived import (
    ExamFailed,
    ExamPassed,
    ResitAvailable,
    ResitExhausted,
    ResitPassed,
    ResultContext,
)
from schemas.webhook import ExamResultsReleased


def derive_result_events(
    webhook: ExamResultsReleased, source: SourceRecord, *, rules: RulesSettings
) -> HandlerOutput:
    """Derive the result and resit events of one released attempt."""
    attempt = webhook.attempt
    if attempt.state.is_revoked:
        return HandlerOutput(events=(), skipped_reason="revoked")
    context = _result_context(webhook, source)
    passed = attempt.grade.is_pass
    data: list[tuple[type[ResultContext], dict[str, Any]]] = [(ExamPassed if passed else ExamFailed, context)]
    if passed and attempt.resit_count > 0:
        data.append((ResitPassed, context))
    elif not passed and attempt.resit_count < rules.max_resits:
        remaining = rules.max_resits - attempt.resit_count
        data.append((ResitAvailable, context | {"maxResits": rules.max_resits, "resitsRemaining": remaining}))
    elif not passed:
        data.append((ResitExhausted, context | {"maxResits": rules.max_resits}))
    events = [_cloud_event(webhook, model, fields, rules) for model, fields in data]
    # The passed or failed event (always the first) is also said in xAPI, for learning-record stores.
    statement = result_statement(
        events[0], time_spent_ms=webhook.time_spent_in_ms, home_page=rules.xapi_account_home_page
    )
    return HandlerOutput(events=(*events, statement))


def _result_context(webhook: ExamResultsReleased, source: SourceRecord) -> dict[str, Any]:
    """The fields every derived event of this webhook shares, as `ResultContext` has them on the wire
    (camelCase, in its field order), with grades withheld if the exam says so."""
    user, attempt, exam = webhook.user, webhook.attempt, webhook.exam
    withheld = not exam.attr.publish_exam_grade
    return {
        "learner": learner_data(user),
        "portalId": webhook.portal.id,
        "exam": {
            "id": exam.id,
            "name": exam.name,
            "groupId": exam.attr.exam_group_id,
            "weight": exam.attr.exam_weight,
            "qualification": exam.attr.qualification_name,
            "cohort": exam.attr.cohort_number,
        },
        "test": {"id": webhook.test.id, "title": webhook.test.title},
        "attempt": {
            "id": attempt.id,
            "resitCount": attempt.resit_count,
            "timeCompleted": attempt.time_completed,
            "score": None if withheld else attempt.score,
            "scoreFrac": None if withheld else attempt.score_frac,
            "points": None if withheld else attempt.marks.points,
            "maxPoints": attempt.marks.max_points,
        },
        "passed": attempt.grade.is_pass,
        "grade": None if withheld else {"label": attempt.grade.label, "minScore": attempt.grade.min_score},
        "gradeWithheld": withheld,
        "releasedAt": attempt.audit.released_at,
        "source": source._asdict(),
    }


def _cloud_event(
    webhook: ExamResultsReleased, model: type[ResultContext], data: dict[str, Any], rules: RulesSettings
) -> DerivedEvent:
    attempt = webhook.attempt
    return DerivedEvent(
        type=model.event_type,
        id=derive_event_id(webhook.portal.id, attempt.id, attempt.audit.released_at, model.event_type),
        source=f"{rules.ce_source}:portal:{webhook.portal.id}",
        subject=attempt.id,
        time=attempt.audit.released_at,
        key=webhook.user.id,
        data=data,
        data_model=model,
    )


def derive_event_id(portal_id: str, attempt_id: str, released_at: str, event_type: str) -> str:
    """A deterministic CloudEvents id: a redelivery gives the same id, a re-release a new one."""
    return event_id(portal_id, attempt_id, released_at, event_type)
