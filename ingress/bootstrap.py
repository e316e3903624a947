"""Composition root: settings, logging, producer and HTTP server, built at start-up and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from common.logging import configure_logging
from ingress.app import IngressApp, create_app
from ingress.producer import KafkaRecordProducer
from ingress.settings import IngressSettings
from ingress.transport import OneWriteHttpToolsProtocol

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


async def run_server(app: IngressApp, settings: IngressSettings) -> None:
    """Serve the app until SIGTERM or SIGINT, then finish the requests in flight."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",  # the running loop (uvloop, see main) is the one the producer lives on
        # httptools, with each answer's head and body leaving in one write (see ingress/transport.py).
        http=OneWriteHttpToolsProtocol,
        ws="none",  # the app serves no WebSocket; nothing to upgrade to
        lifespan="off",
        access_log=False,  # our own line per request carries what matters and nothing personal
        log_config=None,
        server_header=False,
        proxy_headers=False,  # nothing here uses the client address; skips a middleware per request
        timeout_graceful_shutdown=int(settings.produce_timeout_seconds) + 5,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)
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
