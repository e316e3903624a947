"""Composition root: settings, logging, producer and the two HTTP servers, built at start-up and
nowhere else.

The public server (INGRESS_PORT) serves the webhook routes; the admin server (INGRESS_ADMIN_PORT)
serves /healthz, /readyz and /metrics. Both are uvicorn servers on the same event loop, and they
stop together (`IngressServers`): a signal stops the public one, graceful as before, while the admin
one keeps answering (/readyz says `shutting_down`) until the public one is done; a server that
cannot start (its port taken) stops the other, and the process exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Iterator

import structlog
import uvicorn

from common.gc_tuning import tune_after_startup
from common.logging import configure_logging
from common.settings import EXIT_INVALID_SETTINGS, InvalidSettings, load_settings
from common.tracing import NO_TRACING, Tracing, configure_tracing
from ingress.app import AdminApp, IngressApp, create_app
from ingress.limits import InFlightLimit, ServerConnections, raise_open_files_limit
from ingress.producer import KafkaRecordProducer
from ingress.requestlog import request_log
from ingress.settings import IngressSettings
from ingress.transport import http_protocol

log = structlog.get_logger("ingress")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The admin port serves probes and scrapes, never bodies: a few requests at once are plenty.
ADMIN_LIMIT_CONCURRENCY = 32


class ServerFailed(Exception):
    """One of the HTTP servers could not start or ended by itself (e.g. its port was taken)."""


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


def _uvicorn_config(
    app: object, settings: IngressSettings, *, host: str, port: int, impl: str, limit: int, graceful: int
) -> uvicorn.Config:
    """uvicorn's settings for one port: our protocol (head bound and deadline, connection bound,
    lingering close), the in-flight limit around the app; no logging or signals of uvicorn's own."""
    connections = ServerConnections(settings.max_connections)
    return uvicorn.Config(
        InFlightLimit(app, limit, settings.retry_after_seconds, connections),
        host=host,
        port=port,
        loop="none",  # the running loop (uvloop, see main) is the one the producer lives on
        # uvicorn's httptools protocol behind our transports (ingress/transport.py).
        http=http_protocol(
            "one-write" if impl == "one-write" else "httptools",
            settings.max_header_bytes,
            settings.max_body_bytes,
            header_timeout=settings.header_timeout_seconds,
            keep_alive_timeout=settings.keep_alive_timeout_seconds,
            connections=connections,
            retry_after_seconds=settings.retry_after_seconds,
        ),
        # Requests in flight are bounded by InFlightLimit, connections by ServerConnections: uvicorn's
        # own limit counts open connections, idle ones included (503 with 256 idle connections).
        limit_concurrency=None,
        timeout_keep_alive=max(1, math.ceil(settings.keep_alive_timeout_seconds)),
        backlog=min(settings.max_connections, 65535),
        ws="none",  # the app serves no WebSocket; nothing to upgrade to
        lifespan="off",
        access_log=False,  # our own line per request carries what matters and nothing personal
        log_config=None,
        server_header=False,
        proxy_headers=False,  # nothing here uses the client address; skips a middleware per request
        timeout_graceful_shutdown=graceful,
    )


def server_config(app: IngressApp, settings: IngressSettings) -> uvicorn.Config:
    """uvicorn's settings for the public app: each answer in one write (INGRESS_HTTP_IMPL)."""
    return _uvicorn_config(
        app,
        settings,
        host=settings.host,
        port=settings.port,
        impl=settings.http_impl,
        limit=settings.limit_concurrency,
        graceful=graceful_shutdown_seconds(settings),
    )


def admin_server_config(app: AdminApp, settings: IngressSettings) -> uvicorn.Config:
    """uvicorn's settings for the admin app: uvicorn's own writes, the same bounds and deadlines."""
    return _uvicorn_config(
        app,
        settings,
        host=settings.admin_host or settings.host,
        port=settings.admin_port,
        impl="httptools",
        limit=ADMIN_LIMIT_CONCURRENCY,
        # /readyz waits at most the produce timeout for its metadata refresh.
        graceful=math.ceil(settings.produce_timeout_seconds) + 2,
    )


