"""Logs are JSON lines or console text, never carry personal data, credentials or locals, and an
outage of the broker reads as a few counted lines instead of one per library retry."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from common.logging import (
    MAX_DEPTH,
    REDACTED,
    SUMMARY_FIELDS,
    RepeatedErrorFilter,
    configure_logging,
    redact_personal_data,
)


def crash_with_secret_locals() -> None:
    authorization = "Basic c2VjcmV0LXBhc3N3b3Jk"  # noqa: F841  # a local that must not be printed
    raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


def test_personal_data_and_credentials_are_masked_in_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", json=True)
    structlog.get_logger().info("hello", email="amara@example.org", password="pw", attempt_id="att_1")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["email"] == line["password"] == REDACTED
    assert line["attempt_id"] == "att_1"
    assert line["service"] == "test"


def test_personal_data_is_masked_in_nested_dicts_and_lists_at_any_depth_in_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("test", json=True)
    structlog.get_logger().info(
        "hello",
        webhook={"user": {"id": "u1", "name": {"first": "Amara"}, "profile": {"givenName": "Amara"}}},
        recipients=[{"email": "amara@example.org"}, ("x", {"familyName": "Okafor"})],
    )

    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert line["webhook"] == {"user": {"id": "u1", "name": REDACTED, "profile": {"givenName": REDACTED}}}
    assert line["recipients"] == [{"email": REDACTED}, ["x", {"familyName": REDACTED}]]


@pytest.mark.parametrize("key", ["Email", "EMAIL", "userName", "User-Name", "Authorization", "GIVEN_NAME"])
def test_redaction_ignores_the_case_and_separators_of_a_key_at_the_top_and_nested(key: str) -> None:
    redacted = redact_personal_data(
        None, "info", {key: "Amara", "nested": {key: "Amara"}, "attempt": "att_1"}
    )

    assert redacted == {key: REDACTED, "nested": {key: REDACTED}, "attempt": "att_1"}


def test_redaction_copies_what_it_changes_and_leaves_the_logged_objects_as_they_were() -> None:
    payload = {"user": {"email": "amara@example.org"}, "ids": ["a", "b"]}
    unchanged = {"attempt": {"id": "att_1"}}

    redacted = redact_personal_data(None, "info", {"payload": payload, "other": unchanged})

    assert payload == {"user": {"email": "amara@example.org"}, "ids": ["a", "b"]}
    assert redacted["payload"] == {"user": {"email": REDACTED}, "ids": ["a", "b"]}
    assert redacted["other"] is unchanged


def test_a_structure_deeper_than_the_limit_is_redacted_whole_rather_than_walked() -> None:
    deep: dict[str, Any] = {"id": "x"}
    for _ in range(MAX_DEPTH + 5):
        deep = {"child": deep}

    redacted = redact_personal_data(None, "info", {"deep": deep})

    node = redacted["deep"]
    for _ in range(MAX_DEPTH - 1):
        node = node["child"]
    assert node["child"] == REDACTED


@pytest.mark.parametrize("as_json", [True, False])
def test_tracebacks_are_logged_without_local_variables(
    as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test", json=as_json)
    for log in (structlog.get_logger(), logging.getLogger("library")):
        try:
            crash_with_secret_locals()
        except RuntimeError:
            log.exception("crashed")
    out = capsys.readouterr().out
    assert out.count("RuntimeError: boom") == 2  # both tracebacks are there...
    assert "c2VjcmV0" not in out  # ...without the locals of their frames
    assert "traceback object at" not in out


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Timers:
    """Wake-ups the filter asked for; a test fires them."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> bool:
        self.pending.append((delay, callback))
        return True

    def fire(self) -> None:
        pending, self.pending = self.pending, []
        for _delay, callback in pending:
            callback()


def library_error(
    msg: str = "Unable connect to node with id %s: %s",
    *args: object,
    name: str = "aiokafka",
    level: int = logging.ERROR,
    created: float = 1_764_676_800.0,
) -> logging.LogRecord:
    if not args and "%s" in msg:
        args = (1, "Connect call failed")
    record = logging.LogRecord(name, level, "client.py", 1, msg, args, None)
    record.created = created
    return record


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timers() -> Timers:
    return Timers()


