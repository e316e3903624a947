"""xAPI 1.0.3 statements of exam results, as the consumer publishes them for learning-record stores.

Only what a passed or failed assessment needs (docs/xapi.md maps every field): an account actor
(never a name or an e-mail), the ADL verb, the exam as an assessment Activity, the result and the
time of release. Properties without a value are left out rather than sent as `null`, which xAPI
does not allow.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

XAPI_VERSION = "1.0.3"
VERB_PASSED = "http://adlnet.gov/expapi/verbs/passed"
VERB_FAILED = "http://adlnet.gov/expapi/verbs/failed"
ASSESSMENT = "http://adlnet.gov/expapi/activities/assessment"


def _absent(value: Any) -> bool:
    return value is None


def left_out_when_none(description: str) -> Any:
    """A property that is left out of the statement when it has no value."""
    return Field(None, exclude_if=_absent, description=description)


class XapiObject(BaseModel):
    """Base of every part of a statement: xAPI's camelCase names, immutable, nothing unknown."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True, extra="forbid"
    )


class Account(XapiObject):
    """The learner's account on the platform: xAPI's inverse functional identifier without personal data."""

    home_page: str = Field(description="The platform's home page (XAPI_ACCOUNT_HOME_PAGE).")
    name: str = Field(description="The platform's user id.")


class Agent(XapiObject):
    """The learner, identified by the account only."""

    object_type: Literal["Agent"] = Field("Agent", description="Always Agent.")
    account: Account = Field(description="The learner's platform account.")


class Verb(XapiObject):
    """ADL's passed or failed."""

    id: str = Field(description=f"{VERB_PASSED} or {VERB_FAILED}.")
    display: dict[str, str] = Field(description='{"en-US": "passed"} or {"en-US": "failed"}.')


class ActivityDefinition(XapiObject):
    """The exam as an assessment."""

    type: str = Field(ASSESSMENT, description="Always ADL's assessment activity type.")
    name: dict[str, str] = Field(description='The exam\'s name, as {"und": name} (its language is unknown).')


class Activity(XapiObject):
    """The exam."""

    object_type: Literal["Activity"] = Field("Activity", description="Always Activity.")
    id: str = Field(description="The exam's IRI: <homePage>/exams/<exam id>.")
    definition: ActivityDefinition = Field(description="The exam's name and activity type.")


class Score(XapiObject):
    """The score, when the exam publishes it."""

    scaled: float = Field(ge=-1, le=1, description="scoreFrac, 0..1 (xAPI allows -1..1).")
    raw: float | None = left_out_when_none("Points scored (marks.points), when within min..max.")
    min: float | None = left_out_when_none("0, when raw is given.")
    max: float | None = left_out_when_none("Points available (marks.maxPoints), when raw is given.")


class Result(XapiObject):
    """The outcome; no `completion` (cmi5: passed and failed statements carry none)."""

    success: bool = Field(description="True for passed, false for failed.")
    score: Score | None = left_out_when_none("Left out when the exam withholds grades.")
    duration: str | None = left_out_when_none(
        "Time spent on the attempt (timeSpentInMs), ISO 8601, e.g. PT1H41M37S."
    )


class ExamResultStatement(XapiObject):
    """One xAPI 1.0.3 statement: a learner passed or failed an exam."""

    # The type of the CloudEvent whose data (the Kafka record's value) is this statement.
    event_type: ClassVar[str] = "exam.xapi.statement"

    id: str = Field(description="A UUID derived (v5) from the ce_id of the exam.result.passed/failed event.")
    actor: Agent = Field(description="The learner, by platform account only.")
    verb: Verb = Field(description="passed or failed (ADL verbs).")
    object_: Activity = Field(alias="object", description="The exam, as an assessment Activity.")
    result: Result = Field(description="Success, score and duration.")
    timestamp: str = Field(description="When the results were released (releasedAt).")
