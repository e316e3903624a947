"""xAPI statements of exam results: one per exam.result.passed or exam.result.failed event.

Pure, like the handlers: the results-released handler calls `result_statement` for the event it
just derived. The mapping, field by field, is in docs/xapi.md.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from handlers.event_ids import uuid5
from schemas.cloudevents import DerivedEvent
from schemas.derived import ExamFailed, ExamPassed
from schemas.xapi import ASSESSMENT, VERB_FAILED, VERB_PASSED, ExamResultStatement

# Namespace of the statement ids (uuid5 of the result event's ce_id); changing it changes every id,
# and an LRS would then store a redelivered statement a second time.
STATEMENT_ID_NAMESPACE = uuid.UUID("2d6c1f9e-8a47-5b3c-9e61-4f0a7d2c8b15")


def statement_id(ce_id: str) -> str:
    """The statement's id: deterministic, so a redelivered result gives the statement the LRS already has."""
    return uuid5(STATEMENT_ID_NAMESPACE, ce_id)


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
    consumer publishes (same key, source, subject and time; the statement is its data, built as
    `ExamResultStatement` has it on the wire: properties without a value left out)."""
    data = event.data
    if event.type not in (ExamPassed.event_type, ExamFailed.event_type):
        raise ValueError(f"an xAPI statement is made of a passed or failed event, not {event.type}")
    passed = event.type == ExamPassed.event_type
    attempt = data["attempt"]
    result: dict[str, Any] = {"success": passed}
    # A scoreFrac outside 0..1 is no fraction: the statement then has no score (an LRS refuses a
    # scaled score outside -1..1), while the result events and the statement itself still go out.
    if not data["gradeWithheld"] and attempt["scoreFrac"] is not None and 0 <= attempt["scoreFrac"] <= 1:
        score = {"scaled": float(attempt["scoreFrac"])}
        points, max_points = attempt["points"], attempt["maxPoints"]
        if points is not None and 0 <= points <= max_points:
            score |= {"raw": float(points), "min": 0.0, "max": float(max_points)}
        result["score"] = score
    if time_spent_ms is not None:
        result["duration"] = iso8601_duration(time_spent_ms)
    exam = data["exam"]
    statement_id_ = statement_id(event.id)
    statement = {
        "id": statement_id_,
        "actor": {"objectType": "Agent", "account": {"homePage": home_page, "name": data["learner"]["id"]}},
        "verb": {
            "id": VERB_PASSED if passed else VERB_FAILED,
            "display": {"en-US": "passed" if passed else "failed"},
        },
        "object": {
            "objectType": "Activity",
            "id": f"{home_page.rstrip('/')}/exams/{quote(exam['id'], safe='')}",
            "definition": {"type": ASSESSMENT, "name": {"und": exam["name"]}},
        },
        "result": result,
        "timestamp": data["releasedAt"],
    }
    return DerivedEvent(
        type=ExamResultStatement.event_type,
        id=statement_id_,
        source=event.source,
        subject=event.subject,
        time=event.time,
        key=event.key,
        data=statement,
        data_model=ExamResultStatement,
    )
