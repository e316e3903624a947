"""Our transports: one write per loop turn (`CoalescingTransport`), and the lingering close."""

from __future__ import annotations

import asyncio
from typing import Any

from ingress.lingering import LingeringCloseTransport
from ingress.transport import CoalescingTransport


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 4242)}.get(name, default)


async def test_the_writes_of_one_loop_turn_leave_as_one_write_on_the_next_turn() -> None:
    real = FakeTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []
    await asyncio.sleep(0)

    assert real.writes == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]


async def test_writes_of_later_turns_follow_in_order() -> None:
    real = FakeTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())

    transport.write(b"first")
    await asyncio.sleep(0)
    transport.write(bytearray(b"sec"))
    transport.writelines([b"o", memoryview(b"nd")])
    await asyncio.sleep(0)

    assert real.writes == [b"first", b"second"]


async def test_close_writes_what_is_pending_first_and_nothing_after() -> None:
    real = FakeTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 413 Content Too Large\r\n\r\n")
    transport.close()
    assert real.writes == [b"HTTP/1.1 413 Content Too Large\r\n\r\n"]
    assert transport.is_closing()

    transport.write(b"late")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 413 Content Too Large\r\n\r\n"]


async def test_the_rest_is_the_real_transports() -> None:
    real = FakeTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())

    transport.write(b"abc")
    assert transport.get_write_buffer_size() >= 3
    assert transport.get_extra_info("peername") == ("127.0.0.1", 4242)
    await asyncio.sleep(0)


class FakeSocketTransport(FakeTransport):
    """A socket transport that records half-closes, protocol swaps and reading state."""

    def __init__(self, protocol: asyncio.BaseProtocol, *, can_half_close: bool = True) -> None:
        super().__init__()
        self.protocol = protocol
        self.eof_written = False
        self.reading = False  # as uvicorn leaves it while a body waits for the app
        self.can_half_close = can_half_close

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return self.can_half_close

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def resume_reading(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)


class HttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def lingering(*, seconds: float = 60, max_bytes: int = 1000, can_half_close: bool = True) -> Any:
    http = HttpProtocol()
    real = FakeSocketTransport(http, can_half_close=can_half_close)
    return http, real, LingeringCloseTransport(real, seconds=seconds, max_bytes=max_bytes)


async def test_close_half_closes_after_the_answer_and_drops_what_still_arrives() -> None:
    http, real, transport = lingering()

    transport.write(b"HTTP/1.1 413 Content Too Large\r\n\r\n")
    transport.close()
    real.protocol.data_received(b"the rest of the body")

    assert real.writes == [b"HTTP/1.1 413 Content Too Large\r\n\r\n"]
    assert real.eof_written
    assert not real.closed
    assert real.reading  # resumed, even though the HTTP protocol had paused it
    assert transport.is_closing()
    assert http.received == []
    assert not http.lost  # the connection is not over yet


async def test_the_socket_closes_when_the_client_closes_its_side_and_the_http_protocol_hears_it() -> None:
    http, real, transport = lingering()
    transport.close()

    keep_open = real.protocol.eof_received()
    assert not keep_open  # asyncio closes the transport itself
    real.close()

    assert http.lost


async def test_the_drain_stops_after_its_byte_limit() -> None:
    http, real, transport = lingering(max_bytes=1000)
    transport.close()

    real.protocol.data_received(b"x" * 600)
    assert not real.closed
    real.protocol.data_received(b"x" * 600)

    assert real.closed
    assert http.lost


async def test_the_drain_stops_after_its_time_limit() -> None:
    http, real, transport = lingering(seconds=0.01)
    transport.close()

    for _ in range(500):  # bounded: the 10 ms timer fires long before
        if real.closed:
            break
        await asyncio.sleep(0.01)

    assert real.closed
    assert http.lost


async def test_writes_pauses_and_second_closes_after_close_change_nothing() -> None:
    _http, real, transport = lingering()
    transport.close()

    transport.write(b"late")
    transport.pause_reading()
    transport.close()

    assert real.writes == []
    assert real.reading
    assert not real.closed


async def test_without_half_close_close_is_a_plain_close() -> None:
    http, real, transport = lingering(can_half_close=False)

    transport.close()

    assert real.closed
    assert not real.eof_written
    assert http.lost
