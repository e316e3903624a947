"""The request line rendered by the ingress itself: the same bytes structlog writes, cheaper."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from common.logging import configure_logging
from ingress.requestlog import RequestLog, timestamp

TIMESTAMP = re.compile(r'"timestamp": "[^"]*"')
FIELDS: dict[str, Any] = {
    "status": 202,
    "size": 3300,
    "latency_ms": 1.23,
    "webhook_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "event_name": "exam.résultat",
    "reason": None,
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logging.getLogger().handlers[:] = []


def structlog_line(stream: io.StringIO, error: bool, fields: dict[str, Any]) -> str:
    """The line as structlog writes it, with the project's JSON logging writing to `stream`."""
    RequestLog().write(error, dict(fields))
    return stream.getvalue().splitlines()[-1]


def json_logging(monkeypatch: pytest.MonkeyPatch, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    configure_logging("ingress", level, json=True)
    return stream


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (False, FIELDS),
        (False, {**FIELDS, "status": 401, "webhook_id": None, "event_name": None, "reason": "no scheme"}),
        (True, {**FIELDS, "status": 500, "reason": "internal error", "error": "KeyError at app.py:3"}),
    ],
)
def test_the_direct_line_is_the_line_structlog_writes_but_for_the_time(
    monkeypatch: pytest.MonkeyPatch, error: bool, fields: dict[str, Any]
) -> None:
    stream = json_logging(monkeypatch)
    expected = structlog_line(stream, error, fields)
    direct = RequestLog()
    direct.direct_to(stream, "INFO")

    direct.write(error, dict(fields))
    written = stream.getvalue().splitlines()[-1]

    assert TIMESTAMP.sub("", written) == TIMESTAMP.sub("", expected)
    assert list(json.loads(written)) == list(json.loads(expected))


def test_below_info_only_the_error_lines_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = json_logging(monkeypatch, "WARNING")
    direct = RequestLog()
    direct.direct_to(stream, "WARNING")

    direct.write(False, dict(FIELDS))
    direct.write(True, {**FIELDS, "status": 500})

    assert [json.loads(line)["status"] for line in stream.getvalue().splitlines()] == [500]


def test_until_told_otherwise_the_line_goes_through_structlog() -> None:
    with structlog.testing.capture_logs() as logs:
        RequestLog().write(False, dict(FIELDS))

    assert logs == [{**FIELDS, "event": "webhook", "log_level": "info"}]


@pytest.mark.parametrize(
    ("now", "written"),
    [
        (1_780_000_000.25, "2026-05-28T20:26:40.250000Z"),
        (1_780_000_000.0, "2026-05-28T20:26:40Z"),
        (1_780_000_000.000001, "2026-05-28T20:26:40.000001Z"),
    ],
)
def test_the_time_is_written_as_structlogs_iso_utc_timestamper_writes_it(now: float, written: str) -> None:
    assert timestamp(now) == written
