"""structlog set-up, done once per process at start-up.

JSON lines when stdout is not a terminal (what log shippers want), a readable console otherwise.
A last processor masks fields that could carry personal data or credentials, so a careless
`log.info(..., email=...)` never reaches the log: keys are matched whatever their case and
separators (`Email`, `given_name`, `givenName`), at any depth of the dicts and lists logged.

Libraries repeat themselves in an outage: aiokafka logs one error per reconnect attempt (a chaos run
with a broker down for 15 s wrote 4,124 such lines). `RepeatedErrorFilter` collapses their repeated
warnings and errors, per condition = logger name + message template (`record.msg`, so node ids,
hosts and error texts of the same failure count as one):

- the first record of a condition passes unchanged (the library's own line, traceback included);
- repeats are counted, not written; while they go on, one `library_errors_repeating` line every
  `REMIND_EVERY_SECONDS` says how many were suppressed since the condition's last line;
- the condition has stopped when no record of it arrived for `QUIET_SECONDS`: one
  `library_errors_stopped` line with the rest of the count, written by a timer on the event loop (or
  with the next library warning). A condition that never repeated ends without a line.

"Stopped" means the library stopped complaining, which in practice is the reconnection (aiokafka
logs no success line a producer would share); it is not a health check, `/readyz` is. Logs of our
own code (structlog loggers, printed directly) never pass the filter and stay as they are.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

# Keys whose values never reach a log line, at any depth: learners' personal data and credentials.
# Compared folded (lower case, without "_" and "-"): `Email`, `EMAIL`, `user_name` and `userName` all
# count.
REDACTED_KEYS = frozenset(
    {
        "email",
        "name",
        "username",
        "givenname",
        "familyname",
        "firstname",
        "lastname",
        "surname",
        "fullname",
        "displayname",
        "learnername",
        "learneremail",
        "password",
        "secret",
        "authorization",
        "saslpassword",
        "signingsecrets",
        "basicauthpassword",
        "body",
    }
)
REDACTED = "[redacted]"
# Spellings of keys met so far that are not redacted. Log lines reuse a few dozen spellings, so a
# line whose keys were all met before costs one set operation in C, not a fold per key. Bounded:
# past the limit, new spellings are folded on every line (slower, never wrong).
MAX_KNOWN_KEYS = 4096
_plain_spellings: set[str] = set()
# Values of these exact types hold no keys: a line of only these needs no walk.
_FLAT_TYPES = frozenset({str, int, float, bool, type(None)})
# Nesting deeper than this is redacted whole rather than walked (also ends a structure that holds itself).
MAX_DEPTH = 32
# Loggers bind once on first use (cheaper per line). Tests turn this off: a cached logger would
# bypass structlog.testing.capture_logs in every later test.
CACHE_LOGGERS = True

# While a library keeps repeating an error, one summary line per condition this often.
REMIND_EVERY_SECONDS = 30.0
# A condition has stopped when none of its records arrived for this long. aiokafka retries every
# 100 ms to 1 s (retry_backoff_ms, metadata refreshes), heartbeats every 3 s: 10 s of silence is a
# clear end and not a pause between retries.
QUIET_SECONDS = 10.0
# Loggers whose repeated warnings are collapsed. FastStream logs through the loggers the consumer
# hands it (consumer/app.py: consumer.broker, consumer.app).
LIBRARY_LOGGERS = ("aiokafka", "faststream", "uvicorn", "consumer.broker", "consumer.app")
# Distinct conditions tracked at once; beyond that records pass unchanged (nothing is ever lost).
MAX_CONDITIONS = 200
# Attribute of the summary records the filter writes: their structured fields.
SUMMARY_FIELDS = "collapsed_fields"

Clock = Callable[[], float]
# Run a callback after some seconds; False when it could not be arranged.
Schedule = Callable[[float, Callable[[], None]], bool]


def redact_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace values of keys that could hold personal data or secrets, at any depth, in any case.

    Nested dicts and lists are copied where they change: the objects a caller logged stay as they were.
    """
    # The common line: every key a plain spelling met before, every value flat; two checks in C.
    if not _plain_spellings.issuperset(event_dict):
        for key in event_dict.keys() - _plain_spellings:
            if _is_redacted(key):
                event_dict[key] = REDACTED
    if not _FLAT_TYPES.issuperset(map(type, event_dict.values())):
        for key, value in event_dict.items():
            if type(value) not in _FLAT_TYPES:
                event_dict[key] = _redacted_copy(value, 1)
    return event_dict


