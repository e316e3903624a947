"""Derived events: the contract that downstream services (notifications, gradebooks, certification)
build on. Each is the `data` of a CloudEvent; field names on the wire are camelCase.

The data carries what a downstream service needs without asking the platform again.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas.webhook import MAX_ID_CHARS, MAX_TIMESTAMP_CHARS, Number
from schemas.xapi import ExamResultStatement


class EventData(BaseModel):
    """Base of every derived event's data: camelCase on the wire, immutable, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True, extra="forbid"
    )
    # The CloudEvents `type` of events carrying this data.
    event_type: ClassVar[str]


class Learner(EventData):
    """The learner the result belongs to. Personal data: handle under your data-protection rules."""

    id: str = Field(
        max_length=MAX_ID_CHARS, description="The platform's user id; also the Kafka key of every event."
    )
    name: str = Field(description="Full name as held by the platform.")
    email: str = Field(description="E-mail address as held by the platform.")
    sub_portal_id: str | None = Field(
        max_length=MAX_ID_CHARS, description="Sub-portal of the learner, when the portal has them."
    )


class ExamInfo(EventData):
    """The exam the attempt counts towards."""

    id: str = Field(max_length=MAX_ID_CHARS, description="Exam id.")
    name: str = Field(description="Exam name.")
    group_id: str = Field(max_length=MAX_ID_CHARS, description="The exam group (exam.attr['exam-group-id']).")
    weight: Number = Field(description="Weight of the exam in its qualification (exam.attr['exam-weight']).")
    qualification: str = Field(description="Qualification name (exam.attr['qualification_name']).")
    cohort: str = Field(description="Cohort number (exam.attr['cohort_number']).")


class TestInfo(EventData):
    """The test that was sat."""

    __test__ = False  # not a pytest test class, despite its name

    id: str = Field(max_length=MAX_ID_CHARS, description="Test id.")
    title: str = Field(description="Test title.")


class AttemptInfo(EventData):
    """The attempt whose results were released. Score fields are null when the grade is withheld."""

    id: str = Field(max_length=MAX_ID_CHARS, description="Attempt id; also the CloudEvents subject.")
    resit_count: int = Field(description="How many resits preceded this attempt (attempt.resitCount).")
    time_completed: str = Field(
        max_length=MAX_TIMESTAMP_CHARS, description="When the learner completed the attempt (RFC 3339)."
    )
    score: Number | None = Field(description="Score in percent; null when the grade is withheld.")
    score_frac: Number | None = Field(
        description="Score as a fraction 0..1; null when the grade is withheld."
    )
    points: Number | None = Field(description="Points scored; null when the grade is withheld.")
    max_points: Number = Field(description="Points available.")


class GradeInfo(EventData):
    """The grade awarded."""

    label: str = Field(description="Grade label, per exam (e.g. Fail, Pass, Merit, Distinction).")
    min_score: Number = Field(description="Lowest score in percent that earns this grade.")


class SourceCoordinates(EventData):
    """Where the webhook that produced this event lies on the raw topic."""

    topic: str = Field(description="Raw webhook topic.")
    partition: int = Field(description="Partition of the raw record.")
    offset: int = Field(description="Offset of the raw record.")


class ResultContext(EventData):
    """Fields every derived event carries."""

    learner: Learner = Field(description="Who sat the attempt (personal data).")
    portal_id: str = Field(max_length=MAX_ID_CHARS, description="Portal (customer) id.")
    exam: ExamInfo = Field(description="The exam, with its weight, qualification and cohort.")
    test: TestInfo = Field(description="The test taken in this attempt.")
    attempt: AttemptInfo = Field(description="The attempt: id, resits, completion time and score.")
    passed: bool = Field(description="Whether the attempt's grade is a pass.")
    grade: GradeInfo | None = Field(description="The grade; null when the exam withholds grades.")
    grade_withheld: bool = Field(
        description="True when the exam does not publish grades (exam.attr['publish-exam-grade'] is "
        "false): grade, score, scoreFrac and points are then null."
    )
    released_at: str = Field(
        max_length=MAX_TIMESTAMP_CHARS,
        description="When the results were released (RFC 3339); the CloudEvents time.",
    )
    source: SourceCoordinates = Field(description="Where the source webhook lies on the raw topic.")


