"""One socket write per HTTP answer.

uvicorn's httptools protocol writes the status line and headers as soon as the app sends
`http.response.start`, and the body in a second write. On loopback, each write is a `send` syscall,
a TCP segment and a wake-up of the reader: measured with `bench/ingress.py`, joining the two cut the
server's CPU per request by about 15 % and the client's by half.

`CoalescingTransport` holds what is written during one turn of the event loop and hands it to the
real transport as one write at the start of the next turn (`loop.call_soon`). Nothing is reordered
or dropped: `close()` writes what is pending first. `OneWriteHttpToolsProtocol` is uvicorn's
protocol over that transport, passed as `uvicorn.Config(http=...)`.

`HeadLimitedHttpToolsProtocol` (which the one-write protocol extends) bounds the request line and
headers: httptools itself accepts any amount. Above the limit the client gets 431 and the
connection is closed. `http_protocol(...)` builds the class `uvicorn.Config(http=...)` takes.

Both protocols close connections through `ingress.lingering.LingeringCloseTransport`, so an answer
that closes the connection (413, 408, 431, 400, 500, 503) reaches a client that is still sending.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ingress.lingering import LingeringCloseTransport

HttpImpl = Literal["one-write", "httptools"]


class CoalescingTransport(asyncio.Transport):
    """Wraps a transport: the writes of one event-loop turn leave as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data`; it goes out with everything else written before the loop turns."""
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


class HeadTooLarge(Exception):
    """The request line and headers passed the limit."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the bytes of the request line and headers.

    Two counts, either of which refuses: the exact bytes of the URL and of each complete header
    (many headers in one read), and the bytes of reads that arrive entirely while a head is being
    parsed (one endless header, which httptools keeps in memory until it ends).
    """

    max_head_bytes = 16 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._heads_done = 0
        self._head_bytes = 0  # exact: URL and headers of the current request
        self._head_reads = 0  # reads spent entirely in the current head
        super().connection_made(self.wrap_transport(LingeringCloseTransport(transport)))

    def wrap_transport(self, transport: asyncio.Transport) -> asyncio.Transport:
        """The transport the HTTP protocol writes to, over the lingering one (here: that one)."""
        return transport

    def data_received(self, data: bytes) -> None:
        was_in_head, heads_done = self._in_head, self._heads_done
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse_head()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            # No WebSocket here (ws="none"): uvicorn only warns, as it does.
            if self._should_upgrade():  # pragma: no cover
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if was_in_head and self._in_head and heads_done == self._heads_done:
            self._head_reads += len(data)
            if self._head_reads > self.max_head_bytes:
                self._refuse_head()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        self._head_reads = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        self.logger.warning("Request headers over %d bytes: 431", self.max_head_bytes)
        message = b"Request Header Fields Too Large"
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[431],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(message),
                    b"connection: close\r\n\r\n",
                    message,
                ]
            )
        )
        self.transport.close()


class OneWriteHttpToolsProtocol(HeadLimitedHttpToolsProtocol):
    """uvicorn's httptools protocol (head limited), writing through a `CoalescingTransport`."""

    def wrap_transport(self, transport: asyncio.Transport) -> asyncio.Transport:
        return CoalescingTransport(transport, asyncio.get_running_loop())


def http_protocol(impl: HttpImpl, max_head_bytes: int) -> type[HeadLimitedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`: one write per answer, or uvicorn's writes."""
    base = OneWriteHttpToolsProtocol if impl == "one-write" else HeadLimitedHttpToolsProtocol
    return type(base.__name__, (base,), {"max_head_bytes": max_head_bytes})
