"""Decode a raw webhook body and send it to the handler registered for its `meta.eventName` (or,
for a body without one, the event name of the subscription URL it was posted to).

The routing table itself is built in `handlers/__init__.py` (`build_routing_table`): one dict from
event name to handler, visible in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from common.json_numbers import NON_FINITE_REASON, holds_non_finite, may_hold_non_finite
from schemas.cloudevents import DerivedEvent


class SourceRecord(NamedTuple):
    """Where a webhook body was read from: its coordinates on the raw topic.

    Immutable, and built per record: a named tuple costs a third of a frozen dataclass.
    """

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class HandlerOutput:
    """What a handler derived: events to publish, or none with the reason why (e.g. "revoked")."""

    events: tuple[DerivedEvent, ...]
    skipped_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A handler and the pydantic model its webhook is decoded with."""

    model: type[BaseModel]
    handler: Callable[[Any, SourceRecord], HandlerOutput]


RoutingTable = Mapping[str, Route]


@dataclass(frozen=True, slots=True)
class Handled:
    """The webhook was decoded and handled; publish `output.events`."""

    event_name: str
    output: HandlerOutput


@dataclass(frozen=True, slots=True)
class Unrouted:
    """Valid JSON that no handler answers to: it goes to the unrouted topic unchanged."""

    event_name: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Not JSON, or a known event that fails validation: it goes to the dead-letter topic."""

    event_name: str | None
    error_type: str  # "InvalidJson" (a non-finite number too) or "ValidationError"
    message: str


RoutingResult = Handled | Unrouted | Invalid


def route_webhook(
    raw: bytes, source: SourceRecord, table: RoutingTable, subscribed_name: str | None = None
) -> RoutingResult:
    """Decode `raw`, find its handler by `meta.eventName`, else by `subscribed_name` (the record's
    `event-name` header from `POST /webhooks/{eventName}`), and run it. Never raises for bad input.

    The body wins when both name an event: it is the platform's own word, the path is our configuration.
    """
    handled = _route_by_peek(raw, source, table)
    if handled is not None:
        return handled
    return route_by_parsing(raw, source, table, subscribed_name)


def route_by_parsing(
    raw: bytes, source: SourceRecord, table: RoutingTable, subscribed_name: str | None = None
) -> RoutingResult:
    """`route_webhook`'s full path: parse the body, read its event name, validate the parsed body."""
    try:
        # One parse, then validation of the parsed value: pydantic-core's parser is faster than json's.
        body = from_json(raw)
    except ValueError as exc:
        return Invalid(None, "InvalidJson", f"body is not JSON: {exc}"[:500])
    meta = body.get("meta") if isinstance(body, dict) else None
    event_name = meta.get("eventName") if isinstance(meta, dict) else None
    if may_hold_non_finite(raw) and holds_non_finite(body):
        # The ingress refuses these (400); one that came another way is dead-lettered, routable or not.
        named = event_name if isinstance(event_name, str) and event_name else subscribed_name
        return Invalid(named, "InvalidJson", NON_FINITE_INVALID)
    if isinstance(event_name, str) and event_name:
        named_by = "meta.eventName"
    elif subscribed_name:
        event_name, named_by = subscribed_name, "event-name header"
    else:
        return Unrouted(None, "body has no meta.eventName and the record no event-name header")
    route = table.get(event_name)
    if route is None:
        return Unrouted(event_name, f"no handler for {named_by} {event_name!r}")
    try:
        webhook = route.model.model_validate(body)
    except ValidationError as exc:
        # include_input=False: the message names fields, never a learner's values.
        summary = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        return Invalid(event_name, "ValidationError", f"{exc.error_count()} error(s): {summary}"[:1000])
    return Handled(event_name, route.handler(webhook, source))


NON_FINITE_INVALID = f"body is not JSON: {NON_FINITE_REASON} (NaN, Infinity or past a double's range)"

# The first `"eventName": "<name without escapes>"` of a body: a guess at meta.eventName without
# parsing the body. The guess is confirmed by the model that validates the body.
_EVENT_NAME = re.compile(rb'"eventName"\s*:\s*"([^"\\]{1,256})"')


def _route_by_peek(raw: bytes, source: SourceRecord, table: RoutingTable) -> Handled | None:
    """The common case at half the cost of parsing and then validating: the name peeked from the raw
    bytes has a handler, its model validates the bytes straight away, and the validated
    meta.eventName is the peeked one. Anything else (None) takes `route_webhook`'s full path, which
    (`route_by_parsing`) then gives the same result as if this had not been tried."""
    match = _EVENT_NAME.search(raw)
    if match is None or may_hold_non_finite(raw):  # the model would take NaN and 1e999 as floats
        return None
    try:
        event_name = match.group(1).decode()
    except UnicodeDecodeError:
        return None
    route = table.get(event_name)
    if route is None:
        return None
    try:
        webhook = route.model.model_validate_json(raw)
    except ValidationError:
        return None
    meta = getattr(webhook, "meta", None)
    if getattr(meta, "event_name", None) != event_name:  # the peek found another object's eventName
        return None
    return Handled(event_name, route.handler(webhook, source))
