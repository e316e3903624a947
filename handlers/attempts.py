"""Attempt submitted or completed (exam.* and attempt.* alike): one `exam.attempt.*` event each."""

from __future__ import annotations

from typing import Any

from handlers.event_ids import event_id
from handlers.routing import HandlerOutput, SourceRecord
from handlers.settings import RulesSettings
from handlers.shared_data import learner_data
from schemas.cloudevents import DerivedEvent
from schemas.derived import AttemptContext
from schemas.platform import AttemptReported


def derive_attempt_event(
    webhook: AttemptReported, source: SourceRecord, *, model: type[AttemptContext], rules: RulesSettings
) -> HandlerOutput:
    """The attempt's marking status and times, and its marks once marking is done."""
    user, attempt, portal_id = webhook.user, webhook.attempt, webhook.portal.id
    marks = attempt.marks
    # As `model` has it on the wire: camelCase, in its field order.
    context: dict[str, Any] = {
        "learner": learner_data(user),
        "portalId": portal_id,
        "isExam": attempt.is_exam,
        "exam": None if webhook.exam is None else {"id": webhook.exam.id, "name": webhook.exam.name},
        "test": None if webhook.test is None else {"id": webhook.test.id, "title": webhook.test.title},
        "attempt": {
            "id": attempt.id,
            "status": attempt.status,
            "examStatus": attempt.exam_status,
            "resitCount": attempt.resit_count,
            "timeStarted": attempt.time_started,
            "timeCompleted": attempt.time_completed,
            "timeSpentInMs": attempt.time_spent_in_ms,
        },
        "marking": {
            "status": attempt.state.results.marking_status,
            "pendingMarks": attempt.state.results.pending_marks,
            "done": marks is not None,
        },
        # The platform sends marks only once marking is done.
        "marks": None
        if marks is None
        else {
            "points": marks.points,
            "maxPoints": marks.max_points,
            "credits": marks.credits,
            "penalties": marks.penalties,
            "score": attempt.score,
            "scoreFrac": attempt.score_frac,
        },
        "reportedAt": webhook.meta.timestamp,
        "source": source._asdict(),
    }
    event = DerivedEvent(
        type=model.event_type,
        # The attempt and its completion time, not the webhook's: an exam attempt reported by both its
        # exam.* and its attempt.* webhook gets one id, so it is published once (exactly-once) or
        # deduplicated downstream.
        id=event_id(portal_id, attempt.id, attempt.time_completed, model.event_type),
        source=f"{rules.ce_source}:portal:{portal_id}",
        subject=attempt.id,
        time=webhook.meta.timestamp,
        key=user.id,
        data=context,
        data_model=model,
    )
    return HandlerOutput(events=(event,))