class ExamPassed(ResultContext):
    """A learner passed an exam."""

    event_type: ClassVar[str] = "exam.result.passed"


class ExamFailed(ResultContext):
    """A learner failed an exam."""

    event_type: ClassVar[str] = "exam.result.failed"


class ResitAvailable(ResultContext):
    """A learner failed and may resit the exam."""

    event_type: ClassVar[str] = "exam.resit.available"

    max_resits: int = Field(description="Resits allowed after a failed attempt.")
    resits_remaining: int = Field(description="Resits the learner may still take (at least 1).")


class ResitExhausted(ResultContext):
    """A learner failed and has no resits left."""

    event_type: ClassVar[str] = "exam.resit.exhausted"

    max_resits: int = Field(description="Resits allowed after a failed attempt.")


class ResitPassed(ResultContext):
    """A learner passed an exam on a resit."""

    event_type: ClassVar[str] = "exam.resit.passed"


class ValueChange(EventData):
    """One overridden quantity."""

    old_value: Number | None = Field(description="The value before the override.")
    new_value: Number | None = Field(description="The value after the override.")
    is_original: bool = Field(description="Whether the value is still the one originally marked.")


class ScoreOverridden(EventData):
    """A marker overrode an attempt's score, points, credits or penalties (`attemptOverride.created`)."""

    event_type: ClassVar[str] = "exam.score.overridden"

    learner_id: str = Field(
        max_length=MAX_ID_CHARS,
        description="The attempt's learner (attempt.user, else user.id); also the Kafka key.",
    )
    portal_id: str = Field(max_length=MAX_ID_CHARS, description="Portal (customer) id.")
    exam_id: str = Field(max_length=MAX_ID_CHARS, description="Exam id.")
    attempt_id: str = Field(max_length=MAX_ID_CHARS, description="Attempt id; also the CloudEvents subject.")
    action_type: str = Field(description="The platform's kind of override (actionType), as sent.")
    score: ValueChange = Field(description="Score in percent, before and after.")
    points: ValueChange = Field(description="Points, before and after.")
    credits: ValueChange = Field(description="Credits, before and after.")
    penalties: ValueChange = Field(description="Penalties, before and after.")
    overridden_at: str = Field(
        max_length=MAX_TIMESTAMP_CHARS,
        description="When the override was made (meta.timestamp); the CloudEvents time.",
    )
    source: SourceCoordinates = Field(description="Where the source webhook lies on the raw topic.")


class AttemptExam(EventData):
    """The exam an attempt belongs to, when the webhook names one."""

    id: str = Field(max_length=MAX_ID_CHARS, description="Exam id.")
    name: str | None = Field(description="Exam name, when sent.")


class ReportedAttemptInfo(EventData):
    """The attempt and its times."""

    id: str = Field(max_length=MAX_ID_CHARS, description="Attempt id; also the CloudEvents subject.")
    status: str | None = Field(description="The attempt's status (attempt.status), as sent.")
    exam_status: str | None = Field(description="The exam status (attempt.examStatus), as sent.")
    resit_count: int | None = Field(description="How many resits preceded this attempt, when sent.")
    time_started: str = Field(description="When the learner started (RFC 3339).")
    time_completed: str = Field(
        max_length=MAX_TIMESTAMP_CHARS, description="When the learner completed or submitted (RFC 3339)."
    )
    time_spent_in_ms: int = Field(description="Time spent on the attempt, in milliseconds.")


class MarkingInfo(EventData):
    """Where marking stands."""

    status: str = Field(
        description="Marking status (attempt.state.results.markingStatus), an open set: notStarted, "
        "pending, completed, released, ..."
    )
    pending_marks: int | None = Field(description="Marks still to award, when sent.")
    done: bool = Field(
        description="True when the webhook carries the marks (the platform sends them "
        "only once marking is done); `marks` is then set."
    )


