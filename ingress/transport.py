"""uvicorn's HTTP protocol behind transports of our own, through public APIs only.

uvicorn takes any protocol class as `Config(http=...)`. `http_protocol(...)` returns one:
`HttpConnection`, an `asyncio.Protocol` of ours that holds (by composition, no subclassing) the
protocol uvicorn itself runs for `http="httptools"` (its class found through the public
`uvicorn.Config`), passes it everything the socket says, and hands it, in `connection_made`, our
transport instead of the socket's. uvicorn's protocol only uses the public `asyncio.Transport` API
on what it is given, so no uvicorn upgrade can break this in a way its own API would not.

What the layer does, for every connection:

- **One socket write per answer** (`AnswerTransport`): uvicorn writes the status line and headers
  as soon as the app sends `http.response.start`, and the body in a second write. On loopback each
  write is a `send` syscall, a TCP segment and a wake-up of the reader: joining them cut the
  server's CPU per request by about 16 % and the client's by half (docs/performance.md). The writes
  of one event-loop turn leave as one write at the start of the next turn; `close()` writes what is
  pending first.
- **A bound on the request head**: httptools keeps a header in memory, however long, until it ends
  (measured: a 25 MiB header is accepted). Bytes received from the start of a request until the
  blank line that ends its head count against `max_head_bytes`; a connection that sends more
  without getting an answer than a whole request may hold (`max_unanswered_bytes`: head and body
  limits, with room for chunk framing) is stopped too. Either way the client gets 431
  (text/plain) and the connection is closed.
- **A deadline on the request head** (`header_timeout`): a head must be complete within
  `header_timeout` seconds of the connection opening or of the previous answer, however its bytes
  trickle in; else 408 (text/plain) and the connection is closed. A connection that received no
  byte of a request is closed without an answer, after `keep_alive_timeout` (or `header_timeout`,
  if shorter). The deadline does not move with the bytes that arrive (uvicorn's keep-alive timer
  stops at the first byte), and it stops while the app handles a request (pipelined ones too).
- **A bound on open connections** (`ingress.limits.ServerConnections`): at the bound, the
  connection idle the longest is closed to make room; with none idle, the new one gets 503.
- **The lingering close** (`ingress.lingering`): an answer that closes the connection (413, 408,
  431, 400, 500, 503) reaches a client that is still sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import structlog
import uvicorn

from ingress.limits import ServerConnections, ThrottledWarning, peer_of, too_many_connections_answer
from ingress.lingering import LingeringCloseTransport

HttpImpl = Literal["one-write", "httptools"]
log = structlog.get_logger("ingress")

HEAD_TOO_LARGE = b"Request Header Fields Too Large"
HEAD_TOO_LARGE_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(HEAD_TOO_LARGE), HEAD_TOO_LARGE)
)
HEAD_TIMEOUT = b"Request Timeout"
HEAD_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(HEAD_TIMEOUT), HEAD_TIMEOUT)
)
# Warnings any client can cause, each at most one line per 10 s (with a count).
HEAD_TIMEOUT_WARNING = ThrottledWarning("request_head_timeout")
HEAD_TOO_LARGE_WARNING = ThrottledWarning("request_head_too_large")
TOO_MANY_CONNECTIONS_WARNING = ThrottledWarning("too_many_connections")
# An interim answer (100 Continue) does not end a request: its body follows.
INTERIM = b"HTTP/1.1 1"


class AnswerTransport(asyncio.Transport):
    """Wraps a transport: tells `answered` of each answer written, and (`coalesce`) joins the
    writes of one event-loop turn into one write."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        *,
        coalesce: bool = True,
        answered: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._coalesce = coalesce
        self._answered = answered
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data`; with `coalesce`, with everything else written before the loop turns."""
        if self._answered is not None and data[: len(INTERIM)] != INTERIM:
            self._answered()
        if not self._coalesce:
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what is pending to the real transport, as one write."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class HttpConnection(asyncio.Protocol):
    """One connection: uvicorn's HTTP protocol (held, not subclassed) behind our transports.

    `http_protocol(...)` makes the subclass uvicorn instantiates, with the class attributes set
    (one `connections` table per server).
    """

    http_class: ClassVar[Callable[..., asyncio.Protocol]]
    coalesce: ClassVar[bool] = True
    max_head_bytes: ClassVar[int] = 16 * 1024
    max_unanswered_bytes: ClassVar[int] = 16 * 1024 + 2 * 1024 * 1024
    header_timeout: ClassVar[float] = 10.0
    keep_alive_timeout: ClassVar[float] = 5.0
    retry_after_seconds: ClassVar[int] = 10
    connections: ClassVar[ServerConnections | None] = None

    def __init__(self, **uvicorn_arguments: Any) -> None:
        # Whatever uvicorn passes a protocol class (config, server state, ...), passed on unchanged.
        self._http = self.http_class(**uvicorn_arguments)
        self._transport: AnswerTransport | None = None
        self._in_head = True  # between the end of an answer and the end of the next head
        self._head_bytes = 0
        self._tail = b""  # the end of the head so far: its terminator may straddle two reads
        self._unanswered = 0  # bytes received since the latest answer
        self._loop: asyncio.AbstractEventLoop | None = None
        # One timer, created when needed and never cancelled per request: it checks, when it fires,
        # against `_waiting_since` (moved by each answer), so a request costs no timer of its own.
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when the connection opened or was last answered
        self._busy = False  # a head is complete and its request not answered yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = AnswerTransport(
            LingeringCloseTransport(cast(asyncio.Transport, transport)),
            self._loop,
            coalesce=self.coalesce,
            answered=self._answered,
        )
        self._http.connection_made(self._transport)
        table = self.connections
        if table is not None and not table.admit(self, peer_of(transport.get_extra_info("peername"))):
            TOO_MANY_CONNECTIONS_WARNING(status=503, max_connections=table.max_connections)
            self._close(too_many_connections_answer(self.retry_after_seconds))
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._unanswered and self.connections is not None:
            self.connections.busy(self)
        self._unanswered += len(data)
        if self._in_head:
            probe = self._tail + data if self._tail else data
            end = _head_end(probe)
            if end < 0:
                self._head_bytes += len(data)
                self._tail = probe[-2:]
            else:
                self._head_bytes += end - len(self._tail)
                self._in_head = False
                self._tail = b""
                self._busy = True  # the head is complete: the body and the app have deadlines of their own
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head()
                return
        if self._unanswered > self.max_unanswered_bytes:
            self._refuse_head()
            return
        self._http.data_received(data)

    def eof_received(self) -> bool | None:
        return self._http.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.connections is not None:
            self.connections.discard(self)
        self._http.connection_lost(exc)

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()

    def request_started(self) -> None:
        """The app handles a request of this connection: no head deadline until its answer."""
        self._busy = True

    def close_idle(self) -> None:
        """Close without an answer (the connection received no byte of a request)."""
        self._close(None)

    def _answered(self) -> None:
        # Answers are written once the body was read (or the connection closes after them): what
        # arrives next starts a new request.
        self._in_head = True
        self._head_bytes = self._unanswered = 0
        self._tail = b""
        self._busy = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self.connections is not None:
                self.connections.became_idle(self)
            self._arm()

    def _arm(self) -> None:
        """Start the deadline of the next head, from now."""
        loop = self._loop
        if loop is None:
            return
        self._waiting_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(min(self.keep_alive_timeout, self.header_timeout), self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        loop = self._loop
        transport = self._transport
        if self._busy or loop is None or transport is None or transport.is_closing():
            return  # the answer starts the next deadline
        waited = loop.time() - self._waiting_since
        if not self._unanswered:
            left = min(self.keep_alive_timeout, self.header_timeout) - waited
            if left > 0:  # answered again since the timer started
                self._timer = loop.call_later(left, self._timed_out)
                return
            self._close(None)  # idle: nothing to answer
            return
        left = self.header_timeout - waited
        if left > 0:  # bytes came before the keep-alive timeout: the head has until its own deadline
            self._timer = loop.call_later(left, self._timed_out)
            return
        HEAD_TIMEOUT_WARNING(status=408, header_timeout_seconds=self.header_timeout)
        self._close(HEAD_TIMEOUT_ANSWER)

    def _refuse_head(self) -> None:
        HEAD_TOO_LARGE_WARNING(status=431, max_head_bytes=self.max_head_bytes)
        self._close(HEAD_TOO_LARGE_ANSWER)

    def _close(self, answer: bytes | None) -> None:
        """Write `answer` (if any), whole, and close the lingering way; the connection stops counting."""
        if self.connections is not None:
            self.connections.discard(self)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if answer is not None:
                transport.write(answer)
            transport.close()
        self._disarm()  # after the write: an answer re-arms the deadline


def _head_end(data: bytes) -> int:
    """Index just past the blank line that ends a request head in `data`, or -1.

    Both CRLF and bare-LF line ends: a header value holds no LF, so the first empty line is the end.
    """
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    if lf < 0 or crlf < lf:
        return crlf + 3
    return lf + 2


def uvicorn_http_class(name: str = "httptools") -> Callable[..., asyncio.Protocol]:
    """The protocol class uvicorn runs for `Config(http=name)`, found through its public Config."""
    config = uvicorn.Config(_no_app, http=name, ws="none", lifespan="off", log_config=None)
    config.load()
    return config.http_protocol_class


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """Only there for `uvicorn_http_class`'s Config: it never serves."""


def http_protocol(
    impl: HttpImpl,
    max_head_bytes: int,
    max_body_bytes: int,
    *,
    header_timeout: float = 10.0,
    keep_alive_timeout: float = 5.0,
    connections: ServerConnections | None = None,
    retry_after_seconds: int = 10,
) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`: uvicorn's httptools protocol behind our
    transports; `one-write` joins each answer's writes, `httptools` keeps uvicorn's writes.

    `connections` is the server's table of open connections (bounded); one per server.
    """
    attributes = {
        "http_class": uvicorn_http_class("httptools"),
        "coalesce": impl == "one-write",
        "max_head_bytes": max_head_bytes,
        # A whole request: its head and body, and the body's chunk framing (hex sizes and CRLFs).
        "max_unanswered_bytes": max_head_bytes + 2 * max_body_bytes,
        "header_timeout": header_timeout,
        "keep_alive_timeout": keep_alive_timeout,
        "connections": connections,
        "retry_after_seconds": retry_after_seconds,
    }
    return type(HttpConnection.__name__, (HttpConnection,), attributes)
