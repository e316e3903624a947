"""xAPI 1.0.3 statements of exam results, as the consumer publishes them, for the forwarder's tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

NAMESPACE = uuid.UUID("5b0f6d4e-7f0a-4a53-9a8e-0c9b3f1f6a10")
HOME_PAGE = "https://exams.example.com"
ASSESSMENT = "http://adlnet.gov/expapi/activities/assessment"


def statement(run: str, number: int, *, passed: bool = True) -> dict[str, Any]:
    """A valid statement: deterministic id, account actor, passed/failed, assessment, result, timestamp."""
    verb = "passed" if passed else "failed"
    raw = 8 if passed else 3
    return {
        "id": str(uuid.uuid5(NAMESPACE, f"{run}/{number}")),
        "actor": {"objectType": "Agent", "account": {"homePage": HOME_PAGE, "name": f"learner-{number}"}},
        "verb": {"id": f"http://adlnet.gov/expapi/verbs/{verb}", "display": {"en-US": verb}},
        "object": {
            "objectType": "Activity",
            "id": f"{HOME_PAGE}/exams/{run}",
            "definition": {"type": ASSESSMENT, "name": {"en-US": "Final exam"}},
        },
        "result": {
            "success": passed,
            "score": {"scaled": raw / 10, "raw": raw, "min": 0, "max": 10},
            "duration": "PT42M17S",
        },
        "timestamp": "2026-11-30T10:15:00+00:00",
    }


def encoded(document: dict[str, Any]) -> bytes:
    """The record value: the statement as compact JSON."""
    return json.dumps(document, separators=(",", ":")).encode()


def key_of(document: dict[str, Any]) -> bytes:
    """The record key: the learner id."""
    return str(document["actor"]["account"]["name"]).encode()
