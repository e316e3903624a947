"""The consumer's HTTP port: liveness, readiness, Prometheus metrics and the AsyncAPI page.

FastStream serves the AsyncAPI document (/asyncapi.json). Its page would load the viewer from a CDN,
so the page is ours (consumer.asyncapi_page, offline); these routes come before FastStream's in the
app's route list, and the first route whose path matches answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.asgi import AsgiResponse, get
from faststream.asgi.types import ASGIApp, Scope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.readiness import readiness
from consumer.asyncapi_page import asyncapi_page_routes

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def health_routes(
    ready: ReadinessCheck, registry: CollectorRegistry, *, asyncapi_page: str | None = None
) -> list[tuple[str, ASGIApp]]:
    """`/healthz` (the process answers), `/readyz` (`ready()` says so) and `/metrics`; with
    `asyncapi_page`, the offline AsyncAPI page at that path and the viewer's files below it."""

    @get(include_in_schema=False)
    async def healthz(scope: Scope) -> AsgiResponse:
        return _json(200, {"status": "ok"})

    @get(include_in_schema=False)
    async def readyz(scope: Scope) -> AsgiResponse:
        ok, checks = await ready()
        status, body = readiness(ok, checks)
        return AsgiResponse(body, status, headers={"content-type": "application/json"})

    @get(include_in_schema=False)
    async def metrics(scope: Scope) -> AsgiResponse:
        return AsgiResponse(generate_latest(registry), 200, headers={"content-type": CONTENT_TYPE_LATEST})

    routes: list[tuple[str, ASGIApp]] = [("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)]
    return routes + (asyncapi_page_routes(asyncapi_page) if asyncapi_page else [])


def _json(status: int, body: dict[str, Any]) -> AsgiResponse:
    return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})
