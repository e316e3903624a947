"""`CoalescingTransport`: the writes of one event-loop turn leave as one write, in order, never lost."""

from __future__ import annotations

import asyncio
from typing import Any

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
