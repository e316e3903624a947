"""The app behind real uvicorn sockets, configured as in production: framing, limits, timeouts.

No Kafka here (a recording producer); what is tested is our HTTP protocol class and its settings.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.ingress_harness import RecordingProducer
from tests.support.ingress_server import (
    AUTH,
    exchange,
    post_request,
    read_until_quiet,
    running_server,
    statuses,
)

IMPLS = ["one-write", "httptools"]


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


async def test_connections_beyond_limit_concurrency_get_503() -> None:
    async with running_server(RecordingProducer(), limit_concurrency=2) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.2)  # let the server accept them
        raw = await exchange(port, post_request(b"{}"), read_timeout=2)
        for _, writer in held:
            writer.close()

    assert statuses(raw) == [503]
