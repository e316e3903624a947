"""The app behind a real uvicorn server (our protocol, limits and timeouts) on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ingress.app import create_app
from ingress.bootstrap import IngressServers
from ingress.producer import RecordProducer
from tests.support.broker import free_port
from tests.support.ingress_harness import PASSWORD, USERNAME, ingress_settings

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


def two_free_ports() -> tuple[int, int]:
    """Two different free loopback ports (the public and the admin one)."""
    public = free_port()
    admin = free_port()
    while admin == public:
        admin = free_port()
    return public, admin


@dataclass
class ServedIngress:
    """Both servers of the ingress, serving on loopback; `task` runs `servers.serve()`."""

    port: int
    admin_port: int
    servers: IngressServers
    task: asyncio.Task[None]


@asynccontextmanager
async def running_servers(producer: RecordProducer, **overrides: Any) -> AsyncIterator[ServedIngress]:
    """Serve the app on both ports, with uvicorn as `python -m ingress` configures it."""
    port, admin_port = two_free_ports()
    settings = ingress_settings(host="127.0.0.1", port=port, admin_port=admin_port, **overrides)
    servers = IngressServers(create_app(settings, producer=producer), settings)
    task = asyncio.create_task(servers.serve())
    try:
        for _ in range(200):
            if servers.started or task.done():
                break
            await asyncio.sleep(0.05)
        assert servers.started, "uvicorn did not start"
        yield ServedIngress(port, admin_port, servers, task)
    finally:
        if not task.done():
            servers.stop()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def running_server(producer: RecordProducer, **overrides: Any) -> AsyncIterator[int]:
    """Serve the app as `python -m ingress` does; yield the public port."""
    async with running_servers(producer, **overrides) as served:
        yield served.port


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


async def refuses_connections(port: int) -> bool:
    """True when nothing listens on the loopback port."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def statuses(raw: bytes) -> list[int]:
    """The status codes of the responses in `raw`, in order."""
    return [int(part[:3]) for part in raw.split(b"HTTP/1.1 ")[1:]]