class MarksInfo(EventData):
    """The marks awarded, once marking is done."""

    points: Number = Field(description="Points scored.")
    max_points: Number = Field(description="Points available.")
    credits: Number = Field(description="Credits added.")
    penalties: Number = Field(description="Penalties deducted.")
    score: Number | None = Field(description="Score in percent, when sent.")
    score_frac: Number | None = Field(description="Score as a fraction 0..1, when sent.")


class AttemptContext(EventData):
    """Fields of every attempt event."""

    learner: Learner = Field(description="Who sat the attempt (personal data).")
    portal_id: str = Field(max_length=MAX_ID_CHARS, description="Portal (customer) id.")
    is_exam: bool = Field(description="True for an exam, false for another test (attempt.isExam).")
    exam: AttemptExam | None = Field(description="The exam, when the webhook names one.")
    test: TestInfo | None = Field(description="The test taken, when the webhook names it.")
    attempt: ReportedAttemptInfo = Field(description="The attempt: id, statuses and times.")
    marking: MarkingInfo = Field(description="Marking status.")
    marks: MarksInfo | None = Field(description="The marks; null until marking is done.")
    reported_at: str = Field(
        max_length=MAX_TIMESTAMP_CHARS,
        description="When the platform reported it (meta.timestamp); the CloudEvents time.",
    )
    source: SourceCoordinates = Field(description="Where the source webhook lies on the raw topic.")


class AttemptSubmitted(AttemptContext):
    """A learner submitted an attempt (`exam.submitted`, `attempt.submitted`)."""

    event_type: ClassVar[str] = "exam.attempt.submitted"


class AttemptCompleted(AttemptContext):
    """An attempt was completed (`exam.completed`, `attempt.completed`)."""

    event_type: ClassVar[str] = "exam.attempt.completed"


class RegisteredLearner(EventData):
    """The learner registered. Personal data: handle under your data-protection rules."""

    id: str = Field(max_length=MAX_ID_CHARS, description="The platform's user id; also the Kafka key.")
    name: str | None = Field(description="Full name as held by the platform, when sent.")
    email: str | None = Field(description="E-mail address as held by the platform, when sent.")
    sub_portal_id: str | None = Field(
        max_length=MAX_ID_CHARS, description="Sub-portal of the learner, when the portal has them."
    )


class ScheduleInfo(EventData):
    """The window in which the exam can be sat."""

    open_date: str | None = Field(description="When the exam opens (RFC 3339), when scheduled.")
    close_date: str | None = Field(description="When the exam closes (RFC 3339), when scheduled.")


class RegisteredExamInfo(EventData):
    """The exam registered for."""

    id: str = Field(max_length=MAX_ID_CHARS, description="Exam id (exam.objectId).")
    name: str = Field(description="Exam name.")
    url: str = Field(description="The exam's URL on the platform.")
    schedule: ScheduleInfo = Field(description="When the exam opens and closes.")


class UserGroupInfo(EventData):
    """The user group the registration came through."""

    id: str = Field(max_length=MAX_ID_CHARS, description="User group id (userGroup.objectId).")
    name: str = Field(description="User group name.")


class RegistrationCreated(EventData):
    """A learner was registered for an exam (`user.registeredForExam`)."""

    event_type: ClassVar[str] = "exam.registration.created"

    learner: RegisteredLearner = Field(description="Who was registered (personal data).")
    portal_id: str = Field(max_length=MAX_ID_CHARS, description="Portal (customer) id.")
    exam: RegisteredExamInfo = Field(description="The exam: id, name, URL and schedule.")
    user_group: UserGroupInfo | None = Field(description="The user group, when sent.")
    registered_at: str = Field(
        max_length=MAX_TIMESTAMP_CHARS,
        description="When the registration was made (meta.timestamp); the CloudEvents time.",
    )
    source: SourceCoordinates = Field(description="Where the source webhook lies on the raw topic.")


# Every event type the consumer publishes (the xAPI statement's data is no EventData: xAPI names it).
DERIVED_EVENT_MODELS: tuple[type[EventData | ExamResultStatement], ...] = (
    ExamPassed,
    ExamFailed,
    ResitAvailable,
    ResitExhausted,
    ResitPassed,
    ScoreOverridden,
    AttemptSubmitted,
    AttemptCompleted,
    RegistrationCreated,
    ExamResultStatement,
)
