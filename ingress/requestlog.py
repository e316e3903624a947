"""The one log line per webhook request, at a fraction of structlog's cost.

Through structlog, the line costs about 50 us, a quarter of a no-op request's CPU
(docs/performance.md): five processors, a JSON encoder built per line, a lock and a flushed print.
Its fields are fixed and none of them is personal data, so once the process logs JSON lines
(`direct_to`, called by the composition root after `common.logging.configure_logging`) the line is
rendered here, byte for byte as structlog renders it (same keys in the same order, same separators,
same timestamp format), and written with one write and a flush. Until then (a terminal's console
renderer, tests capturing structlog's events) it goes through structlog as any other line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TextIO

import structlog

from common.logging import redact_personal_data

log = structlog.get_logger("ingress")
EVENT = "webhook"
_encode = json.JSONEncoder().encode  # json.dumps's default encoder, built once

_second_formatted: tuple[int, str] = (-1, "")


def timestamp(now: float | None = None) -> str:
    """Now (or `now`), as structlog's `TimeStamper(fmt="iso", utc=True)` writes it: microseconds,
    omitted when zero (as `datetime.isoformat` does), and `Z`."""
    global _second_formatted
    if now is None:
        now = time.time()
    second = int(now)
    micros = round((now - second) * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    cached_second, prefix = _second_formatted
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_formatted = (second, prefix)
    return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


class RequestLog:
    """Writes the request lines: directly once `direct_to` was called, else through structlog."""

    def __init__(self) -> None:
        self._stream: TextIO | None = None
        self._info = True  # whether INFO lines pass the configured level

    def direct_to(self, stream: TextIO, level: str) -> None:
        """Render the lines here and write them to `stream` (where structlog writes its JSON lines),
        dropping INFO lines below `level`, as structlog's filtering logger does."""
        self._stream = stream
        self._info = logging.getLevelName(level.upper()) <= logging.INFO

    def through_structlog(self) -> None:
        """Back to structlog (tests)."""
        self._stream = None

    def write(self, error: bool, fields: dict[str, Any]) -> None:
        """One request line: `fields` then structlog's own (event, context, level, timestamp)."""
        stream = self._stream
        if stream is None:
            (log.error if error else log.info)(EVENT, **fields)
            return
        if not (error or self._info):
            return
        line = fields
        line["event"] = EVENT
        # merge_contextvars: the process's bound context (service=...), without overriding a field.
        for key, value in structlog.contextvars.get_contextvars().items():
            line.setdefault(key, value)
        line["level"] = "error" if error else "info"
        line["timestamp"] = timestamp()
        redact_personal_data(None, "", line)  # none of our fields is such a key; the context might be
        stream.write(_encode(line) + "\n")
        stream.flush()


request_log = RequestLog()
