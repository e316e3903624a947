"""The app behind real uvicorn sockets, configured as in production: framing, limits, timeouts,
the public and the admin port, the lingering close.

No Kafka here (a recording producer); what is tested is our HTTP layer over uvicorn's protocol
(ingress/transport.py) and its settings.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from ingress.app import create_app
from ingress.bootstrap import IngressServers, ServerFailed
from ingress.lingering import LINGER_MAX_BYTES
from ingress.producer import Delivery, Headers
from tests.support.ingress_harness import RecordingProducer, ingress_settings
from tests.support.ingress_server import (
    AUTH,
    exchange,
    post_request,
    read_until_quiet,
    refuses_connections,
    running_server,
    running_servers,
    send_all_then_read,
    statuses,
    two_free_ports,
)

IMPLS = ["one-write", "httptools"]
TWO_MIB = 2 * 1024 * 1024
AUTH_VALUE = AUTH.removeprefix(b"authorization: ").strip().decode()


@pytest.mark.parametrize("impl", IMPLS)
async def test_pipelined_requests_are_answered_in_order(impl: str) -> None:
    producer = RecordingProducer()
    async with running_server(producer, http_impl=impl) as port:
        raw = await exchange(
            port, post_request(b'{"n":1}') + post_request(b"[1]") + post_request(b'{"n":3}'), read_timeout=2
        )

    assert statuses(raw) == [202, 400, 202]
    assert [r.value for r in producer.records] == [b'{"n":1}', b'{"n":3}']


@pytest.mark.parametrize("impl", IMPLS)
async def test_keep_alive_serves_several_requests_on_one_connection(impl: str) -> None:
    producer = RecordingProducer()
    async with running_server(producer, http_impl=impl) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for n in range(3):
            writer.write(post_request(b'{"n":%d}' % n))
            answers.append(await read_until_quiet(reader, 1))
        writer.close()

    assert [statuses(a) for a in answers] == [[202], [202], [202]]
    assert not any(a.endswith(b"<EOF>") for a in answers)


async def test_expect_100_continue_gets_100_then_202() -> None:
    producer = RecordingProducer()
    body = b'{"n":1}'
    async with running_server(producer) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = post_request(body, b"expect: 100-continue\r\n").removesuffix(body)
        writer.write(head)
        interim = await read_until_quiet(reader, 2)
        writer.write(body)
        final = await read_until_quiet(reader, 2)
        writer.close()

    assert interim.startswith(b"HTTP/1.1 100 ")
    assert statuses(final) == [202]


async def test_expect_100_continue_with_a_too_large_length_gets_413_without_100_and_closes() -> None:
    async with running_server(RecordingProducer(), max_body_bytes=1024) as port:
        head = post_request(b"", b"expect: 100-continue\r\n").replace(
            b"content-length: 0", b"content-length: 5000000"
        )
        raw = await exchange(port, head)

    assert statuses(raw) == [413]
    assert raw.endswith(b"<EOF>")


async def test_a_chunked_body_over_the_limit_gets_413_and_the_connection_closes() -> None:
    async with running_server(RecordingProducer(), max_body_bytes=1024) as port:
        chunk = b"x" * 4096
        data = (
            b"POST /webhooks HTTP/1.1\r\nhost: ingress\r\n"
            + AUTH
            + b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(chunk)
            + chunk
            + b"\r\n"
        )
        raw = await exchange(port, data)

    assert statuses(raw) == [413]
    assert b"connection: close" in raw
    assert raw.endswith(b"<EOF>")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", ["many headers", "one endless header"])
async def test_headers_over_the_limit_get_431_and_the_connection_closes(impl: str, shape: str) -> None:
    async with running_server(RecordingProducer(), http_impl=impl, max_header_bytes=4096) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks HTTP/1.1\r\nhost: ingress\r\n")
        if shape == "many headers":
            writer.write(b"".join(b"x-junk-%d: %s\r\n" % (n, b"a" * 100) for n in range(100)))
            raw = await read_until_quiet(reader, 5)
        else:
            writer.write(b"x-junk: ")
            raw = b""
            for _ in range(20):  # 20 KiB of one header, 1 KiB at a time, until the server answers
                writer.write(b"a" * 1024)
                raw = await read_until_quiet(reader, 0.2)
                if raw:
                    break
        writer.close()

    assert statuses(raw) == [431]
    assert raw.endswith(b"<EOF>")


async def test_headers_under_the_limit_with_a_large_body_in_the_same_read_are_fine() -> None:
    producer = RecordingProducer()
    body = b'{"pad":"' + b"x" * 200_000 + b'"}'
    async with running_server(producer, max_header_bytes=4096) as port:
        raw = await exchange(port, post_request(body), read_timeout=3)

    assert statuses(raw) == [202]


async def test_a_stalled_body_gets_408_and_the_connection_closes() -> None:
    producer = RecordingProducer()
    async with running_server(producer, body_read_timeout_seconds=0.3) as port:
        raw = await exchange(port, post_request(b'{"n":1}').removesuffix(b'{"n":1}') + b'{"n"')

    assert statuses(raw) == [408]
    assert raw.endswith(b"<EOF>")
    assert producer.records == []


async def test_idle_connections_beyond_limit_concurrency_do_not_keep_a_request_out() -> None:
    async with running_server(RecordingProducer(), limit_concurrency=2) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        await asyncio.sleep(0.2)  # let the server accept them
        raw = await exchange(port, post_request(b"{}"), read_timeout=2)
        for _, writer in held:
            writer.close()

    assert statuses(raw) == [202]


async def test_requests_beyond_limit_concurrency_get_503_with_retry_after_at_once() -> None:
    producer = HeldProducer()
    async with running_server(producer, limit_concurrency=2, retry_after_seconds=7) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in held:
            writer.write(post_request(b"{}"))
        await asyncio.wait_for(producer.producing.wait(), 10)
        await asyncio.sleep(0.2)  # both requests in flight
        raw = await exchange(port, post_request(b"{}"), read_timeout=2)
        producer.release.set()
        answers = [await read_until_quiet(reader, 2) for reader, _ in held]
        for _, writer in held:
            writer.close()

    assert statuses(raw) == [503]
    assert b"retry-after: 7\r\n" in raw.lower()
    assert [statuses(answer) for answer in answers] == [[202], [202]]


async def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout() -> None:
    async with running_server(RecordingProducer(), keep_alive_timeout_seconds=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = await read_until_quiet(reader, 5)
        writer.close()

    assert raw == b"<EOF>"


async def test_a_head_trickling_in_gets_408_at_the_header_timeout_and_the_connection_closes() -> None:
    async with running_server(
        RecordingProducer(), header_timeout_seconds=0.5, keep_alive_timeout_seconds=0.2
    ) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks HTTP/1.1\r\n")
        raw = b""
        for n in range(50):  # one header line every 0.1 s, never the blank line; bounded at 5 s
            writer.write(b"x-trickle-%d: 1\r\n" % n)
            raw = await read_until_quiet(reader, 0.1)
            if raw:
                break
        raw += await read_until_quiet(reader, 2)
        writer.close()

    assert statuses(raw) == [408]
    assert raw.endswith(b"<EOF>")


async def test_after_an_answer_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    async with running_server(RecordingProducer(), keep_alive_timeout_seconds=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post_request(b"{}"))
        raw = await read_until_quiet(reader, 5)
        writer.close()

    assert statuses(raw) == [202]
    assert raw.endswith(b"<EOF>")


async def test_at_the_connection_bound_the_connection_idle_the_longest_makes_room_for_a_request() -> None:
    async with running_server(RecordingProducer(), max_connections=3) as port:
        oldest = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        others = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        raw = await exchange(port, post_request(b"{}"), read_timeout=2)
        closed = await read_until_quiet(oldest[0], 2)
        still_open = [await read_until_quiet(reader, 0.2) for reader, _ in others]
        for _, writer in [oldest, *others]:
            writer.close()

    assert statuses(raw) == [202]
    assert closed == b"<EOF>"
    assert still_open[-1] == b""  # the youngest idle connection is still open


def chunked_post(body: bytes, chunk_size: int = 64 * 1024) -> bytes:
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    return (
        b"POST /webhooks HTTP/1.1\r\nhost: ingress\r\n"
        + AUTH
        + b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        + b"0\r\n\r\n"
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_client_that_sends_a_2_mib_body_whole_before_reading_gets_its_413_every_time(
    impl: str, framing: str
) -> None:
    body = b'{"pad":"' + b"x" * TWO_MIB + b'"}'
    request = post_request(body) if framing == "content-length" else chunked_post(body)
    async with running_server(RecordingProducer(), http_impl=impl) as port:
        answers = [await send_all_then_read(port, request) for _ in range(10)]

    assert [statuses(raw) for raw in answers] == [[413]] * 10
    assert all(raw.endswith(b"<EOF>") for raw in answers), [raw[-40:] for raw in answers]


async def test_a_client_that_sends_huge_headers_and_a_body_before_reading_gets_its_431() -> None:
    head = b"POST /webhooks HTTP/1.1\r\nhost: ingress\r\n" + b"x-junk: " + b"a" * 8192 + b"\r\n"
    request = head + b"content-length: %d\r\n\r\n" % TWO_MIB + b"x" * TWO_MIB
    async with running_server(RecordingProducer(), max_header_bytes=4096) as port:
        answers = [await send_all_then_read(port, request) for _ in range(5)]

    assert [statuses(raw) for raw in answers] == [[431]] * 5
    assert all(raw.endswith(b"<EOF>") for raw in answers)


async def test_a_client_that_never_stops_sending_after_its_413_is_cut_off() -> None:
    # The drain after the answer is bounded in bytes: an endless sender is disconnected.
    async with running_server(RecordingProducer(), max_body_bytes=1024) as port:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post_request(b"").replace(b"content-length: 0", b"content-length: 999999999"))
        sent = await send_until_refused(writer, limit=20 * LINGER_MAX_BYTES)
        writer.close()

    assert sent < 20 * LINGER_MAX_BYTES


async def send_until_refused(writer: asyncio.StreamWriter, *, limit: int) -> int:
    """Bytes written until the connection broke (or `limit`, if it never did)."""
    sent = 0
    try:
        while sent < limit:
            writer.write(b"x" * 65536)
            await writer.drain()
            sent += 65536
    except ConnectionError:
        pass
    return sent


async def test_an_httpx_client_posting_2_mib_gets_413_every_time() -> None:
    body = b'{"pad":"' + b"x" * TWO_MIB + b'"}'
    async with running_server(RecordingProducer()) as port:
        answers = await post_with_httpx(f"http://127.0.0.1:{port}", body, times=10)

    assert answers == [413] * 10


async def post_with_httpx(url: str, body: bytes, *, times: int) -> list[int]:
    """Post `times` times; a small send buffer keeps the body in flight, as on a real network."""
    headers = {"authorization": AUTH_VALUE, "content-type": "application/json"}
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)])
    async with httpx.AsyncClient(transport=transport, base_url=url, timeout=30) as client:
        answers = [await client.post("/webhooks", content=body, headers=headers) for _ in range(times)]
    return [answer.status_code for answer in answers]


@pytest.mark.parametrize(
    ("method", "path", "public", "admin"),
    [
        ("POST", "/webhooks", 202, 404),
        ("GET", "/openapi.json", 200, 404),
        ("GET", "/healthz", 404, 200),
        ("GET", "/readyz", 404, 200),
        ("GET", "/metrics", 404, 200),
    ],
)
async def test_the_public_port_serves_the_webhook_routes_and_the_admin_port_probes_and_metrics(
    method: str, path: str, public: int, admin: int
) -> None:
    async with running_servers(RecordingProducer()) as served:
        headers = {"authorization": AUTH_VALUE, "content-type": "application/json"}
        public_url, admin_url = (f"http://127.0.0.1:{p}{path}" for p in (served.port, served.admin_port))
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            on_public = await client.request(method, public_url, content=b"{}")
            on_admin = await client.request(method, admin_url, content=b"{}")

    assert (on_public.status_code, on_admin.status_code) == (public, admin)


class HeldProducer(RecordingProducer):
    """Holds every produce until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.producing = asyncio.Event()
        self.release = asyncio.Event()

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        self.producing.set()
        await self.release.wait()
        return await super().produce(topic, value, key, headers)


