"""Slow clients for the tests of the server's deadlines and bounds: connections that send nothing,
and connections that send a request head one line at a time."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest


def need_open_files(count: int) -> None:
    """Raise this process's soft limit on open files to `count` (up to the hard limit), or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"needs {count} open files, the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


@dataclass
class SlowClients:
    """Connections to one port: `idle` ones that sent nothing, `trickling` ones sending a head slowly."""

    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    trickling: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    received: dict[int, bytes] = field(default_factory=dict)  # what each trickling one was answered

    async def closed_by_server(self, within: float) -> tuple[int, int]:
        """How many idle and how many trickling connections the server closed, waiting up to `within` s."""
        idle, trickling = await asyncio.gather(
            asyncio.gather(*(_closed(reader, within) for reader, _ in self.idle)),
            asyncio.gather(
                *(_closed(reader, within, self.received, n) for n, (reader, _) in enumerate(self.trickling))
            ),
        )
        return sum(idle), sum(trickling)


async def _closed(
    reader: asyncio.StreamReader, within: float, received: dict[int, bytes] | None = None, n: int = 0
) -> bool:
    """True when EOF (or a reset) comes within `within` seconds; what arrived goes to `received[n]`."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return False
        except ConnectionError:
            chunk = b""
        if not chunk:
            if received is not None:
                received[n] = data
            return True
        data += chunk


@contextlib.asynccontextmanager
async def slow_clients(
    port: int, *, idle: int, trickling: int, every: float = 1.0
) -> AsyncIterator[SlowClients]:
    """Open `idle` connections that send nothing and `trickling` ones that send a POST head one header
    line every `every` seconds (never its end); close them all on exit."""
    idle_connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(idle)]
    trickling_connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(trickling)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /webhooks HTTP/1.1\r\n")
        for n in range(3600):
            await asyncio.sleep(every)
            try:
                writer.write(b"x-trickle-%d: 1\r\n" % n)
                await writer.drain()
            except (ConnectionError, RuntimeError):
                return

    tasks = [asyncio.create_task(trickle(writer)) for _, writer in trickling_connections]
    try:
        yield SlowClients(idle_connections, trickling_connections)
    finally:
        for task in tasks:
            task.cancel()
        for _, writer in idle_connections + trickling_connections:
            writer.close()
