"""Composition root: settings, logging, producer and HTTP server, built at start-up and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from common.logging import configure_logging
from ingress.app import IngressApp, create_app
from ingress.producer import KafkaRecordProducer
from ingress.settings import IngressSettings
from ingress.transport import http_protocol

log = structlog.get_logger("ingress")


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: ours flushes Kafka first and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would re-raise the captured SIGTERM after serving, killing us before the flush.
        yield


def build_producer(settings: IngressSettings) -> KafkaRecordProducer:
    """The Kafka producer the settings describe (not started)."""
    return KafkaRecordProducer(
        settings.kafka,
        topic=settings.raw_topic,
        timeout_seconds=settings.produce_timeout_seconds,
        linger_ms=settings.linger_ms,
        max_body_bytes=settings.max_body_bytes,
    )


def graceful_shutdown_seconds(settings: IngressSettings) -> int:
    """Long enough for a request that just started: its body, its produce, and a margin."""
    return math.ceil(settings.body_read_timeout_seconds + settings.produce_timeout_seconds) + 2


def server_config(app: IngressApp, settings: IngressSettings) -> uvicorn.Config:
    """uvicorn's settings for the app: protocol, limits, timeouts; no logging or signals of its own."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",  # the running loop (uvloop, see main) is the one the producer lives on
        # httptools, headers bounded, each answer's head and body in one write (ingress/transport.py).
        http=http_protocol(settings.http_impl, settings.max_header_bytes),
        limit_concurrency=settings.limit_concurrency,
        ws="none",  # the app serves no WebSocket; nothing to upgrade to
        lifespan="off",
        access_log=False,  # our own line per request carries what matters and nothing personal
        log_config=None,
        server_header=False,
        proxy_headers=False,  # nothing here uses the client address; skips a middleware per request
        timeout_graceful_shutdown=graceful_shutdown_seconds(settings),
    )


def _on_signal(server: uvicorn.Server) -> None:
    if server.should_exit:
        log.warning("forced_exit", hint="second signal: not waiting for the requests in flight")
        server.force_exit = True
    server.should_exit = True


async def run_server(app: IngressApp, settings: IngressSettings) -> None:
    """Serve the app until SIGTERM or SIGINT, then finish the requests in flight; a second signal exits."""
    server = _Server(server_config(app, settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, server)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(settings: IngressSettings) -> None:
    """Start the producer, serve until told to stop, then flush and close the producer."""
    if settings.unauthenticated:
        log.warning(
            "authentication_disabled", hint="INGRESS_ALLOW_UNAUTHENTICATED=true: local development only"
        )
    if settings.weak_basic_password:
        log.warning("weak_basic_password", hint="use at least 16 random characters")
    log.info(
        "ingress_starting",
        port=settings.port,
        topic=settings.raw_topic,
        basic_auth=settings.basic_auth_configured,
        signing_secret_count=len(settings.signing_secrets),
        kafka=settings.kafka.bootstrap_servers,
    )
    producer = build_producer(settings)
    await producer.start()
    try:
        await run_server(create_app(settings, producer=producer), settings)
    finally:
        await producer.stop()
        log.info("ingress_stopped")


def main() -> None:
    """`python -m ingress`."""
    import sys

    import uvloop
    from pydantic import ValidationError

    try:
        settings = IngressSettings()
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        print(f"ingress: invalid settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("ingress", settings.log_level)
    uvloop.run(serve(settings))
