"""The `/readyz` answer, one shape for every process.

    200 {"status": "ready", "checks": {...}}
    503 {"status": "not ready", "checks": {...}}

`checks` holds what the verdict was made of (booleans and numbers, never personal data), so an
operator sees why a process is not ready without reading its logs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

READY = "ready"
NOT_READY = "not ready"


def readiness(ready: bool, checks: Mapping[str, object]) -> tuple[int, bytes]:
    """The HTTP status and JSON body of a readiness answer."""
    body = {"status": READY if ready else NOT_READY, "checks": dict(checks)}
    return (200 if ready else 503), json.dumps(body, separators=(",", ":")).encode()