def _is_redacted(key: object) -> bool:
    """Whether the key's value is redacted: its folded spelling is one of `REDACTED_KEYS`."""
    if key in _plain_spellings or not isinstance(key, str):
        return False
    if key.lower().replace("_", "").replace("-", "") in REDACTED_KEYS:
        return True
    if len(_plain_spellings) < MAX_KNOWN_KEYS:
        _plain_spellings.add(key)
    return False


def _redacted_copy(value: Any, depth: int) -> Any:
    """`value` with redacted keys at any depth: the same object when nothing in it changes."""
    if type(value) in _FLAT_TYPES:
        return value
    if depth > MAX_DEPTH:
        return REDACTED
    if type(value) is dict or isinstance(value, Mapping):
        copy: dict[Any, Any] | None = None
        for key, item in value.items():
            new = REDACTED if _is_redacted(key) else _redacted_copy(item, depth + 1)
            if new is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = new
        return value if copy is None else copy
    if type(value) is list or isinstance(value, list | tuple):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new = _redacted_copy(item, depth + 1)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        return value if items is None else items
    return value


def add_summary_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Turn a summary record of `RepeatedErrorFilter` into its structured fields."""
    fields = getattr(event_dict.get("_record"), SUMMARY_FIELDS, None)
    if fields:
        event_dict.update(fields)
    return event_dict


@dataclass
class _Condition:
    """One logger + message template that is being repeated."""

    logger: str
    template: str
    level: int
    since: float  # record.created of its first record (wall clock, for the reader)
    until: float  # record.created of its latest record
    last_seen: float  # our clock, for the intervals
    last_line: float  # our clock: when its last line (the first record or a summary) was written
    last_message: str
    total: int = 1  # records since it started, the first one included
    suppressed: int = 0  # records not written since its last line


def call_later_on_running_loop(delay: float, callback: Callable[[], None]) -> bool:
    """Run `callback` after `delay` seconds on the caller's event loop, if it runs in one.

    The loop's thread is the one that writes our other lines, so a summary never interleaves them.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False  # logged outside a loop: a later record schedules, or flushes itself
    loop.call_later(delay, callback)
    return True


