"""Our transports: one write per loop turn (`AnswerTransport`), the head bound and the head deadline
of `HttpConnection`, the bounds on connections and requests in flight (`ingress.limits`), and the
lingering close."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any, cast

import pytest
import structlog.testing

from ingress.limits import InFlightLimit, ServerConnections, ThrottledWarning, raise_open_files_limit
from ingress.lingering import LingeringCloseTransport
from ingress.transport import AnswerTransport, HttpConnection, http_protocol, uvicorn_http_class


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
    transport = AnswerTransport(real, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []
    await asyncio.sleep(0)

    assert real.writes == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]


async def test_writes_of_later_turns_follow_in_order() -> None:
    real = FakeTransport()
    transport = AnswerTransport(real, asyncio.get_running_loop())

    transport.write(b"first")
    await asyncio.sleep(0)
    transport.write(bytearray(b"sec"))
    transport.writelines([b"o", memoryview(b"nd")])
    await asyncio.sleep(0)

    assert real.writes == [b"first", b"second"]


async def test_close_writes_what_is_pending_first_and_nothing_after() -> None:
    real = FakeTransport()
    transport = AnswerTransport(real, asyncio.get_running_loop())

    transport.write(b"HTTP/1.1 413 Content Too Large\r\n\r\n")
    transport.close()
    assert real.writes == [b"HTTP/1.1 413 Content Too Large\r\n\r\n"]
    assert transport.is_closing()

    transport.write(b"late")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 413 Content Too Large\r\n\r\n"]


async def test_the_rest_is_the_real_transports() -> None:
    real = FakeTransport()
    transport = AnswerTransport(real, asyncio.get_running_loop())

    transport.write(b"abc")
    assert transport.get_write_buffer_size() >= 3
    assert transport.get_extra_info("peername") == ("127.0.0.1", 4242)
    await asyncio.sleep(0)


async def test_without_coalescing_each_write_leaves_at_once() -> None:
    real = FakeTransport()
    transport = AnswerTransport(real, asyncio.get_running_loop(), coalesce=False)

    transport.write(b"head")
    transport.write(b"body")

    assert real.writes == [b"head", b"body"]


async def test_every_write_but_an_interim_100_continue_counts_as_an_answer() -> None:
    answers: list[str] = []
    transport = AnswerTransport(
        FakeTransport(), asyncio.get_running_loop(), answered=lambda: answers.append("x")
    )

    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert answers == []
    transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    assert answers == ["x"]
    await asyncio.sleep(0)


class RecordingHttp(asyncio.Protocol):
    """Stands in for uvicorn's protocol: records what it is given."""

    def __init__(self, **arguments: Any) -> None:
        self.arguments = arguments
        self.received: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def connection(
    *,
    max_head_bytes: int = 100,
    max_body_bytes: int = 1000,
    header_timeout: float = 60,
    keep_alive_timeout: float = 60,
    connections: ServerConnections | None = None,
    peer: tuple[str, int] = ("127.0.0.1", 4242),
) -> tuple[Any, FakeSocketTransport]:
    """An `HttpConnection` over a fake socket, holding a `RecordingHttp`."""
    cls = type(
        "Connection",
        (HttpConnection,),
        {
            "http_class": RecordingHttp,
            "max_head_bytes": max_head_bytes,
            "max_unanswered_bytes": max_head_bytes + 2 * max_body_bytes,
            "header_timeout": header_timeout,
            "keep_alive_timeout": keep_alive_timeout,
            "connections": connections,
        },
    )
    protocol = cls(config="the config", server_state="the state")
    real = FakeSocketTransport(protocol, peer=peer)
    protocol.connection_made(real)
    return protocol, real


async def test_uvicorns_protocol_gets_uvicorns_arguments_every_byte_and_our_transport() -> None:
    protocol, real = connection()
    http = protocol._http

    protocol.data_received(b"POST / HTTP/1.1\r\n")
    protocol.data_received(b"content-length: 2\r\n\r\n{}")

    assert http.arguments == {"config": "the config", "server_state": "the state"}
    assert b"".join(http.received) == b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}"
    assert isinstance(http.transport, AnswerTransport)
    assert http.transport.get_extra_info("peername") == real.get_extra_info("peername")


