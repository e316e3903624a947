"""The app behind a real uvicorn server (our protocol, limits and timeouts) on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ingress.app import create_app
from ingress.bootstrap import _Server, server_config
from tests.support.broker import free_port
from tests.support.ingress_harness import PASSWORD, USERNAME, RecordingProducer, ingress_settings

AUTH = b"authorization: Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()) + b"\r\n"


def post_request(body: bytes, extra: bytes = b"") -> bytes:
    """A complete authenticated JSON POST /webhooks, as bytes on the wire."""
    return (
        b"POST /webhooks HTTP/1.1\r\nhost: ingress\r\n"
        + AUTH
        + b"content-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


@asynccontextmanager
async def running_server(producer: RecordingProducer, **overrides: Any) -> AsyncIterator[int]:
    """Serve the app with uvicorn as `python -m ingress` configures it; yield the port."""
    settings = ingress_settings(host="127.0.0.1", port=free_port(), **overrides)
    server = _Server(server_config(create_app(settings, producer=producer), settings))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield settings.port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def exchange(port: int, data: bytes, *, read_timeout: float = 10) -> bytes:
    """Send `data` on a new connection and read until the server closes it or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_until_quiet(reader, read_timeout)
    finally:
        writer.close()


async def send_all_then_read(port: int, data: bytes, *, send_buffer: int = 64 * 1024) -> bytes:
    """Write all of `data`, then read, as most HTTP clients do; `<RESET>` marks a reset connection.

    The small send buffer keeps most of `data` in flight, as on a real network: on loopback the
    kernel would otherwise buffer megabytes and hide a reset.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            return b"<RESET>"
        return await read_until_quiet(reader, 10)
    finally:
        writer.close()


async def read_until_quiet(reader: asyncio.StreamReader, quiet: float) -> bytes:
    """What arrives until EOF (marked `<EOF>`) or `quiet` seconds without data."""
    out = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), quiet)
        except TimeoutError:
            return out
        except ConnectionError:
            return out + b"<RESET>"
        if not chunk:
            return out + b"<EOF>"
        out += chunk


def statuses(raw: bytes) -> list[int]:
    """The status codes of the responses in `raw`, in order."""
    return [int(part[:3]) for part in raw.split(b"HTTP/1.1 ")[1:]]
