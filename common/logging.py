"""structlog set-up, done once per process at start-up.

JSON lines when stdout is not a terminal (what log shippers want), a readable console otherwise.
A last processor masks fields that could carry personal data or credentials, so a careless
`log.info(..., email=...)` never reaches the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values never reach a log line: learners' personal data and credentials.
REDACTED_KEYS = frozenset(
    {
        "email",
        "name",
        "user_name",
        "learner_name",
        "learner_email",
        "password",
        "secret",
        "authorization",
        "sasl_password",
        "signing_secrets",
        "basic_auth_password",
        "body",
    }
)
REDACTED = "[redacted]"
# Loggers bind once on first use (cheaper per line). Tests turn this off: a cached logger would
# bypass structlog.testing.capture_logs in every later test.
CACHE_LOGGERS = True


def redact_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace values of keys that could hold personal data or secrets."""
    for key in event_dict.keys() & REDACTED_KEYS:
        event_dict[key] = REDACTED
    return event_dict


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
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every (re)connection; warnings are what operators need.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
