"""The exam platform's "Exam Results Released" webhook body, field for field as specified.

Python names are snake_case; the wire names (camelCase, and the hyphenated `exam.attr` keys) are
aliases. Unknown extra fields are accepted and kept, so a body round-trips unchanged: the platform
adds fields without notice, and that must never be a reason to reject a webhook.
Timestamps stay strings, exactly as sent, so derived events can quote them unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel

CustomAttributeValue = str | int | float | bool | None
# Integers stay integers (40, not 40.0) so that values are quoted downstream as the platform sent them.
Number = int | float

# Identifiers are bounded: each becomes a Kafka key, a CloudEvents subject, part of an event id or
# a field of every derived record, and one of 540 KB would make those records too large for their
# topics. The platform's ids are short tokens (`usr_8f2c1a7e`); a longer one is a validation
# error, and the webhook is dead-lettered with the field's name (never its value).
MAX_ID_CHARS = 255
Id = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]
# Timestamps that become the CloudEvents `time` or part of an event id: RFC 3339 with nanoseconds
# and an offset is 35 characters.
MAX_TIMESTAMP_CHARS = 64
TimestampText = Annotated[str, StringConstraints(max_length=MAX_TIMESTAMP_CHARS)]


class WireModel(BaseModel):
    """Base of every webhook block: camelCase on the wire, extra fields kept."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="allow"
    )


class User(WireModel):
    id: Id
    name: str
    email: str
    sub_portal_id: Id | None = None
    custom_attributes: dict[str, CustomAttributeValue]


class Portal(WireModel):
    id: Id


class Meta(WireModel):
    # The event's name is `eventName` only, as routing reads it (handlers/routing.py): a body whose
    # meta says `event_name` must not be taken for one that names its event.
    model_config = ConfigDict(validate_by_name=False)

    timestamp: TimestampText
    event_name: str


class Grade(WireModel):
    label: str
    is_pass: bool
    min_score: Number


class GradeCriteria(WireModel):
    grades: list[Grade]


class Instructions(WireModel):
    is_unlocked: bool
    did_progress: bool
    time_started: str
    time_completed: str
    time_spent_in_ms: int


class Results(WireModel):
    marking_status: str  # an open set: notStarted, pending, released, ...
    pending_marks: int
    status: str


class Deferred(WireModel):
    locked: bool


class AttemptState(WireModel):
    response_question_map: list[list[str]]
    is_revoked: bool
    is_started: bool
    instructions: Instructions | None = None
    time_started: str
    time_completed: str
    time_spent_in_ms: int
    results: Results
    deferred: Deferred


class Marks(WireModel):
    max_points: Number
    credits: Number
    penalties: Number
    points: Number


class Tags(WireModel):
    non_facet_tags: list[str]
    context: list[str]
    skill: list[str]
    difficulty: list[str]
    subtopic: list[str]
    topic: list[str]
    subject: list[str]
    module: list[str]
    exam: list[str]


class Reference(WireModel):
    id: Id


class Audit(WireModel):
    finalised_by: str
    finalised_at: str
    released_by: str
    released_at: TimestampText

    @field_validator("released_at")
    @classmethod
    def _released_at_is_a_timestamp(cls, value: str) -> str:
        # It becomes the CloudEvents `time` and part of every event id: it must be a real instant.
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 timestamp") from None  # the value stays out of error logs
        return value


class Attempt(WireModel):
    score: Number
    score_frac: Number
    total_answered_correctly: int
    grade: Grade
    grade_criteria: GradeCriteria
    id: Id
    is_exam: bool
    state: AttemptState
    marks: Marks
    total_questions: int
    tags: Tags
    total_answered: int
    time_started: str
    time_completed: TimestampText
    time_spent_in_ms: int
    status: str
    exam_status: str
    proctor_status: str | None
    assigned_moderating_markers: list[Reference]
    marker: Reference
    audit: Audit
    resit_count: int = Field(ge=0)


class Test(WireModel):
    __test__ = False  # not a pytest test class, despite its name

    id: Id
    title: str


class ExamAttributes(WireModel):
    """The portal's free-form exam attributes; these keys are the ones this customer uses."""

    exam_weight: Number = Field(alias="exam-weight")
    exam_group_id: Id = Field(alias="exam-group-id")
    publish_exam_grade: bool = Field(alias="publish-exam-grade")
    plagiarism_checker_enabled: bool = Field(alias="plagiarism-checker-enabled")
    scoring_model: str = Field(alias="scoring-model")
    qualification_name: str = Field(alias="qualification_name")
    cohort_number: str = Field(alias="cohort_number")


class UserGroup(WireModel):
    id: Id
    name: str


class Exam(WireModel):
    id: Id
    name: str
    attr: ExamAttributes
    resit_count: int
    source_tests: list[str]
    user_group: UserGroup


class ExamResultsReleased(WireModel):
    """Body of the "Exam Results Released" webhook: a learner's exam results were released."""

    user: User
    portal: Portal
    meta: Meta
    attempt: Attempt
    test: Test
    id: Id
    time_started: str
    time_completed: str
    time_spent_in_ms: int
    exam: Exam