class RepeatedErrorFilter(logging.Filter):
    """Let the first warning of a library condition through; count its repeats; report the count."""

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], None],
        *,
        remind_every: float = REMIND_EVERY_SECONDS,
        quiet: float = QUIET_SECONDS,
        loggers: tuple[str, ...] = LIBRARY_LOGGERS,
        clock: Clock = time.monotonic,
        schedule: Schedule = call_later_on_running_loop,
        max_conditions: int = MAX_CONDITIONS,
    ) -> None:
        super().__init__()
        self.emit = emit
        self.remind_every = remind_every
        self.quiet = quiet
        self.loggers = loggers
        self.clock = clock
        self.schedule = schedule
        self.max_conditions = max_conditions
        self.active: dict[tuple[str, str], _Condition] = {}
        self._lock = threading.Lock()  # records may come from any thread
        self._wakeup_at: float | None = None  # when the pending timer fires (our clock), if one is

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat that is only counted; True for everything else."""
        if not self._collapsible(record):
            return True
        now = self.clock()
        key = (record.name, str(record.msg))
        with self._lock:
            summaries = self._stopped(now)
            condition = self.active.get(key)
            if condition is None:
                passes = True
                if len(self.active) < self.max_conditions:
                    self.active[key] = _Condition(
                        logger=record.name,
                        template=key[1],
                        level=record.levelno,
                        since=record.created,
                        until=record.created,
                        last_seen=now,
                        last_line=now,
                        last_message=record.getMessage(),
                    )
            else:
                passes = False
                condition.total += 1
                condition.suppressed += 1
                condition.level = max(condition.level, record.levelno)
                condition.last_seen, condition.until = now, record.created
                condition.last_message = record.getMessage()
                if now - condition.last_line >= self.remind_every:
                    summaries.append(self._summary(condition, "library_errors_repeating", condition.level))
                    condition.last_line, condition.suppressed = now, 0
            wake = self._wakeup_due()
        self._write(summaries)
        self._wake_up_after(wake)
        return passes

    def flush(self) -> None:
        """Write the stopped lines that are due (the timer calls this)."""
        with self._lock:
            self._wakeup_at = None
            summaries = self._stopped(self.clock())
            wake = self._wakeup_due()
        self._write(summaries)
        self._wake_up_after(wake)

    def _collapsible(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or hasattr(record, SUMMARY_FIELDS):
            return False
        return any(record.name == name or record.name.startswith(name + ".") for name in self.loggers)

    def _stopped(self, now: float) -> list[logging.LogRecord]:
        """Forget the conditions quiet for `quiet` seconds; a line for those that had repeats."""
        summaries = []
        for key, condition in list(self.active.items()):
            if now - condition.last_seen >= self.quiet:
                del self.active[key]
                if condition.total > 1:
                    summaries.append(self._summary(condition, "library_errors_stopped", logging.INFO))
        return summaries

    def _wakeup_due(self) -> float | None:
        """Seconds until the next condition may have stopped, unless a wake-up is already pending."""
        now = self.clock()
        # A timer far past its time died with its event loop: arrange another one.
        if not self.active or (self._wakeup_at is not None and now < self._wakeup_at + self.quiet):
            return None
        earliest = min(condition.last_seen for condition in self.active.values())
        delay = max(0.0, earliest + self.quiet - now)
        self._wakeup_at = now + delay
        return delay

    def _wake_up_after(self, delay: float | None) -> None:
        if delay is not None and not self.schedule(delay, self.flush):
            with self._lock:
                self._wakeup_at = None

    def _summary(self, condition: _Condition, event: str, level: int) -> logging.LogRecord:
        record = logging.LogRecord(condition.logger, level, __file__, 0, event, None, None)
        fields: dict[str, Any] = {
            "condition": condition.template,
            "count": condition.suppressed,
            "total": condition.total,
            "since": _iso(condition.since),
            "last": condition.last_message,
        }
        if event == "library_errors_stopped":
            fields |= {"until": _iso(condition.until), "quiet_seconds": self.quiet}
        setattr(record, SUMMARY_FIELDS, fields)
        return record

    def _write(self, summaries: list[logging.LogRecord]) -> None:
        for summary in summaries:
            if logging.getLogger().isEnabledFor(summary.levelno):
                self.emit(summary)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def configure_logging(service: str, level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger for this process."""
    as_json = not sys.stdout.isatty() if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_personal_data,
    ]
    # Tracebacks never show local variables: they would print bodies, headers and credentials.
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=True, exception_formatter=structlog.dev.plain_traceback)
    )
    # JSON lines carry the traceback as text; the console renderer formats it itself.
    final = [structlog.processors.format_exc_info, renderer] if as_json else [renderer]
    structlog.configure(
        processors=[*shared, *final],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (aiokafka, faststream, uvicorn) log through stdlib: route them through the same renderer.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, add_summary_fields, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()

    def write_summary(record: logging.LogRecord) -> None:
        # A timer may fire after logging was configured again: the old handler stays silent.
        if handler in root.handlers:
            handler.handle(record)

    # The intervals are read at call time, so a test can shorten them.
    collapse = RepeatedErrorFilter(write_summary, remind_every=REMIND_EVERY_SECONDS, quiet=QUIET_SECONDS)
    handler.addFilter(collapse)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every (re)connection; warnings are what operators need.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
