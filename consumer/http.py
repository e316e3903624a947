"""The consumer's HTTP port: liveness, readiness, Prometheus metrics (FastStream serves AsyncAPI)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.asgi import AsgiResponse, get
from faststream.asgi.types import ASGIApp, Scope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def health_routes(ready: ReadinessCheck, registry: CollectorRegistry) -> list[tuple[str, ASGIApp]]:
    """`/healthz` (the process answers), `/readyz` (`ready()` says so) and `/metrics`."""

    @get(include_in_schema=False)
    async def healthz(scope: Scope) -> AsgiResponse:
        return _json(200, {"status": "ok"})

    @get(include_in_schema=False)
    async def readyz(scope: Scope) -> AsgiResponse:
        ok, checks = await ready()
        return _json(200 if ok else 503, {"status": "ready" if ok else "not ready", **checks})

    @get(include_in_schema=False)
    async def metrics(scope: Scope) -> AsgiResponse:
        return AsgiResponse(generate_latest(registry), 200, headers={"content-type": CONTENT_TYPE_LATEST})

    return [("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)]


def _json(status: int, body: dict[str, Any]) -> AsgiResponse:
    return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})