@pytest.fixture
def written() -> list[logging.LogRecord]:
    return []


@pytest.fixture
def collapse(clock: FakeClock, timers: Timers, written: list[logging.LogRecord]) -> RepeatedErrorFilter:
    return RepeatedErrorFilter(written.append, remind_every=30.0, quiet=10.0, clock=clock, schedule=timers)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {"event": record.msg, "logger": record.name, **getattr(record, SUMMARY_FIELDS)}


def test_the_first_error_of_a_condition_is_written_and_its_repeats_are_only_counted(
    collapse: RepeatedErrorFilter, clock: FakeClock, written: list[logging.LogRecord]
) -> None:
    passed = []
    for _ in range(50):
        passed.append(collapse.filter(library_error()))
        clock.advance(0.1)

    assert passed == [True] + [False] * 49
    assert written == []  # no summary before the reminder interval


def test_errors_of_one_template_collapse_whatever_node_host_or_error_they_name(
    collapse: RepeatedErrorFilter,
) -> None:
    first = collapse.filter(library_error("Unable connect to node with id %s: %s", 1, "refused"))
    other_node = collapse.filter(library_error("Unable connect to node with id %s: %s", 2, "timed out"))
    other_template = collapse.filter(library_error("Failed fetch messages from %s: %s", 1, "refused"))

    assert (first, other_node, other_template) == (True, False, True)


def test_a_reminder_every_interval_says_how_many_were_suppressed_since_the_last_line(
    collapse: RepeatedErrorFilter, clock: FakeClock, written: list[logging.LogRecord]
) -> None:
    for i in range(70):  # one error a second for 70 s
        collapse.filter(library_error("Unable connect to node with id %s: %s", i % 3, "refused"))
        clock.advance(1.0)

    assert [fields(r) for r in written] == [
        {
            "event": "library_errors_repeating",
            "logger": "aiokafka",
            "condition": "Unable connect to node with id %s: %s",
            "count": 30,
            "total": 31,
            "since": "2025-12-02T12:00:00+00:00",
            "last": "Unable connect to node with id 0: refused",
        },
        {
            "event": "library_errors_repeating",
            "logger": "aiokafka",
            "condition": "Unable connect to node with id %s: %s",
            "count": 30,
            "total": 61,
            "since": "2025-12-02T12:00:00+00:00",
            "last": "Unable connect to node with id 0: refused",
        },
    ]
    assert [r.levelno for r in written] == [logging.ERROR, logging.ERROR]  # the condition's own level


def test_a_condition_has_stopped_when_none_of_its_errors_arrived_for_the_quiet_interval(
    collapse: RepeatedErrorFilter, clock: FakeClock, timers: Timers, written: list[logging.LogRecord]
) -> None:
    for second in range(5):
        collapse.filter(library_error(created=1_764_676_800.0 + second))
        clock.advance(1.0)
    clock.advance(8.0)
    timers.fire()
    assert written == []  # 9 s of silence since the last one: not yet

    clock.advance(1.0)
    timers.fire()

    [stopped] = written
    assert fields(stopped) == {
        "event": "library_errors_stopped",
        "logger": "aiokafka",
        "condition": "Unable connect to node with id %s: %s",
        "count": 4,
        "total": 5,
        "since": "2025-12-02T12:00:00+00:00",
        "until": "2025-12-02T12:00:04+00:00",
        "last": "Unable connect to node with id 1: Connect call failed",
        "quiet_seconds": 10.0,
    }
    assert stopped.levelno == logging.INFO
    assert timers.pending == []  # nothing left to watch


def test_an_error_after_the_condition_stopped_is_written_again_as_a_new_outage(
    collapse: RepeatedErrorFilter, clock: FakeClock, written: list[logging.LogRecord]
) -> None:
    collapse.filter(library_error())
    collapse.filter(library_error())
    clock.advance(10.0)

    passes = collapse.filter(library_error())

    assert passes is True
    assert [r.msg for r in written] == ["library_errors_stopped"]  # written on the next record too


