#!/usr/bin/env python3
"""Compare HTTP servers for the ingress: requests/s of the real app, and slow clients.

    .venv/bin/python bench/servers.py [--rounds 3] [--servers uvicorn,granian,hypercorn]

Each candidate serves the real `IngressApp` with the no-op producer (no Kafka: the server is what
is compared) in a process of its own on uvloop, configured like the ingress (head timeout 2 s,
keep-alive 2 s for this test). Per round, in alternating order:

- **throughput**: the bench's keep-alive client (`bench/ingress.py`'s `drive`), c=64;
- **slow clients**: 300 connections that send nothing and 20 that send one header line a second,
  then a real authenticated POST on a new connection (its status and time), and after 8 s how
  many of the 320 the server has closed.

Granian and Hypercorn are not dependencies of the project: `pip install granian hypercorn` first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import read_answer  # noqa: E402
from bench.ingress import PASSWORD, USERNAME, drive, free_port, requests_bytes  # noqa: E402

HEADER_TIMEOUT = 2


def environment(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_")}
    env.update(
        INGRESS_HOST="127.0.0.1",
        INGRESS_PORT=str(port),
        INGRESS_ADMIN_PORT=str(free_port()),
        INGRESS_BASIC_AUTH_USERNAME=USERNAME,
        INGRESS_BASIC_AUTH_PASSWORD=PASSWORD,
        INGRESS_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        INGRESS_KEEP_ALIVE_SECONDS=str(HEADER_TIMEOUT),
        INGRESS_LOG_LEVEL="WARNING",
    )
    return env


def serve(kind: str) -> None:
    """The public app with the no-op producer, under `kind`, until SIGTERM."""
    import uvloop

    from ingress.app import create_app
    from ingress.bootstrap import configure_ingress_logging, run_server
    from ingress.producer import NoopProducer
    from ingress.settings import IngressSettings

    settings = IngressSettings()
    configure_ingress_logging("ingress-candidate", settings.log_level)
    app = create_app(settings, producer=NoopProducer())

    async def main() -> None:
        if kind == "uvicorn":
            await run_server(app, settings)
        elif kind == "hypercorn":
            from hypercorn.asyncio import serve as hypercorn_serve
            from hypercorn.config import Config

            config = Config()
            config.bind = [f"127.0.0.1:{settings.port}"]
            config.keep_alive_timeout = HEADER_TIMEOUT
            config.read_timeout = HEADER_TIMEOUT
            config.h11_max_incomplete_size = settings.max_header_bytes
            config.accesslog = None
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type, unused-ignore]
        else:
            from granian.constants import HTTPModes, Interfaces
            from granian.http import HTTP1Settings
            from granian.server.embed import Server

            server = Server(
                app,
                address="127.0.0.1",
                port=settings.port,
                interface=Interfaces.ASGINL,
                http=HTTPModes.http1,
                websockets=False,
                backpressure=256,
                backlog=1024,
                http1_settings=HTTP1Settings(header_read_timeout=HEADER_TIMEOUT * 1000),
                log_level="warning",  # type: ignore[arg-type, unused-ignore]
            )
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.stop)
            await server.serve()

    uvloop.run(main())


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit("server not listening after 30 s")


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF or reset), without waiting."""
    try:
        return await asyncio.wait_for(reader.read(65536), 0.001) == b"" or reader.at_eof()
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def slow_clients(port: int) -> tuple[int, float, int, int]:
    """(status of the real POST, its seconds, idle closed, trickling closed) after 8 s."""
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
    trickling = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /webhooks HTTP/1.1\r\n")
        for n in range(60):
            await asyncio.sleep(1)
            try:
                writer.write(b"x-trickle-%d: 1\r\n" % n)
                await writer.drain()
            except (ConnectionError, RuntimeError):
                return

    tasks = [asyncio.create_task(trickle(writer)) for _reader, writer in trickling]
    await asyncio.sleep(1.5)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(requests_bytes()[0])
    try:
        status = await asyncio.wait_for(read_answer(reader), 10)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        status = 0
    seconds = time.perf_counter() - started
    writer.close()
    await asyncio.sleep(8 - 1.5)
    idle_closed = sum([await closed_by_server(r) for r, _w in idle])
    trickling_closed = sum([await closed_by_server(r) for r, _w in trickling])
    for task in tasks:
        task.cancel()
    for _r, w in idle + trickling:
        w.close()
    return status, seconds, idle_closed, trickling_closed


def start(kind: str, port: int) -> subprocess.Popen[bytes]:
    """This script serving as `kind` on `port`."""
    command = [sys.executable, str(ROOT / "bench" / "servers.py"), "--serve", kind]
    return subprocess.Popen(command, cwd=ROOT, env=environment(port))


async def measure(kind: str, requests: int) -> tuple[float, tuple[int, float, int, int]]:
    port = free_port()
    process = start(kind, port)
    try:
        await wait_listening(port, process)
        payloads = requests_bytes()
        await drive(port, kind, 8, 300, payloads, process.pid)
        result = await drive(port, kind, 64, requests, payloads, process.pid)
        print(result.line(), flush=True)
        slow = await slow_clients(port)
        print(
            f"{kind}: slow clients -> POST {slow[0]} in {slow[1] * 1000:.0f} ms; closed after 8 s: "
            f"idle {slow[2]}/300, trickling {slow[3]}/20",
            flush=True,
        )
        return result.rps, slow
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def main(args: argparse.Namespace) -> None:
    kinds = args.servers.split(",")
    figures: dict[str, list[float]] = {kind: [] for kind in kinds}
    for number in range(args.rounds):
        for kind in kinds if number % 2 == 0 else list(reversed(kinds)):
            rps, _slow = await measure(kind, args.requests)
            figures[kind].append(rps)
    print(f"\n== c=64 req/s, median of {args.rounds} (range)")
    for kind, all_rps in figures.items():
        print(f"{kind:<10} {statistics.median(all_rps):7.0f} ({min(all_rps):.0f}-{max(all_rps):.0f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--servers", default="uvicorn,granian,hypercorn")
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments.serve)
    else:
        import uvloop

        uvloop.run(main(arguments))
