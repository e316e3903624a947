"""xAPI statements of exam results: one per exam.result.passed or exam.result.failed event.

Pure, like the handlers: the results-released handler calls `result_statement` for the event it
just derived. The mapping, field by field, is in docs/xapi.md.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from schemas.cloudevents import DerivedEvent
from schemas.derived import ExamPassed, ResultContext
from schemas.xapi import ASSESSMENT, VERB_FAILED, VERB_PASSED, ExamResultStatement

# Namespace of the statement ids (uuid5 of the result event's ce_id); changing it changes every id,
# and an LRS would then store a redelivered statement a second time.
STATEMENT_ID_NAMESPACE = uuid.UUID("2d6c1f9e-8a47-5b3c-9e61-4f0a7d2c8b15")


def statement_id(ce_id: str) -> str:
    """The statement's id: deterministic, so a redelivered result gives the statement the LRS already has."""
    return str(uuid.uuid5(STATEMENT_ID_NAMESPACE, ce_id))


def iso8601_duration(milliseconds: int) -> str:
    """`6097000` -> `PT1H41M37S`; `1500` -> `PT1.5S`; `0` -> `PT0S` (hours are not folded into days)."""
    seconds, millis = divmod(max(0, milliseconds), 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if millis:
        text += f"{seconds}.{millis:03d}".rstrip("0") + "S"
    elif seconds or text == "PT":
        text += f"{seconds}S"
    return text


def result_statement(event: DerivedEvent, *, time_spent_ms: int | None, home_page: str) -> DerivedEvent:
    """The xAPI statement of an exam.result.passed or exam.result.failed event, as the event the
    consumer publishes (same key, source, subject and time; the statement is its data)."""
    data = event.data
    assert isinstance(data, ResultContext), type(data)
    passed = isinstance(data, ExamPassed)
    attempt = data.attempt
    score: dict[str, float] | None = None
    if not data.grade_withheld and attempt.score_frac is not None:
        score = {"scaled": float(attempt.score_frac)}
        if attempt.points is not None and 0 <= attempt.points <= attempt.max_points:
            score |= {"raw": float(attempt.points), "min": 0.0, "max": float(attempt.max_points)}
    base = home_page.rstrip("/")
    statement = ExamResultStatement.model_validate(
        {
            "id": statement_id(event.id),
            "actor": {"account": {"home_page": home_page, "name": data.learner.id}},
            "verb": {
                "id": VERB_PASSED if passed else VERB_FAILED,
                "display": {"en-US": "passed" if passed else "failed"},
            },
            "object": {
                "id": f"{base}/exams/{quote(data.exam.id, safe='')}",
                "definition": {"type": ASSESSMENT, "name": {"und": data.exam.name}},
            },
            "result": {
                "success": passed,
                "score": score,
                "duration": None if time_spent_ms is None else iso8601_duration(time_spent_ms),
            },
            "timestamp": data.released_at,
        }
    )
    return DerivedEvent(
        type=ExamResultStatement.event_type,
        id=statement.id,
        source=event.source,
        subject=event.subject,
        time=event.time,
        key=event.key,
        data=statement,
    )
