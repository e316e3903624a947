"""The forwarder's probe port: `/healthz`, `/readyz` (the shared `{status, checks}` shape), `/metrics`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.readiness import readiness

ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ProbeApp:
    """A small ASGI app: three GET routes, 404 for any other path, 405 for other methods."""

    def __init__(self, ready: ReadinessCheck, registry: CollectorRegistry) -> None:
        self._ready = ready
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in ("/healthz", "/readyz", "/metrics"):
            await _answer(send, 404, b'{"error":"not found"}', "application/json")
        elif method not in ("GET", "HEAD"):
            await _answer(send, 405, b'{"error":"method not allowed"}', "application/json")
        elif path == "/healthz":
            await _answer(send, 200, json.dumps({"status": "ok"}).encode(), "application/json")
        elif path == "/readyz":
            ok, checks = await self._ready()
            status, body = readiness(ok, checks)
            await _answer(send, status, body, "application/json")
        else:
            await _answer(send, 200, generate_latest(self._registry), CONTENT_TYPE_LATEST)


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
