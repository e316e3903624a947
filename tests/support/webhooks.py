"""Realistic Exam Results Released bodies, varied from the recorded sample."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "exam-results-released.json"
SAMPLE: dict[str, Any] = json.loads(SAMPLE_PATH.read_text())
FAIL_GRADE = {"label": "Fail", "isPass": False, "minScore": 0}


def results_released(
    *,
    passed: bool = True,
    resit_count: int = 0,
    revoked: bool = False,
    publish_grade: bool = True,
    user_id: str = "usr_8f2c1a7e",
    attempt_id: str = "att_5b9e0c2d",
    released_at: str = "2026-06-14T09:30:00.000Z",
    event_name: str = "exam.resultsReleased",
) -> dict[str, Any]:
    """A results-released body as a dict, with the given outcome."""
    body = copy.deepcopy(SAMPLE)
    attempt = body["attempt"]
    if not passed:
        attempt["grade"] = dict(FAIL_GRADE)
        attempt["score"], attempt["scoreFrac"], attempt["marks"]["points"] = 31.5, 0.315, 12
    attempt["resitCount"] = resit_count
    attempt["state"]["isRevoked"] = revoked
    attempt["id"] = body["id"] = attempt_id
    attempt["audit"]["releasedAt"] = released_at
    body["exam"]["attr"]["publish-exam-grade"] = publish_grade
    body["user"]["id"] = user_id
    body["meta"]["eventName"] = event_name
    return body


def encode(body: dict[str, Any]) -> bytes:
    """The body as the platform would send it."""
    return json.dumps(body).encode()


def platform_body(name: str) -> dict[str, Any]:
    """A fresh copy of a recorded body of the platform's other events, e.g. `exam-completed`."""
    body: dict[str, Any] = json.loads((SAMPLE_PATH.parent / f"{name}.json").read_text())
    return body
