"""The HTTP exchange with the LRS: one POST of statements, and what its answer means.

2xx            accepted: stored (200, the ids it stored) or all already stored (Ralph's 204)
409            a statement id the LRS holds with other content; for one statement: delivered
401 403 404    our configuration or the LRS, not the statements: retried (dead-lettering
407 408 425    every statement because of a wrong password would lose them all)
429
other 4xx      refused: the batch is split to find the statement(s) at fault
5xx, no answer retried with backoff (timeouts, refused connections, resets)
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass

import httpx

from lrs_forward.settings import LrsForwardSettings

XAPI_VERSION = "1.0.3"
VERSION_HEADER = "X-Experience-API-Version"
# Answers that say nothing about the statements themselves: waiting (and fixing) is the remedy.
RETRIED_CLIENT_ERRORS = frozenset({401, 403, 404, 407, 408, 425, 429})


class Verdict(enum.Enum):
    """What an answer means for the statements sent."""

    ACCEPTED = "accepted"
    CONFLICT = "conflict"
    REFUSED = "refused"
    RETRY = "retry"


@dataclass(frozen=True)
class LrsAnswer:
    """The LRS's answer to one POST (status None: no answer, `error` says why)."""

    status: int | None
    body: bytes = b""
    error: str | None = None
    seconds: float = 0.0

    @property
    def verdict(self) -> Verdict:
        status = self.status
        if status is None or status >= 500 or status < 200 or 300 <= status < 400:
            return Verdict.RETRY
        if status < 300:
            return Verdict.ACCEPTED
        if status == 409:
            return Verdict.CONFLICT
        if status in RETRIED_CLIENT_ERRORS:
            return Verdict.RETRY
        return Verdict.REFUSED

    @property
    def reason(self) -> str:
        """A short label of the answer for logs and metrics: `http_503`, `timeout`, `connection`."""
        return f"http_{self.status}" if self.status is not None else (self.error or "no_answer")

    def stored_ids(self) -> set[str] | None:
        """The ids a 200 says were stored now (None when the body is not a list of ids)."""
        if self.status != 200:
            return None
        try:
            ids = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return set(ids)

    def excerpt(self, limit: int) -> bytes:
        """At most `limit` bytes of the body, cut on a UTF-8 character boundary."""
        return self.body[:limit].decode("utf-8", errors="ignore").encode()


def statements_body(values: list[bytes]) -> bytes:
    """A JSON array of the statements, each byte for byte as it was on the topic."""
    return b"[" + b",".join(values) + b"]"


class LrsClient:
    """POSTs to `{LRS_URL}/xAPI/statements` with Basic auth and the xAPI version header."""

    def __init__(
        self, settings: LrsForwardSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            settings = self._settings
            self._client = httpx.AsyncClient(
                auth=httpx.BasicAuth(settings.username, settings.password.get_secret_value()),
                headers={VERSION_HEADER: XAPI_VERSION},
                timeout=settings.request_timeout_seconds,
                transport=self._transport,
                follow_redirects=False,  # a redirect means a wrong LRS_URL: retried and visible, not followed
            )
        return self._client

    async def post(self, values: list[bytes]) -> LrsAnswer:
        """One POST of these statements; never raises for a failed exchange."""
        started = time.monotonic()
        try:
            response = await self._http().post(
                self._settings.statements_url,
                content=statements_body(values),
                headers={"content-type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            return LrsAnswer(None, error="timeout", seconds=time.monotonic() - started, body=_what(exc))
        except httpx.HTTPError as exc:
            return LrsAnswer(None, error="connection", seconds=time.monotonic() - started, body=_what(exc))
        return LrsAnswer(response.status_code, response.content, seconds=time.monotonic() - started)

    async def probe(self, timeout: float) -> bool:
        """True when the LRS answers HTTP at all below 500 (GET /xAPI/about, any such status)."""
        try:
            response = await self._http().get(f"{self._settings.url}/xAPI/about", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _what(exc: BaseException) -> bytes:
    return type(exc).__name__.encode()
