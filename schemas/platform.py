"""The platform's other webhooks: attempts submitted and completed, score overrides, exam registrations.

Their shapes are known only in outline (../shared/reference/sender-platform.md), not field for field
as Exam Results Released is: each model requires what its handler needs and keeps everything else
(`extra="allow"`, as in `schemas.webhook`). Some bodies carry no `meta.eventName` (they are routed by
the subscription URL's event name), and ids are sometimes `id`, sometimes `objectId`: both are read.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import AliasChoices, ConfigDict, Field, field_validator

from schemas.webhook import Id, Marks, Number, Portal, Reference, Test, TimestampText, User, WireModel

# An id the platform writes as `objectId` in some events and `id` in others.
OBJECT_ID = AliasChoices("objectId", "id")


class EventMeta(WireModel):
    """`meta` of an event that may lack `eventName`; its timestamp is the CloudEvents time."""

    # `eventName` only, as routing reads it (see schemas.webhook.Meta).
    model_config = ConfigDict(validate_by_name=False)

    timestamp: TimestampText
    event_name: str | None = None

    @field_validator("timestamp")
    @classmethod
    def _timestamp_is_an_instant(cls, value: str) -> str:
        # It becomes the CloudEvents `time` (and part of ids): it must be a real instant.
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 timestamp") from None  # the value stays out of error logs
        return value


class UserRef(WireModel):
    """A `user` block of which only the id is certain."""

    id: Id
    name: str | None = None
    email: str | None = None
    sub_portal_id: Id | None = None


class ScoreChange(WireModel):
    """One overridden quantity: before, after, and whether the value is still the original."""

    old_value: Number | None
    new_value: Number | None
    is_original: bool


class OverriddenAttempt(WireModel):
    id: Id
    # The attempt's learner: an id, or a block with one (the outline does not say which).
    user: Id | Reference | None = None

    @property
    def user_id(self) -> str | None:
        """The learner's id, whichever way it was written."""
        return self.user.id if isinstance(self.user, Reference) else self.user


class AttemptOverrideCreated(WireModel):
    """`attemptOverride.created`: a marker overrode an attempt's score, points, credits or penalties."""

    user: UserRef
    portal: Portal
    meta: EventMeta
    action_type: str
    credits: ScoreChange
    penalties: ScoreChange
    score: ScoreChange
    points: ScoreChange
    exam: Reference
    attempt: OverriddenAttempt

    @property
    def learner_id(self) -> str:
        """The attempt's learner (`attempt.user`), else the event's `user.id`."""
        return self.attempt.user_id or self.user.id


class MarkingResults(WireModel):
    marking_status: str  # an open set: notStarted, pending, completed, released, ...
    pending_marks: int | None = None
    status: str | None = None


class ReportedAttemptState(WireModel):
    results: MarkingResults


class ReportedAttempt(WireModel):
    """The `attempt` block of results-released; marks are there only once marking is done."""

    id: Id
    is_exam: bool
    state: ReportedAttemptState
    time_started: str
    time_completed: TimestampText
    time_spent_in_ms: int
    status: str | None = None
    exam_status: str | None = None
    resit_count: int | None = Field(None, ge=0)
    marks: Marks | None = None
    score: Number | None = None
    score_frac: Number | None = None


class ExamRef(WireModel):
    id: Id
    name: str | None = None


class AttemptReported(WireModel):
    """`exam.submitted`, `exam.completed`, `attempt.submitted`, `attempt.completed`: the `user`,
    `portal`, `meta` and `attempt` blocks of results-released; `test` and `exam` when present."""

    user: User
    portal: Portal
    meta: EventMeta
    attempt: ReportedAttempt
    test: Test | None = None
    exam: ExamRef | None = None


class ExamSchedule(WireModel):
    open_date: str | None = None
    close_date: str | None = None


class RegisteredExam(WireModel):
    object_id: Id = Field(validation_alias=OBJECT_ID)
    url: str
    name: str
    schedule: ExamSchedule


class RegisteredUserGroup(WireModel):
    object_id: Id = Field(validation_alias=OBJECT_ID)
    name: str


class UserRegisteredForExam(WireModel):
    """`user.registeredForExam`: a learner was registered for an exam (its body has no `meta.eventName`)."""

    user: UserRef
    portal: Portal
    meta: EventMeta
    exam: RegisteredExam
    user_group: RegisteredUserGroup | None = None
