"""Putting bodies on Kafka: an idempotent acks=all producer that answers only with an acknowledgement.

`KafkaRecordProducer.produce` returns the partition and offset once the broker has the record, or
raises `ProduceFailed` (no acknowledgement within the timeout, broker unreachable, producer being
rebuilt). It never gives up for good: while Kafka is away it keeps reconnecting in the background,
and when aiokafka's sender dies on a fatal error (e.g. OutOfOrderSequenceNumber after a broker
lost its state) the producer is replaced by a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from common.kafka import KafkaConnectionSettings

log = structlog.get_logger("ingress.producer")

Headers = Sequence[tuple[str, bytes]]
ProducerFactory = Callable[..., Any]

# Headroom over the largest body for the record's key, headers and batch framing.
RECORD_OVERHEAD_BYTES = 64 * 1024
# Batches big enough for one record from each of many concurrent requests.
MAX_BATCH_BYTES = 512 * 1024


class ProduceFailed(Exception):
    """Kafka did not acknowledge the record; the client should retry later."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where Kafka stored a record."""

    partition: int
    offset: int


class RecordProducer(Protocol):
    """What the HTTP app needs from a producer."""

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Store one record and return where it went, or raise `ProduceFailed`."""
        ...

    async def ready(self) -> bool:
        """True when a produce is expected to succeed now."""
        ...


class KafkaRecordProducer:
    """An aiokafka producer (acks=all, idempotent) that reconnects and rebuilds itself."""

    def __init__(
        self,
        kafka: KafkaConnectionSettings,
        *,
        topic: str,
        timeout_seconds: float,
        linger_ms: int,
        max_body_bytes: int,
        factory: ProducerFactory = AIOKafkaProducer,
    ) -> None:
        self._topic = topic
        self._timeout = timeout_seconds
        self._factory = factory
        self._kwargs: dict[str, Any] = {
            **kafka.aiokafka_kwargs(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "max_batch_size": MAX_BATCH_BYTES,
            "max_request_size": max_body_bytes + RECORD_OVERHEAD_BYTES,
            # The broker waits this long for replicas; our own timeout answers the client sooner.
            "request_timeout_ms": max(int(timeout_seconds * 1000), 1000),
            "retry_backoff_ms": 100,
        }
        self._producer: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stopped = False

    async def start(self) -> None:
        """Connect in the background; wait up to the produce timeout for the first connection."""
        self._reconnect()
        assert self._connecting is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._connecting), self._timeout)
        if self._producer is None:
            log.warning("kafka_unreachable_at_start", retrying=True)

    async def stop(self) -> None:
        """Flush what is pending (bounded by the produce timeout) and close."""
        self._stopped = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._close(producer)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Store one record and return where it went, or raise `ProduceFailed`."""
        producer = self._producer
        if producer is None or self._is_dead(producer):
            self._replace(producer)
            raise ProduceFailed("not connected to Kafka")
        try:
            async with asyncio.timeout(self._timeout):
                future = await producer.send(topic, value, key=key, headers=list(headers))
                # Shielded: cancelling aiokafka's future would not stop the record, only our view of it.
                metadata = await asyncio.shield(future)
        except TimeoutError:
            raise ProduceFailed(f"no acknowledgement within {self._timeout:g} s") from None
        except KafkaError as exc:
            if self._is_dead(producer):
                self._replace(producer)
            raise ProduceFailed(f"Kafka refused the record: {exc!r}") from exc
        return Delivery(metadata.partition, metadata.offset)

    async def ready(self) -> bool:
        """True when the producer runs and a metadata refresh just reached a broker."""
        producer = self._producer
        if producer is None or self._is_dead(producer):
            return False
        try:
            async with asyncio.timeout(self._timeout):
                refreshed = bool(await producer.client.force_metadata_update())
        except (TimeoutError, KafkaError):
            return False
        return refreshed and bool(producer.client.cluster.available_partitions_for_topic(self._topic))

    @staticmethod
    def _is_dead(producer: Any) -> bool:
        # aiokafka has no public flag for it: once the sender task has ended, every send fails.
        sender_task = getattr(producer._sender, "sender_task", None)
        return sender_task is not None and sender_task.done()

    def _replace(self, broken: Any) -> None:
        """Drop a dead producer (if any) and start connecting a new one, once."""
        if broken is not None and broken is self._producer:
            log.error("kafka_producer_died", action="replacing")
            self._producer = None
            self._spawn_close(broken)
        self._reconnect()

    def _reconnect(self) -> None:
        if self._stopped or (self._connecting is not None and not self._connecting.done()):
            return
        self._connecting = asyncio.create_task(self._connect_until_done(), name="kafka-connect")

    async def _connect_until_done(self) -> None:
        delay = 0.2
        while True:
            producer = self._factory(**self._kwargs)
            try:
                await producer.start()
                # Fetch the topic's partitions now, so the first request does not pay for it.
                await producer.partitions_for(self._topic)
            except (KafkaError, OSError) as exc:
                log.warning("kafka_connect_failed", error=repr(exc), retry_in_s=delay)
                self._spawn_close(producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            log.info("kafka_connected", topic=self._topic)
            return

    def _spawn_close(self, producer: Any) -> None:
        task = asyncio.create_task(self._close(producer), name="kafka-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, producer: Any) -> None:
        # stop() flushes; with the broker gone it would wait forever, so bound it.
        try:
            await asyncio.wait_for(producer.stop(), self._timeout)
        except TimeoutError:
            log.warning("kafka_flush_timed_out", seconds=self._timeout)
        except KafkaError as exc:
            log.warning("kafka_close_failed", error=repr(exc))


class NoopProducer:
    """Acknowledges at once without storing anything: the benchmark's baseline and a test double."""

    def __init__(self) -> None:
        self._offset = -1

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Pretend to store the record at the next offset of partition 0."""
        self._offset += 1
        return Delivery(0, self._offset)

    async def ready(self) -> bool:
        """Always ready."""
        return True
