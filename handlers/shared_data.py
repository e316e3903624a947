"""Blocks that several derived events carry, built as they are on the wire (camelCase)."""

from __future__ import annotations

from typing import Any, Protocol


class LearnerFields(Protocol):
    """The user block of any of the platform's webhooks."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def sub_portal_id(self) -> str | None: ...


def learner_data(user: LearnerFields) -> dict[str, Any]:
    """The `learner` of an event (schemas.derived.Learner / RegisteredLearner). Personal data."""
    return {"id": user.id, "name": user.name, "email": user.email, "subPortalId": user.sub_portal_id}