class IngressServers:
    """The public and the admin server of one process, on one event loop, stopped together."""

    def __init__(self, app: IngressApp, settings: IngressSettings) -> None:
        self.app = app
        self.public = _Server(server_config(app, settings))
        self.admin = _Server(admin_server_config(app.admin, settings))

    @property
    def started(self) -> bool:
        """True once both servers listen."""
        return self.public.started and self.admin.started

    def stop(self) -> None:
        """What SIGTERM or SIGINT does: stop the public server gracefully (the admin one follows it);
        a second call stops waiting for the requests in flight."""
        if self.public.should_exit:
            log.warning("forced_exit", hint="second signal: not waiting for the requests in flight")
            self.public.force_exit = self.admin.force_exit = True
        self.public.should_exit = True
        self.app.admin.shutting_down = True

    async def serve(self) -> None:
        """Serve until the public server stopped (after `stop()`), or either one failed; then stop both.

        Raises `ServerFailed` when a server could not start or ended without `stop()`.
        """
        public = asyncio.create_task(_serve(self.public), name="ingress-public-server")
        admin = asyncio.create_task(_serve(self.admin), name="ingress-admin-server")
        try:
            await asyncio.wait({public, admin}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whichever ended first, the other follows; the admin one answers until the public one is done.
            self.public.should_exit = True
            self.app.admin.shutting_down = True
            await asyncio.wait({public})
            self.admin.should_exit = True
            await asyncio.wait({admin})
        failed = [name for name, task in (("public", public), ("admin", admin)) if not task.result()]
        if failed:
            raise ServerFailed(f"the {' and '.join(failed)} server could not start or stopped by itself")


async def _serve(server: uvicorn.Server) -> bool:
    """Run one uvicorn server; True when it started and was asked to stop."""
    try:
        await server.serve()
    except SystemExit:
        # uvicorn's answer to a port it cannot bind (it logged the OSError): not ours to exit on.
        log.error("server_failed_to_start", host=server.config.host, port=server.config.port)
        return False
    except Exception as exc:
        log.error("server_crashed", port=server.config.port, error=repr(exc)[:500])
        return False
    return server.started and server.should_exit


async def run_server(app: IngressApp, settings: IngressSettings) -> None:
    """Tune the garbage collector, serve the public and the admin port until SIGTERM or SIGINT, then
    finish the requests in flight; a second signal stops waiting for them."""
    servers = IngressServers(app, settings)
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, servers.stop)
    # Up (modules imported, producer started), not serving yet: the records and futures aiokafka holds
    # until Kafka acknowledges were promoted and set off 53 ms full collections (docs/performance.md).
    log.info("gc_tuned", frozen_objects=tune_after_startup())
    try:
        await servers.serve()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def serve(settings: IngressSettings, tracing: Tracing = NO_TRACING) -> None:
    """Start the producer, serve until told to stop, then flush and close the producer (and export
    the spans still pending)."""
    if settings.unauthenticated:
        log.warning(
            "authentication_disabled", hint="INGRESS_ALLOW_UNAUTHENTICATED=true: local development only"
        )
    if settings.weak_basic_password:
        log.warning("weak_basic_password", hint="use at least 16 random characters")
    log.info(
        "ingress_starting",
        port=settings.port,
        admin_port=settings.admin_port,
        topic=settings.raw_topic,
        basic_auth=settings.basic_auth_configured,
        signing_secret_count=len(settings.signing_secrets),
        kafka=settings.kafka.bootstrap_servers,
        tracing=tracing.enabled,
    )
    producer = build_producer(settings)
    await producer.start()
    try:
        await run_server(create_app(settings, producer=producer, tracing=tracing), settings)
    finally:
        await producer.stop()
        tracing.shutdown()
        log.info("ingress_stopped")


def configure_ingress_logging(service: str, level: str) -> None:
    """The project's logging; the request lines rendered directly when the lines are JSON."""
    configure_logging(service, level)
    # The same test configure_logging makes: JSON lines unless stdout is a terminal.
    if not sys.stdout.isatty():
        request_log.direct_to(sys.stdout, level)


def main() -> None:
    """`python -m ingress`: exit 0 after a signal, 2 on invalid settings, 1 when a server failed."""
    import uvloop

    settings = load_settings(IngressSettings, "ingress")
    try:
        tracing = configure_tracing("exam-events-ingress")
    except InvalidSettings as exc:
        print(f"ingress: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTINGS) from None
    configure_ingress_logging("ingress", settings.log_level)
    # Both ports' connection bounds, plus the broker connections, logs and the like.
    wanted = 2 * settings.max_connections + 256
    if (open_files := raise_open_files_limit(wanted)) < wanted:
        log.warning("open_files_limit_low", limit=open_files, wanted=wanted, hint="raise `ulimit -n`")
    try:
        uvloop.run(serve(settings, tracing))
    except ServerFailed as exc:
        log.error("ingress_failed", reason=str(exc))
        raise SystemExit(1) from None
