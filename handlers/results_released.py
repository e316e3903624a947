"""Exam Results Released: pass/fail and resit events, by the rules in README "Derived events", and
the result's xAPI statement."""

from __future__ import annotations

from typing import Any

from handlers.event_ids import event_id
from handlers.routing import HandlerOutput, SourceRecord
from handlers.settings import RulesSettings
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
    data: list[ResultContext] = [(ExamPassed if passed else ExamFailed).model_validate(context)]
    if passed and attempt.resit_count > 0:
        data.append(ResitPassed.model_validate(context))
    elif not passed and attempt.resit_count < rules.max_resits:
        remaining = rules.max_resits - attempt.resit_count
        resits = {"max_resits": rules.max_resits, "resits_remaining": remaining}
        data.append(ResitAvailable.model_validate(context | resits))
    elif not passed:
        data.append(ResitExhausted.model_validate(context | {"max_resits": rules.max_resits}))
    events = [_cloud_event(webhook, item, rules) for item in data]
    # The passed or failed event (always the first) is also said in xAPI, for learning-record stores.
    statement = result_statement(
        events[0], time_spent_ms=webhook.time_spent_in_ms, home_page=rules.xapi_account_home_page
    )
    return HandlerOutput(events=(*events, statement))


def _result_context(webhook: ExamResultsReleased, source: SourceRecord) -> dict[str, Any]:
    """The fields every derived event of this webhook shares, with grades withheld if the exam says so.

    Plain dicts, validated once per event by the event's model: one call into pydantic-core is
    several times cheaper than building each nested model in Python.
    """
    user, attempt, exam = webhook.user, webhook.attempt, webhook.exam
    withheld = not exam.attr.publish_exam_grade
    return {
        "learner": {
            "id": user.id,
            "name": user.name,
            "email": user.email,
            "sub_portal_id": user.sub_portal_id,
        },
        "portal_id": webhook.portal.id,
        "exam": {
            "id": exam.id,
            "name": exam.name,
            "group_id": exam.attr.exam_group_id,
            "weight": exam.attr.exam_weight,
            "qualification": exam.attr.qualification_name,
            "cohort": exam.attr.cohort_number,
        },
        "test": {"id": webhook.test.id, "title": webhook.test.title},
        "attempt": {
            "id": attempt.id,
            "resit_count": attempt.resit_count,
            "time_completed": attempt.time_completed,
            "score": None if withheld else attempt.score,
            "score_frac": None if withheld else attempt.score_frac,
            "points": None if withheld else attempt.marks.points,
            "max_points": attempt.marks.max_points,
        },
        "passed": attempt.grade.is_pass,
        "grade": None if withheld else {"label": attempt.grade.label, "min_score": attempt.grade.min_score},
        "grade_withheld": withheld,
        "released_at": attempt.audit.released_at,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
    }


def _cloud_event(webhook: ExamResultsReleased, data: ResultContext, rules: RulesSettings) -> DerivedEvent:
    attempt = webhook.attempt
    return DerivedEvent(
        type=data.event_type,
        id=derive_event_id(webhook.portal.id, attempt.id, attempt.audit.released_at, data.event_type),
        source=f"{rules.ce_source}:portal:{webhook.portal.id}",
        subject=attempt.id,
        time=attempt.audit.released_at,
        key=webhook.user.id,
        data=data,
    )


def derive_event_id(portal_id: str, attempt_id: str, released_at: str, event_type: str) -> str:
    """A deterministic CloudEvents id: a redelivery gives the same id, a re-release a new one."""
    return event_id(portal_id, attempt_id, released_at, event_type)