def test_an_error_that_never_repeated_ends_without_a_summary(
    collapse: RepeatedErrorFilter, clock: FakeClock, timers: Timers, written: list[logging.LogRecord]
) -> None:
    collapse.filter(library_error("Sending username and password in the clear", level=logging.WARNING))
    clock.advance(10.0)
    timers.fire()

    assert written == []
    assert collapse.active == {}


def test_info_lines_of_libraries_and_warnings_of_other_loggers_are_never_collapsed(
    collapse: RepeatedErrorFilter,
) -> None:
    for _ in range(3):
        assert collapse.filter(library_error("(Re-)joining group %s", "g", level=logging.INFO))
        assert collapse.filter(library_error("a warning of ours", "x", name="exam_events.tool"))
        assert collapse.filter(library_error("aiokafkaish", "x", name="aiokafkaish"))


def test_past_the_condition_limit_new_conditions_pass_unchanged_rather_than_being_dropped(
    clock: FakeClock, timers: Timers, written: list[logging.LogRecord]
) -> None:
    collapse = RepeatedErrorFilter(written.append, clock=clock, schedule=timers, max_conditions=2)
    passed = [collapse.filter(library_error(template, 1)) for template in ("a %s", "b %s", "c %s", "c %s")]

    assert passed == [True, True, True, True]  # c is not tracked, so each of its records is written
    assert sorted(template for _logger, template in collapse.active) == ["a %s", "b %s"]


def test_without_an_event_loop_the_stopped_line_comes_with_the_next_library_warning(
    clock: FakeClock, written: list[logging.LogRecord]
) -> None:
    collapse = RepeatedErrorFilter(written.append, clock=clock)  # the real timer: no loop runs here
    collapse.filter(library_error())
    collapse.filter(library_error())
    clock.advance(10.0)

    collapse.filter(library_error("Failed fetch messages from %s: %s", 1, "refused"))

    assert [r.msg for r in written] == ["library_errors_stopped"]


def test_an_outage_of_a_library_reads_as_its_first_error_and_counted_summaries_in_json_lines(
    capsys: pytest.CaptureFixture[str], clock: FakeClock, timers: Timers
) -> None:
    configure_logging("test", json=True)
    [handler] = logging.getLogger().handlers
    [collapse] = [f for f in handler.filters if isinstance(f, RepeatedErrorFilter)]
    collapse.clock, collapse.schedule = clock, timers
    kafka, ours = logging.getLogger("aiokafka.consumer.fetcher"), structlog.get_logger("consumer")

    for node in range(100):
        kafka.error("Failed fetch messages from %s: %s", node % 3, "KafkaConnectionError")
        ours.error("batch publish failed", attempt=node)
        clock.advance(0.5)
    clock.advance(10.0)
    timers.fire()

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    library = [line for line in lines if line.get("logger") == "aiokafka.consumer.fetcher"]
    assert [line["event"] for line in library] == [
        "Failed fetch messages from 0: KafkaConnectionError",
        "library_errors_repeating",
        "library_errors_stopped",
    ]
    assert [line.get("count") for line in library] == [None, 60, 39]
    assert [line["level"] for line in library] == ["error", "error", "info"]
    assert library[2]["condition"] == "Failed fetch messages from %s: %s"
    assert sum(line["event"] == "batch publish failed" for line in lines) == 100  # ours: untouched


def test_one_wake_up_is_pending_at_a_time_and_one_that_died_with_its_loop_is_replaced(
    collapse: RepeatedErrorFilter, clock: FakeClock, timers: Timers
) -> None:
    for _ in range(25):  # an error a second; the timer never fires, as if its event loop had closed
        collapse.filter(library_error())
        clock.advance(1.0)

    # Asked for at 0 s; at 20 s that one is 10 s overdue, so another is asked for.
    assert [delay for delay, _callback in timers.pending] == [10.0, 10.0]
