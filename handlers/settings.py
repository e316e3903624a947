"""Settings of the business rules: which event names mean what, and how many resits are allowed."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A reserved name (RFC 2606) that no real platform has: statements made with it identify nobody.
PLACEHOLDER_HOME_PAGE = "https://exam-platform.invalid"


class RulesSettings(BaseSettings):
    """Rules for deriving events (environment variables without prefix, e.g. `MAX_RESITS`)."""

    model_config = SettingsConfigDict(extra="ignore")

    results_released_event_names: Annotated[tuple[str, ...], NoDecode] = Field(
        ("exam.resultsReleased",),
        description="Comma-separated meta.eventName values that mean Exam Results Released.",
    )
    max_resits: int = Field(2, ge=0, description="Resits a learner may take after a failed attempt.")
    ce_source: str = Field(
        "urn:exam-events",
        description="Prefix of the CloudEvents source; the portal id is appended (`<prefix>:portal:<id>`).",
    )
    xapi_account_home_page: str = Field(
        PLACEHOLDER_HOME_PAGE,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="xAPI statements: the exam platform's home page, the `homePage` of each learner's "
        "account (with the user id as `name`) and the base of the exams' activity IRIs "
        "(`<homePage>/exams/<exam id>`). Set it: the default is a reserved `.invalid` name.",
    )

    @field_validator("results_released_event_names", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("results_released_event_names")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("RESULTS_RELEASED_EVENT_NAMES needs at least one event name")
        return value
