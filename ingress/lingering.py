"""Lingering close: an answer that closes the connection reaches a client that is still sending.

When a server closes a socket with unread data in it (or data arriving after the close), the
kernel answers with a TCP reset, and the reset can destroy the answer before the client read it.
A sender that writes its whole body before reading (most HTTP clients) then sees "connection reset"
instead of our 413, 408, 431 or 400, and retries what will never be accepted.

`LingeringCloseTransport` wraps the connection's transport. Its `close()` does what nginx's
lingering close does, with public asyncio APIs only:

1. the answer already written goes out, then our side is half-closed (`write_eof`: FIN after the
   buffered bytes);
2. the connection's protocol is swapped (`set_protocol`) for `_Discard`, which reads and drops
   whatever still arrives;
3. the socket is closed when the client closes its side, or after `LINGER_SECONDS`, or after
   `LINGER_MAX_BYTES` more bytes, whichever comes first.

The HTTP protocol sees its transport as closing from the first step on, and hears
`connection_lost` only when the socket is really closed, so uvicorn's connection count and graceful
shutdown include lingering connections (each for at most `LINGER_SECONDS`).
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long, and how much, a closed connection is still read from (nginx: lingering_time 30 s; a
# client that sends its whole body first needs only the time to send it).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 4 * 1024 * 1024


class _Discard(asyncio.Protocol):
    """Reads and drops what a half-closed connection still receives; then closes it."""

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: asyncio.BaseProtocol,
        seconds: float,
        max_bytes: int,
    ) -> None:
        self._transport = transport
        self._protocol = protocol  # the HTTP protocol, told of the end of the connection
        self._left = max_bytes
        self._timer = asyncio.get_running_loop().call_later(seconds, self.finish)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self.finish()

    def eof_received(self) -> bool:
        # The client is done sending: returning False lets the transport close itself.
        self._timer.cancel()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def finish(self) -> None:
        """Stop lingering: close the socket now."""
        self._timer.cancel()
        self._transport.close()


class LingeringCloseTransport(asyncio.Transport):
    """Wraps a transport: `close()` half-closes, drains what still arrives (bounded), then closes."""

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        seconds: float = LINGER_SECONDS,
        max_bytes: int = LINGER_MAX_BYTES,
    ) -> None:
        super().__init__()
        self._transport = transport
        self._seconds = seconds
        self._max_bytes = max_bytes
        self._closing = False

    def close(self) -> None:
        """Half-close after what was written, and linger; a second call does nothing."""
        if self._closing:
            return
        self._closing = True
        real = self._transport
        if real.is_closing() or not real.can_write_eof():
            real.close()  # already gone, or TLS (no half-close): nothing to linger on
            return
        real.set_protocol(_Discard(real, real.get_protocol(), self._seconds, self._max_bytes))
        try:
            real.write_eof()
        except OSError:
            real.abort()  # the connection broke meanwhile: no answer can reach the client any more
            return
        # uvicorn pauses reading while a body waits for the app; the rest must be read now.
        real.resume_reading()

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def abort(self) -> None:
        self._closing = True
        self._transport.abort()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def pause_reading(self) -> None:
        # Once lingering, reading belongs to the drain, whatever the HTTP protocol asks.
        if not self._closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._closing:
            self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()
