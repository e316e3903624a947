"""Handlers: pure functions from a decoded webhook to derived events, and the routing table.

THE ROUTING TABLE is `build_routing_table` below: event name (`meta.eventName`, else the
subscription's `event-name` header) -> (model, handler). Any other name is unrouted.
"""

from __future__ import annotations

from functools import partial

from common.settings import InvalidSettings
from handlers.attempts import derive_attempt_event
from handlers.registrations import derive_registration_created
from handlers.results_released import derive_result_events
from handlers.routing import (
    Handled,
    HandlerOutput,
    Invalid,
    Route,
    RoutingResult,
    RoutingTable,
    SourceRecord,
    Unrouted,
    route_webhook,
)
from handlers.score_overridden import derive_score_overridden
from handlers.settings import RulesSettings
from schemas.derived import AttemptCompleted, AttemptSubmitted
from schemas.platform import AttemptOverrideCreated, AttemptReported, UserRegisteredForExam
from schemas.webhook import ExamResultsReleased

__all__ = [
    "Handled",
    "HandlerOutput",
    "Invalid",
    "Route",
    "RoutingResult",
    "RoutingTable",
    "RulesSettings",
    "SourceRecord",
    "Unrouted",
    "build_routing_table",
    "route_webhook",
]


def build_routing_table(rules: RulesSettings) -> RoutingTable:
    """Map every event name we handle to its model and handler; anything else is unrouted."""
    results_released = Route(ExamResultsReleased, partial(derive_result_events, rules=rules))
    submitted = Route(AttemptReported, partial(derive_attempt_event, model=AttemptSubmitted, rules=rules))
    completed = Route(AttemptReported, partial(derive_attempt_event, model=AttemptCompleted, rules=rules))
    table: dict[str, Route] = {
        "attemptOverride.created": Route(
            AttemptOverrideCreated, partial(derive_score_overridden, rules=rules)
        ),
        # exam.* for exams only, attempt.* for every test: the events carry isExam to tell them apart.
        "exam.submitted": submitted,
        "attempt.submitted": submitted,
        "exam.completed": completed,
        "attempt.completed": completed,
        "user.registeredForExam": Route(
            UserRegisteredForExam, partial(derive_registration_created, rules=rules)
        ),
    }
    taken = set(table) & set(rules.results_released_event_names)
    if taken:
        # One name, one handler: the results-released rules must not silently take another event's name.
        raise InvalidSettings(
            f"RESULTS_RELEASED_EVENT_NAMES names events that other handlers take: {', '.join(sorted(taken))}"
        )
    return table | dict.fromkeys(rules.results_released_event_names, results_released)
