"""Putting bodies on Kafka: an idempotent acks=all producer that answers only with an acknowledgement.

`KafkaRecordProducer.produce` returns the partition and offset once the broker has the record, or
raises `ProduceFailed` (no acknowledgement within the timeout, broker unreachable, producer being
rebuilt), or `RecordTooLarge` when the record cannot be stored on the topic at all. It never gives
up for good: while Kafka is away it keeps reconnecting in the background, and the aiokafka producer
is replaced by a fresh one (new producer id, sequence numbers from 0) when its sender task died, when
the broker answers with an error of the idempotent producer's state (OutOfOrderSequenceNumber,
UnknownProducerId, InvalidProducerEpoch, ProducerFenced: aiokafka fails the batch but keeps the
sender running, so every later batch of that partition would fail the same way), or after
`FAILURES_BEFORE_REPLACING` other failures in a row.

Each connection first reads the topic's `max.message.bytes` (admin client, which never creates the
topic) and caps aiokafka's `max_request_size` and batch size at it: a record the broker would refuse
is refused locally by `send()`, before it takes a sequence number. A broker that refuses a batch
anyway (the limit was lowered since) gets the producer replaced, so the refusal stays one 413.

Building, judging and closing the aiokafka producer is `common.producer.ManagedProducer`'s, as for
the consumer; this module adds the reconnect loop, the topic limit and the failure count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from common.kafka import KafkaConnectionSettings
from common.producer import ManagedProducer, ProducerFactory, reliable_producer_kwargs
from common.topics import max_message_bytes

log = structlog.get_logger("ingress.producer")

Headers = Sequence[tuple[str, bytes]]
LimitReader = Callable[[KafkaConnectionSettings, str], Awaitable[int]]

# Headroom over the largest body for the record's key, headers and batch framing.
RECORD_OVERHEAD_BYTES = 64 * 1024
# Batches big enough for one record from each of many concurrent requests.
MAX_BATCH_BYTES = 512 * 1024
# Other Kafka errors in a row (timeouts not counted) after which the producer is replaced anyway.
FAILURES_BEFORE_REPLACING = 3


class ProduceFailed(Exception):
    """Kafka did not acknowledge the record; the client should retry later."""


class RecordTooLarge(Exception):
    """The record is larger than the topic's `max.message.bytes`: no retry will store it."""


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
        topic_limit: LimitReader = max_message_bytes,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._timeout = timeout_seconds
        self._topic_limit = topic_limit
        self._max_record_bytes = max_body_bytes + RECORD_OVERHEAD_BYTES
        self._kwargs = reliable_producer_kwargs(
            kafka,
            linger_ms=linger_ms,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=self._max_record_bytes,
            # The broker waits this long for replicas; our own timeout answers the client sooner.
            request_timeout_ms=max(int(timeout_seconds * 1000), 1000),
            retry_backoff_ms=100,
        )
        # No start timeout: aiokafka's start() fails by itself when no bootstrap server answers,
        # and the reconnect loop retries it.
        self._producer = ManagedProducer(
            self._producer_kwargs, close_timeout_seconds=timeout_seconds, factory=factory
        )
        self._max_request_size = self._max_record_bytes  # as capped for the latest connection
        self._connecting: asyncio.Task[None] | None = None
        self._stopped = False
        self._failures = 0  # Kafka errors in a row (not timeouts) of the current producer

    async def start(self) -> None:
        """Connect in the background; wait up to the produce timeout for the first connection."""
        self._reconnect()
        assert self._connecting is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._connecting), self._timeout)
        if self._producer.current is None:
            log.warning("kafka_unreachable_at_start", retrying=True)

    async def stop(self) -> None:
        """Flush what is pending (bounded by the produce timeout) and close."""
        self._stopped = True
        if self._connecting is not None:
            self._connecting.cancel()
            # Whatever the connecting task ended with (cancelled, or a bug of ours) must not stop the close.
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self._producer.stop()

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Store one record and return where it went, or raise `ProduceFailed` / `RecordTooLarge`."""
        producer = self._producer.current
        broken = self._producer.broken()
        if producer is None or broken is not None:
            self._replace(broken)
            raise ProduceFailed("not connected to Kafka")
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    future = await producer.send(topic, value, key=key, headers=list(headers))
                except MessageSizeTooLargeError as exc:
                    # Refused by aiokafka itself (max_request_size, capped at the topic's limit):
                    # no sequence number was taken, the producer is fine.
                    raise RecordTooLarge(str(exc)) from None
                # Shielded: cancelling aiokafka's future would not stop the record, only our view of it.
                metadata = await asyncio.shield(future)
        except TimeoutError:
            raise ProduceFailed(f"no acknowledgement within {self._timeout:g} s") from None
        except MessageSizeTooLargeError as exc:
            # Refused by the broker (its limit is lower than the one read at connection time): the
            # batch's sequence number is lost, so the next batch would get OutOfOrderSequenceNumber.
            if producer is self._producer.current:
                self._replace("broker refused a record as too large; re-reading the topic limit")
            raise RecordTooLarge(f"the broker refused the record: {exc!r}") from exc
        except KafkaError as exc:
            # A producer replaced meanwhile says nothing about the current one: it neither counts
            # nor gets the current one replaced.
            if producer is self._producer.current:
                self._failures += 1
                self._producer.note_error(exc)  # a producer state error (PRODUCER_STATE_ERRORS) breaks it
                broken = self._producer.broken()
                if broken is None and self._failures >= FAILURES_BEFORE_REPLACING:
                    broken = f"{self._failures} failed produces in a row"
                if broken is not None:
                    self._replace(broken)
            raise ProduceFailed(f"Kafka refused the record: {exc!r}") from exc
        if producer is self._producer.current:
            self._failures = 0
        return Delivery(metadata.partition, metadata.offset)

    async def ready(self) -> bool:
        """True when the producer runs, is not failing every produce, and a metadata refresh just worked."""
        producer = self._producer.current
        if not self._producer.usable() or self._failures >= FAILURES_BEFORE_REPLACING:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                refreshed = bool(await producer.client.force_metadata_update())
        except (TimeoutError, KafkaError):
            return False
        return refreshed and bool(producer.client.cluster.available_partitions_for_topic(self._topic))

    def _replace(self, reason: str | None) -> None:
        """Drop the current producer when `reason` says it is broken, and start connecting a new one, once."""
        if reason is not None:
            self._failures = 0
            self._producer.discard(reason)  # closed in the background, bounded by the produce timeout
        self._reconnect()

    def _reconnect(self) -> None:
        # Only while there is no producer: connecting another would drop the current one unclosed.
        if self._stopped or self._producer.current is not None:
            return
        if self._connecting is not None and not self._connecting.done():
            return
        self._connecting = asyncio.create_task(self._connect_until_done(), name="kafka-connect")

    async def _connect_until_done(self) -> None:
        delay = 0.2
        while True:
            try:
                # Fetch the topic's partitions before it serves, so the first request does not pay for it.
                await self._producer.start_prepared(lambda producer: producer.partitions_for(self._topic))
            except Exception as exc:
                # Anything at all: this task is the only way back to a working producer. (The producer
                # that failed to start is closed by ManagedProducer.)
                log.warning("kafka_connect_failed", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._failures = 0
            log.info("kafka_connected", topic=self._topic, max_request_size=self._max_request_size)
            return

    async def _producer_kwargs(self) -> dict[str, Any]:
        """aiokafka's settings, with the record and batch sizes capped at the topic's limit."""
        limit = await self._topic_limit(self._kafka, self._topic)
        if limit < self._max_record_bytes:
            log.warning(
                "topic_limit_below_max_body",
                topic=self._topic,
                max_message_bytes=limit,
                wanted=self._max_record_bytes,
                effect="bodies that do not fit get 413",
            )
        self._max_request_size = min(self._max_record_bytes, limit)
        return {
            **self._kwargs,
            "max_request_size": self._max_request_size,
            "max_batch_size": min(MAX_BATCH_BYTES, limit),
        }


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