async def test_a_head_over_the_limit_gets_431_and_the_connection_closes() -> None:
    protocol, real = connection(max_head_bytes=100)

    protocol.data_received(b"POST / HTTP/1.1\r\n")
    protocol.data_received(b"x-junk: " + b"a" * 100)
    await asyncio.sleep(0)

    assert real.writes[0].startswith(b"HTTP/1.1 431 ")
    assert real.eof_written  # the lingering close: FIN after the answer
    assert protocol._http.received == [b"POST / HTTP/1.1\r\n"]  # uvicorn never saw the rest


async def test_the_body_after_the_head_does_not_count_against_the_head_limit() -> None:
    protocol, real = connection(max_head_bytes=100, max_body_bytes=1000)
    # The blank line that ends the head straddles two reads.
    reads = [b"POST / HTTP/1.1\r\ncontent-length: 900\r\n\r", b"\n" + b"x" * 450, b"x" * 450]

    for data in reads:
        protocol.data_received(data)
    await asyncio.sleep(0)

    assert real.writes == []
    assert protocol._http.received == reads


async def test_after_an_answer_the_next_head_is_counted_afresh() -> None:
    protocol, real = connection(max_head_bytes=100)
    request = b"POST / HTTP/1.1\r\nx: " + b"a" * 60 + b"\r\n\r\n"

    for _ in range(3):
        protocol.data_received(request)
        protocol._http.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
    await asyncio.sleep(0)

    answers = b"".join(real.writes)
    assert answers.count(b"HTTP/1.1 202 ") == 3
    assert b" 431 " not in answers


async def test_a_connection_that_sends_more_than_a_whole_request_without_an_answer_gets_431() -> None:
    protocol, real = connection(max_head_bytes=100, max_body_bytes=1000)

    protocol.data_received(b"\r\n\r\n")  # an early blank line must not switch the bound off
    for _ in range(30):
        protocol.data_received(b"x" * 100)
    await asyncio.sleep(0)

    assert real.writes[0].startswith(b"HTTP/1.1 431 ")


async def test_bare_lf_line_ends_also_end_a_head() -> None:
    protocol, real = connection(max_head_bytes=100)

    protocol.data_received(b"POST / HTTP/1.1\ncontent-length: 500\n\n" + b"x" * 500)

    assert real.writes == []


def test_the_inner_protocol_is_the_one_uvicorn_runs_for_httptools() -> None:
    inner = uvicorn_http_class("httptools")
    made = cast(type[HttpConnection], http_protocol("one-write", 4096, 1024))

    assert issubclass(made, HttpConnection)
    assert made.http_class is inner
    assert made.max_head_bytes == 4096
    assert made.coalesce
    assert not cast(type[HttpConnection], http_protocol("httptools", 4096, 1024)).coalesce


class FakeSocketTransport(FakeTransport):
    """A socket transport that records half-closes, protocol swaps and reading state."""

    def __init__(
        self,
        protocol: asyncio.BaseProtocol,
        *,
        can_half_close: bool = True,
        peer: tuple[str, int] = ("127.0.0.1", 4242),
    ) -> None:
        super().__init__()
        self.peer = peer
        self.protocol = protocol
        self.eof_written = False
        self.reading = False  # as uvicorn leaves it while a body waits for the app
        self.can_half_close = can_half_close

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer}.get(name, default)

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