async def test_a_stop_drains_the_public_port_while_the_admin_port_says_shutting_down_then_both_close() -> (
    None
):
    producer = HeldProducer()
    async with running_servers(producer) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(post_request(b'{"n":1}'))
        await asyncio.wait_for(producer.producing.wait(), 10)

        served.servers.stop()
        for _ in range(100):  # bounded: uvicorn checks its flag every 0.1 s
            if await refuses_connections(served.port):
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=10) as client:
            during = await client.get(f"http://127.0.0.1:{served.admin_port}/readyz")
        producer.release.set()
        answer = await read_until_quiet(reader, 5)
        writer.close()
        await asyncio.wait_for(served.task, 30)

        assert await refuses_connections(served.port)
        assert await refuses_connections(served.admin_port)
    assert during.status_code == 503
    assert during.json()["checks"]["shutting_down"] is True
    assert statuses(answer) == [202]  # the request in flight was finished, not dropped


async def test_an_admin_port_already_taken_stops_the_public_server_too_and_fails() -> None:
    port, admin_port = two_free_ports()
    settings = ingress_settings(host="127.0.0.1", port=port, admin_port=admin_port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", admin_port))
        taken.listen()
        servers = IngressServers(create_app(settings, producer=RecordingProducer()), settings)

        with pytest.raises(ServerFailed, match="admin"):
            await asyncio.wait_for(servers.serve(), 30)

    assert await refuses_connections(port)
