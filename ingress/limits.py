"""What one server (the public or the admin port) allows at once: open connections and requests in
flight, each bounded on its own.

- **Requests in flight** (`InFlightLimit`, an ASGI wrapper of the app): requests being handled, from
  the end of their head to their answer. Beyond the limit a request gets 503 with `Retry-After` at
  once, and its connection is closed. Idle connections do not count.
- **Open connections** (`ServerConnections`): a bound of its own, for thousands. A connection
  arriving at the bound closes the connection that has been idle the longest (open, no byte of a
  request received since it opened or since its latest answer), as nginx reuses keep-alive
  connections; only when no connection is idle does the new one get 503 and a close. So idle
  connections never keep a new request out, and requests on the other connections never notice.

`ServerConnections` also finds the connection of a request (by the client address, the ASGI
scope's `client`, which uvicorn takes from the socket), so that the connection's head timer stops
while the app handles a request, pipelined ones included.
"""

from __future__ import annotations

import resource
import time
from typing import Any, Protocol

import structlog

log = structlog.get_logger("ingress")

Peer = tuple[str, int]
SERVICE_UNAVAILABLE = b'{"error":"too many requests in progress, retry later"}'
TOO_MANY_CONNECTIONS_BODY = b"Too many connections, retry later"
EVICTION_LOG_SECONDS = 10.0


class ThrottledWarning:
    """A warning a client can cause at will (a slow head, too many connections): at most one line per
    `every` seconds, with `count`, how often it happened since the previous line, so that an
    attacker cannot flood the logs."""

    def __init__(self, event: str, every: float = EVICTION_LOG_SECONDS) -> None:
        self._event = event
        self._every = every
        self._count = 0
        self._logged_at = -every

    def __call__(self, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at >= self._every:
            log.warning(self._event, count=self._count, **fields)
            self._count = 0
            self._logged_at = now


def too_many_connections_answer(retry_after_seconds: int) -> bytes:
    """The raw 503 a connection gets when the bound is reached and no connection is idle."""
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"retry-after: %d\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (retry_after_seconds, len(TOO_MANY_CONNECTIONS_BODY), TOO_MANY_CONNECTIONS_BODY)
    )


class Connection(Protocol):
    """What the table needs of a connection (`ingress.transport.HttpConnection`)."""

    def close_idle(self) -> None:
        """Close the connection without an answer: it was idle."""

    def request_started(self) -> None:
        """The app started handling a request of this connection."""


class ServerConnections:
    """The open connections of one server: the bound, the idle ones (oldest first), by client address."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._open: dict[Connection, Peer | None] = {}
        self._idle: dict[Connection, None] = {}  # insertion order: idle the longest first
        self._by_peer: dict[Peer, Connection] = {}
        self._evicted = 0  # idle connections closed at the bound since the latest log line
        self._logged_at = -EVICTION_LOG_SECONDS

    def __len__(self) -> int:
        return len(self._open)

    @property
    def idle(self) -> int:
        """How many open connections are idle."""
        return len(self._idle)

    def admit(self, connection: Connection, peer: Peer | None) -> bool:
        """Count a new connection (idle); False when the bound is reached and none is idle to close."""
        if len(self._open) >= self.max_connections:
            if not self._idle:
                return False
            oldest = next(iter(self._idle))
            self.discard(oldest)
            oldest.close_idle()
            self._evicted += 1
            now = time.monotonic()
            if now - self._logged_at >= EVICTION_LOG_SECONDS:  # one line per period, not per connection
                log.warning(
                    "idle_connections_closed", closed=self._evicted, max_connections=self.max_connections
                )
                self._evicted, self._logged_at = 0, now
        self._open[connection] = peer
        self._idle[connection] = None
        if peer is not None:
            self._by_peer[peer] = connection
        return True

    def busy(self, connection: Connection) -> None:
        """The connection received a byte of a request: no longer idle."""
        self._idle.pop(connection, None)

    def became_idle(self, connection: Connection) -> None:
        """The connection was answered: idle (the youngest) until the next byte."""
        if connection in self._open:
            self._idle.pop(connection, None)
            self._idle[connection] = None

    def discard(self, connection: Connection) -> None:
        """The connection is closed (or closing): it no longer counts."""
        peer = self._open.pop(connection, None)
        self._idle.pop(connection, None)
        if peer is not None and self._by_peer.get(peer) is connection:
            del self._by_peer[peer]

    def of(self, client: Any) -> Connection | None:
        """The open connection of the ASGI scope's `client` ([host, port]), if known."""
        if client is None:
            return None
        try:
            host, port = client
            return self._by_peer.get((str(host), int(port)))
        except (TypeError, ValueError):
            return None


def peer_of(peername: Any) -> Peer | None:
    """(host, port) of a socket's `peername` (IPv4 or IPv6), as uvicorn puts it in the scope."""
    if isinstance(peername, tuple) and len(peername) >= 2:  # (host, port, ...)
        return str(peername[0]), int(peername[1])
    return None


Scope = dict[str, Any]
App = Any  # an ASGI app: (scope, receive, send) -> awaitable


TOO_MANY_REQUESTS_WARNING = ThrottledWarning("too_many_requests_in_flight")


class InFlightLimit:
    """ASGI wrapper: at most `limit` requests handled at once; beyond it 503 with `Retry-After`."""

    def __init__(
        self, app: App, limit: int, retry_after_seconds: int, connections: ServerConnections | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self._connections = connections
        self._refusal_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(SERVICE_UNAVAILABLE)).encode()),
            (b"retry-after", str(retry_after_seconds).encode()),
            (b"connection", b"close"),
        ]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._connections is not None:
            connection = self._connections.of(scope.get("client"))
            if connection is not None:
                connection.request_started()
        if self.in_flight >= self.limit:
            TOO_MANY_REQUESTS_WARNING(status=503, limit=self.limit)
            await send({"type": "http.response.start", "status": 503, "headers": self._refusal_headers})
            await send({"type": "http.response.body", "body": SERVICE_UNAVAILABLE})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files to `wanted` (at most the hard limit); the new soft
    limit. Each connection is a file: a limit below the connection bound makes accept() fail instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