async def wait_for(condition: Any, seconds: float = 5) -> None:
    """Poll `condition()` every 10 ms until true (bounded)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer_after_the_keep_alive_timeout() -> (
    None
):
    _protocol, real = connection(keep_alive_timeout=0.05, header_timeout=5)

    await wait_for(lambda: real.eof_written)

    assert real.eof_written
    assert real.writes == []


async def test_a_head_trickling_in_gets_408_at_the_header_timeout_whatever_bytes_keep_coming() -> None:
    protocol, real = connection(max_head_bytes=100_000, keep_alive_timeout=0.05, header_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()

    protocol.data_received(b"POST / HTTP/1.1\r\n")
    while not real.eof_written and loop.time() - started < 5:
        protocol.data_received(b"x: 1\r\n")  # one header line every 20 ms: never the blank line
        await asyncio.sleep(0.02)

    assert real.writes[0].startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in real.writes[0]
    assert real.eof_written


async def test_a_complete_head_stops_the_deadline_until_the_answer_and_the_answer_restarts_it() -> None:
    protocol, real = connection(keep_alive_timeout=0.1, header_timeout=0.1)

    protocol.data_received(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n")
    await asyncio.sleep(0.3)  # the app takes its time: the connection stays
    assert real.writes == []
    assert not real.eof_written
    protocol._http.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
    await wait_for(lambda: real.eof_written)

    assert real.writes == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"]  # closed, no 408
    assert real.eof_written


async def test_while_the_app_handles_a_pipelined_request_no_deadline_closes_the_connection() -> None:
    protocol, real = connection(keep_alive_timeout=0.05, header_timeout=0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    protocol._http.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    protocol.request_started()  # the second request, already received, reaches the app
    await asyncio.sleep(0.2)

    assert not real.eof_written


async def test_at_the_connection_bound_the_connection_idle_the_longest_is_closed_to_make_room() -> None:
    table = ServerConnections(max_connections=3)
    _first, first_socket = connection(connections=table, peer=("10.0.0.1", 1))
    busy, busy_socket = connection(connections=table, peer=("10.0.0.2", 2))
    third, third_socket = connection(connections=table, peer=("10.0.0.3", 3))
    busy.data_received(b"POST / HTTP/1.1\r\n")  # a request under way: not idle

    newcomer, newcomer_socket = connection(connections=table, peer=("10.0.0.4", 4))

    assert first_socket.eof_written
    assert first_socket.writes == []
    assert not busy_socket.eof_written
    assert not third_socket.eof_written
    assert not newcomer_socket.eof_written
    assert len(table) == 3
    assert table.of(["10.0.0.4", 4]) is newcomer
    assert table.of(("10.0.0.1", 1)) is None
    assert third is table.of(("10.0.0.3", 3))


async def test_at_the_connection_bound_with_none_idle_the_new_connection_gets_503_with_retry_after() -> None:
    table = ServerConnections(max_connections=1)
    busy, busy_socket = connection(connections=table, peer=("10.0.0.1", 1))
    busy.data_received(b"POST / HTTP/1.1\r\n")

    _refused, refused_socket = connection(connections=table, peer=("10.0.0.2", 2))
    await asyncio.sleep(0)

    assert refused_socket.writes[0].startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 10\r\n" in refused_socket.writes[0]
    assert refused_socket.eof_written
    assert not busy_socket.eof_written
    assert len(table) == 1


async def test_an_answered_connection_is_idle_again_and_a_closed_one_no_longer_counts() -> None:
    table = ServerConnections(max_connections=10)
    protocol, real = connection(connections=table)
    protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")
    assert table.idle == 0

    protocol._http.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert table.idle == 1
    real.close()

    assert len(table) == 0
    assert table.idle == 0


class SlowApp:
    """An ASGI app that answers 200 once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def call(app: Any, client: tuple[str, int] = ("127.0.0.1", 1)) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await app({"type": "http", "client": client}, receive, send)
    return sent


async def test_requests_beyond_the_in_flight_limit_get_503_with_retry_after_at_once() -> None:
    slow = SlowApp()
    limited = InFlightLimit(slow, limit=2, retry_after_seconds=7)
    held = [asyncio.create_task(call(limited)) for _ in range(2)]
    await asyncio.sleep(0)

    refused = await asyncio.wait_for(call(limited), 1)
    slow.release.set()
    served = await asyncio.gather(*held)

    assert refused[0]["status"] == 503
    assert (b"retry-after", b"7") in refused[0]["headers"]
    assert [answer[0]["status"] for answer in served] == [200, 200]
    assert limited.in_flight == 0


async def test_the_in_flight_limit_stops_the_head_deadline_of_the_requests_connection() -> None:
    table = ServerConnections(max_connections=10)
    _protocol, real = connection(connections=table, keep_alive_timeout=0.05, header_timeout=0.05)
    slow = SlowApp()
    limited = InFlightLimit(slow, limit=2, retry_after_seconds=7, connections=table)

    request = asyncio.create_task(call(limited, client=real.peer))
    await asyncio.sleep(0.2)

    assert not real.eof_written
    slow.release.set()
    await request


def test_the_open_files_limit_is_raised_towards_the_connection_bound_within_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= soft:
        pytest.skip("the soft limit is already the hard limit")
    try:
        raised = raise_open_files_limit(soft + 1)

        assert raised == soft + 1
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft + 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_warning_any_client_can_cause_is_one_line_per_period_with_a_count() -> None:
    warning = ThrottledWarning("request_head_timeout", every=0.2)

    with structlog.testing.capture_logs() as first:
        for _ in range(50):
            warning(status=408)
    time.sleep(0.25)
    with structlog.testing.capture_logs() as later:
        warning(status=408)

    assert [(line["event"], line["count"]) for line in first] == [("request_head_timeout", 1)]
    assert [(line["event"], line["count"]) for line in later] == [("request_head_timeout", 50)]
