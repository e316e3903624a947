"""Handlers: pure functions from a decoded webhook to derived events, and the routing table.

THE ROUTING TABLE is `build_routing_table` below: `meta.eventName` -> (model, handler).
"""

from __future__ import annotations

from functools import partial

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
from handlers.settings import RulesSettings
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
    return dict.fromkeys(rules.results_released_event_names, results_released)
