"""Routing by meta.eventName: every body takes an explicit path."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from common.settings import InvalidSettings
from handlers import (
    Handled,
    HandlerOutput,
    Invalid,
    Route,
    RulesSettings,
    SourceRecord,
    Unrouted,
    build_routing_table,
    route_webhook,
)
from handlers.routing import route_by_parsing
from schemas.webhook import ExamResultsReleased
from tests.support.webhooks import encode, platform_body, results_released

SOURCE = SourceRecord("exam.webhooks.raw", 0, 0)
TABLE = build_routing_table(RulesSettings())


def test_every_configured_results_released_name_has_a_route() -> None:
    rules = RulesSettings.model_validate(
        {"results_released_event_names": "exam.resultsReleased, exam.results_released"}
    )
    table = build_routing_table(rules)
    assert {name for name, route in table.items() if route.model is ExamResultsReleased} == {
        "exam.resultsReleased",
        "exam.results_released",
    }


def test_every_event_name_of_the_issue_has_a_route_and_the_others_of_the_platform_do_not() -> None:
    assert set(TABLE) == {
        "exam.resultsReleased",
        "attemptOverride.created",
        "exam.submitted",
        "attempt.submitted",
        "exam.completed",
        "attempt.completed",
        "user.registeredForExam",
    }
    for name in [
        "user.registered",
        "user.updated",
        "user.addedToGroup",
        "assignment.completed",
        "flag.planted",
    ]:
        assert isinstance(route_webhook(b'{"user": {"id": "u1"}}', SOURCE, TABLE, name), Unrouted)


def test_a_results_released_name_that_another_handler_takes_is_refused() -> None:
    with pytest.raises(InvalidSettings, match=r"RESULTS_RELEASED_EVENT_NAMES .*: exam\.completed"):
        build_routing_table(RulesSettings(results_released_event_names=("exam.completed",)))


def test_event_names_are_read_from_the_environment_as_a_comma_separated_list(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RESULTS_RELEASED_EVENT_NAMES", "a.b,c.d")
    assert RulesSettings().results_released_event_names == ("a.b", "c.d")


def test_a_results_released_body_is_handled() -> None:
    assert isinstance(route_webhook(encode(results_released()), SOURCE, TABLE), Handled)


def test_a_body_under_an_alternative_configured_name_is_handled() -> None:
    table = build_routing_table(RulesSettings(results_released_event_names=("exam.released",)))
    body = encode(results_released(event_name="exam.released"))
    assert isinstance(route_webhook(body, SOURCE, table), Handled)


def test_an_unknown_event_name_is_unrouted() -> None:
    result = route_webhook(encode(results_released(event_name="user.registered")), SOURCE, TABLE)
    assert result == Unrouted("user.registered", "no handler for meta.eventName 'user.registered'")


def test_a_body_without_event_name_is_unrouted() -> None:
    body = results_released()
    del body["meta"]["eventName"]
    result = route_webhook(encode(body), SOURCE, TABLE)
    assert isinstance(result, Unrouted)
    assert result.event_name is None


def test_a_json_value_that_is_not_an_object_is_unrouted() -> None:
    assert isinstance(route_webhook(b"[1, 2]", SOURCE, TABLE), Unrouted)


def test_a_body_that_is_not_json_is_invalid() -> None:
    result = route_webhook(b"\xff{not json", SOURCE, TABLE)
    assert isinstance(result, Invalid)
    assert result.error_type == "InvalidJson"


def test_a_known_event_that_fails_validation_is_invalid_and_names_the_field_not_the_values() -> None:
    body = results_released()
    body["attempt"]["grade"]["isPass"] = "perhaps"
    body["user"]["email"] = 12345
    result = route_webhook(encode(body), SOURCE, TABLE)
    assert isinstance(result, Invalid)
    assert result.error_type == "ValidationError"
    assert result.event_name == "exam.resultsReleased"
    assert "attempt.grade.isPass" in result.message
    assert "user.email" in result.message
    assert "perhaps" not in result.message
    assert "12345" not in result.message


class Registration(BaseModel):
    """A stand-in for an event whose bodies carry no meta.eventName."""

    user: dict[str, str]


def _no_events(webhook: Registration, source: SourceRecord) -> HandlerOutput:
    return HandlerOutput(events=(), skipped_reason=webhook.user["id"])


def test_a_body_without_meta_event_name_is_routed_by_the_subscription_event_name() -> None:
    table = {**TABLE, "user.registeredForExam": Route(Registration, _no_events)}
    result = route_webhook(b'{"user": {"id": "u1"}}', SOURCE, table, "user.registeredForExam")
    assert result == Handled("user.registeredForExam", HandlerOutput(events=(), skipped_reason="u1"))


def test_meta_event_name_wins_over_the_subscription_event_name() -> None:
    body = encode(results_released(event_name="exam.resultsReleased"))
    result = route_webhook(body, SOURCE, TABLE, "user.updated")
    assert isinstance(result, Handled)
    assert result.event_name == "exam.resultsReleased"


def test_an_unknown_subscription_event_name_is_unrouted_and_says_where_the_name_came_from() -> None:
    result = route_webhook(b'{"user": {"id": "u1"}}', SOURCE, TABLE, "user.updated")
    assert result == Unrouted("user.updated", "no handler for event-name header 'user.updated'")


def test_a_body_with_neither_name_is_unrouted() -> None:
    result = route_webhook(b'{"user": {"id": "u1"}}', SOURCE, TABLE, None)
    assert result == Unrouted(None, "body has no meta.eventName and the record no event-name header")


def test_a_known_subscription_event_name_with_a_body_of_another_shape_is_invalid() -> None:
    result = route_webhook(b'{"user": {"id": "u1"}}', SOURCE, TABLE, "exam.resultsReleased")
    assert isinstance(result, Invalid)
    assert result.error_type == "ValidationError"


# route_webhook first tries the common case straight from the bytes (the event name peeked, the body
# validated from JSON); whatever the body, it must come out as the full path (route_by_parsing) has it.


def both_paths(raw: bytes, subscribed: str | None = None) -> tuple[object, object]:
    return route_webhook(raw, SOURCE, TABLE, subscribed), route_by_parsing(raw, SOURCE, TABLE, subscribed)


def with_platform_bodies() -> list[bytes]:
    names = ("attempt-override-created", "exam-submitted", "exam-completed", "attempt-submitted")
    return [encode(results_released(passed=p)) for p in (True, False)] + [
        encode(platform_body(name)) for name in names
    ]


@pytest.mark.parametrize("raw", with_platform_bodies())
def test_a_handled_body_comes_out_of_the_peek_as_out_of_the_full_path(raw: bytes) -> None:
    fast, full = both_paths(raw)
    assert isinstance(fast, Handled)
    assert fast == full


def test_an_event_name_in_another_object_before_meta_does_not_misroute_the_body() -> None:
    body = results_released()
    body = {"user": body["user"] | {"customAttributes": {"eventName": "exam.completed"}}, **body}
    fast, full = both_paths(encode(body))
    assert isinstance(fast, Handled)
    assert fast.event_name == "exam.resultsReleased"
    assert fast == full


@pytest.mark.parametrize(
    "raw",
    [
        encode(results_released() | {"attempt": {"id": 1}}),  # a known event that fails validation
        encode(results_released(event_name="exam.results\\u0052eleased")),  # an escape the peek skips
        encode(results_released(event_name="user.updated")),  # no handler
        b'{"meta": {"eventName": "exam.resultsReleased"}, "attempt": ',  # not JSON
        b'{"meta": {"eventName": "exam.resultsReleased"}}{"x": 1}',  # trailing data
        b'["meta", {"eventName": "exam.resultsReleased"}]',  # not an object
    ],
)
def test_a_body_the_peek_cannot_take_comes_out_as_out_of_the_full_path(raw: bytes) -> None:
    fast, full = both_paths(raw)
    assert fast == full


def test_a_conflicting_subscription_name_comes_out_as_out_of_the_full_path() -> None:
    fast, full = both_paths(encode(results_released()), "exam.completed")
    assert isinstance(fast, Handled)
    assert fast == full


def test_a_meta_that_says_event_name_in_snake_case_names_no_event_on_either_path() -> None:
    body = platform_body("exam-completed")
    body["meta"] = {"timestamp": body["meta"]["timestamp"], "event_name": "exam.completed"}
    body["user"]["customAttributes"] = {"eventName": "exam.completed"}
    for subscribed in (None, "exam.submitted"):
        fast, full = both_paths(encode(body), subscribed)
        assert fast == full
    fast, _ = both_paths(encode(body))
    assert isinstance(fast, Unrouted)


NON_FINITE = [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity"]


def with_number(literal: bytes, *, field: str = "score", event_name: str = "exam.resultsReleased") -> bytes:
    """A results-released body whose `attempt.<field>` is the given JSON number literal."""
    body = results_released(event_name=event_name)
    body["attempt"][field] = "__number__"
    return encode(body).replace(b'"__number__"', literal)


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("field", ["score", "notInTheModel"])
def test_a_body_with_a_non_finite_number_is_invalid_json_on_both_paths(literal: bytes, field: str) -> None:
    fast, full = both_paths(with_number(literal, field=field))

    assert fast == full
    assert isinstance(fast, Invalid)
    assert fast.error_type == "InvalidJson"
    assert fast.event_name == "exam.resultsReleased"
    assert "non-finite number" in fast.message


@pytest.mark.parametrize("literal", NON_FINITE)
def test_a_non_finite_number_in_a_body_no_handler_answers_to_is_invalid_not_unrouted(literal: bytes) -> None:
    result = route_webhook(with_number(literal, event_name="user.updated"), SOURCE, TABLE)

    assert isinstance(result, Invalid)
    assert result.error_type == "InvalidJson"


@pytest.mark.parametrize("literal", [b"1e308", b"-1.7976931348623157e308", b"1e-999"])
def test_a_body_with_large_finite_numbers_is_handled(literal: bytes) -> None:
    fast, full = both_paths(with_number(literal))

    assert isinstance(fast, Handled)
    assert fast == full


def test_a_webhook_with_a_540_kb_user_id_is_invalid_and_the_reason_names_the_field_not_the_value() -> None:
    raw = encode(results_released(user_id="u" * 540_000))

    fast, full = both_paths(raw)

    assert fast == full
    assert isinstance(fast, Invalid)
    assert fast.error_type == "ValidationError"
    assert fast.event_name == "exam.resultsReleased"
    assert fast.message == "1 error(s): user.id: String should have at most 255 characters"
