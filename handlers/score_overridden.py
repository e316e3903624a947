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
    data = ScoreOverridden.model_validate(
        {
            "learner_id": webhook.learner_id,
            "portal_id": portal_id,
            "exam_id": webhook.exam.id,
            "attempt_id": attempt_id,
            "action_type": webhook.action_type,
            "score": _change(webhook.score),
            "points": _change(webhook.points),
            "credits": _change(webhook.credits),
            "penalties": _change(webhook.penalties),
            "overridden_at": at,
            "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        }
    )
    event = DerivedEvent(
        type=ScoreOverridden.event_type,
        # One attempt can be overridden several times: the override's own time tells them apart.
        id=event_id(portal_id, attempt_id, at, ScoreOverridden.event_type),
        source=f"{rules.ce_source}:portal:{portal_id}",
        subject=attempt_id,
        time=at,
        key=webhook.learner_id,
        data=data,
    )
    return HandlerOutput(events=(event,))


def _change(change: ScoreChange) -> dict[str, object]:
    return {"old_value": change.old_value, "new_value": change.new_value, "is_original": change.is_original}
