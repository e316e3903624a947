"""Composition root: the Kafka clients, the LRS client, the forwarder and the probe server, wired
together here and nowhere else. Building connects nothing; `run()` starts, forwards until
`request_stop()` (SIGTERM, SIGINT), and closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn
from aiokafka import AIOKafkaConsumer

from common.producer import ManagedProducer, reliable_producer_kwargs
from consumer.lag import LagMonitor
from lrs_forward.forwarder import Forwarder
from lrs_forward.http import ProbeApp
from lrs_forward.lrs import LrsClient
from lrs_forward.metrics import ForwarderMetrics
from lrs_forward.settings import LrsForwardSettings

log = structlog.get_logger("lrs_forward")

START_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartFailed(Exception):
    """The forwarder could not start; the message is one line."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: ours finishes the batch in flight first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ForwarderApp:
    """One forwarder process: built from settings, started by `run()`."""

    def __init__(self, settings: LrsForwardSettings) -> None:
        self.settings = settings
        self.metrics = ForwarderMetrics.create()
        kafka = settings.kafka.aiokafka_kwargs()
        self.consumer = AIOKafkaConsumer(
            **kafka,
            group_id=settings.group_id,
            enable_auto_commit=False,  # committed only after the LRS took the batch
            isolation_level="read_committed",  # the consumer publishes statements in transactions
            auto_offset_reset="earliest",  # a new group forwards everything the topic holds
            max_poll_records=settings.batch_max_statements,
            session_timeout_ms=settings.session_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
        )
        self.producer = ManagedProducer(
            reliable_producer_kwargs(settings.kafka),
            close_timeout_seconds=CLOSE_TIMEOUT_SECONDS,
            start_timeout_seconds=START_TIMEOUT_SECONDS,
        )
        self.lrs = LrsClient(settings)
        self.forwarder = Forwarder(settings, self.consumer, self.lrs, self.producer, self.metrics)
        self.lag = LagMonitor(lambda: self.consumer, self.metrics.partition_lag, self.metrics.group_lag)
        self.probes = ProbeApp(self.ready, self.metrics.registry)
        self.server = _Server(
            uvicorn.Config(
                self.probes,
                loop="none",
                lifespan="off",
                access_log=False,  # probes every few seconds would drown the other lines
                log_config=None,
                server_header=False,
                timeout_graceful_shutdown=5,
            )
        )
        self._started = False

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """/readyz: Kafka answers, partitions assigned, the LRS answers, not shutting down."""
        forwarder = self.forwarder
        assigned = len(self.consumer.assignment()) if self._started else 0
        kafka = await self.kafka_reachable(2.0)
        lrs = await forwarder.lrs_reachable()
        checks = {
            "kafka_reachable": kafka,
            "assigned_partitions": assigned,
            "lrs_reachable": lrs,
            "retrying": forwarder.retrying,
            "last_batch_ok": forwarder.last_batch_ok,
            "in_flight_batch_seconds": round(forwarder.in_flight_seconds(), 1),
            "shutting_down": forwarder.stopping,
        }
        return kafka and assigned > 0 and lrs and not forwarder.stopping, checks

    async def kafka_reachable(self, timeout: float) -> bool:
        """True when a broker answers a metadata request within `timeout` seconds."""
        if not self.producer.usable():
            return False
        try:
            async with asyncio.timeout(timeout):
                await self.producer.current.client.fetch_all_metadata()
        except Exception:  # any failure means "not reachable" to a readiness probe
            return False
        return True

    async def start(self) -> asyncio.Task[None]:
        """Listen on the probe port, start the Kafka clients, check the topics, subscribe."""
        settings = self.settings
        try:
            listener = socket.create_server((settings.http_host, settings.http_port), reuse_port=False)
        except OSError as exc:
            raise StartFailed(
                f"cannot listen on {settings.http_host}:{settings.http_port}: {exc.strerror}"
            ) from None
        served = asyncio.create_task(self.server.serve(sockets=[listener]), name="lrs-forward-http")
        where = settings.kafka.bootstrap_servers
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                await self.consumer.start()
                self._started = True
                await self.producer.start()
                topics = await self.consumer.topics()
        except Exception as exc:
            raise StartFailed(f"cannot reach Kafka at {where}: {type(exc).__name__}") from None
        missing = [t for t in (settings.statements_topic, settings.dlq_topic) if t not in topics]
        if missing:
            names = ", ".join(missing)
            verb = "does not exist" if len(missing) == 1 else "do not exist"
            raise StartFailed(f"topic {names} {verb} (scripts/create-topics creates the topics)")
        self.consumer.subscribe([settings.statements_topic])
        await self.lag.start()
        log.info(
            "lrs_forward_started",
            topic=settings.statements_topic,
            group_id=settings.group_id,
            lrs=settings.url,
            http_port=settings.http_port,
        )
        return served

    async def run(self, *, handle_signals: bool = False) -> None:
        """Start, forward until `request_stop()`, close; `StartFailed` when it cannot start."""
        loop = asyncio.get_running_loop()
        served: asyncio.Task[None] | None = None
        try:
            served = await self.start()
            if handle_signals:
                for sig in SIGNALS:
                    loop.add_signal_handler(sig, self.forwarder.request_stop)
            await self.forwarder.run()
        finally:
            await self.close(served)

    async def close(self, served: asyncio.Task[None] | None) -> None:
        """Close the clients (the last commit is done by then) and stop the probe server."""
        started = time.monotonic()
        await self.lag.stop()
        with contextlib.suppress(Exception):  # leaving the group; the offsets are committed by now
            await asyncio.wait_for(self.consumer.stop(), CLOSE_TIMEOUT_SECONDS)
        await self.producer.stop()
        await self.lrs.close()
        self.server.should_exit = True
        if served is not None:
            await asyncio.gather(served, return_exceptions=True)
        log.info("lrs_forward_stopped", seconds=round(time.monotonic() - started, 2))
