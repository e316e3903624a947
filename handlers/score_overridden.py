"""Attempt Override Created: one `exam.score.overridden` event per override."""

from __future__ import annotations

from handlers.event_ids import event_id
from handlers.routing import HandlerOutput, SourceRecord
from handlers.settings import RulesSettings
from schemas.cloudevents import DerivedEvent
from schemas.derived import ScoreOverridden
from schemas.platform import AttemptOverrideCreated, ScoreChange


def derive_score_overridden(
    webhook: AttemptOverrideCreated, source: SourceRecord, *, rules: RulesSettings
) -> HandlerOutput:
    """The override's before and after values, keyed by the attempt's learner."""
    attempt_id, portal_id, at = webhook.attempt.id, webhook.portal.id, webhook.meta.timestamp
    # As `ScoreOverridden` has it on the wire: camelCase, in its field order.
    data = {
        "learnerId": webhook.learner_id,
        "portalId": portal_id,
        "examId": webhook.exam.id,
        "attemptId": attempt_id,
        "actionType": webhook.action_type,
        "score": _change(webhook.score),
        "points": _change(webhook.points),
        "credits": _change(webhook.credits),
        "penalties": _change(webhook.penalties),
        "overriddenAt": at,
        "source": source._asdict(),
    }
    event = DerivedEvent(
        type=ScoreOverridden.event_type,
        # One attempt can be overridden several times: the override's own time tells them apart.
        id=event_id(portal_id, attempt_id, at, ScoreOverridden.event_type),
        source=f"{rules.ce_source}:portal:{portal_id}",
        subject=attempt_id,
        time=at,
        key=webhook.learner_id,
        data=data,
        data_model=ScoreOverridden,
    )
    return HandlerOutput(events=(event,))


def _change(change: ScoreChange) -> dict[str, object]:
    return {"oldValue": change.old_value, "newValue": change.new_value, "isOriginal": change.is_original}
