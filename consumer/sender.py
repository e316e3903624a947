"""The producer side of the consumer: records go out without waiting for each acknowledgement."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber, UnknownProducerId
from aiokafka.partitioner import murmur2

from common.producer import (
    REJECTION_ERRORS,
    ManagedProducer,
    ProducerUnavailable,
    is_dead,
    reliable_producer_kwargs,
)
from consumer.plan import OutgoingRecord, batch_bytes
from consumer.settings import ConsumerSettings

log = structlog.get_logger("consumer")

Watch = Callable[["asyncio.Future[Any]"], "asyncio.Future[Any]"]

__all__ = [
    "REJECTION_ERRORS",
    "KafkaSender",
    "KeyPartitioner",
    "PublishError",
    "is_dead",
    "publish_all",
    "queue_records",
]


class RecordSender(Protocol):
    """Something that hands records to Kafka and returns the futures of their acknowledgements."""

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        """Queue every record, in order; each future resolves when Kafka acknowledged its records."""
        ...


class ManagedSender(RecordSender, Protocol):
    """A RecordSender with a lifecycle and a reachability check (KafkaSender, or a test's wrapper)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ping(self, timeout: float) -> bool: ...


class PublishError(Exception):
    """Some records of a batch were not acknowledged by Kafka; the batch must not be committed.

    `rejected` is True when every failure was the broker refusing records for good
    (`REJECTION_ERRORS`): retrying the same records can never succeed.
    """

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


# Failures that follow a refused batch of the same producer and partition (see refused_for_good).
SEQUENCE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId)


def is_rejection(error: BaseException) -> bool:
    """True when the broker refused a record for good (too large, invalid): no retry stores it."""
    return isinstance(error, REJECTION_ERRORS) or (isinstance(error, PublishError) and error.rejected)


def refused_for_good(errors: Sequence[BaseException]) -> bool:
    """True when the broker refused records for good and every other failure follows from that.

    A refused batch spent its sequence numbers: the partition's next batch of the same producer
    meets OutOfOrderSequenceNumber (or UnknownProducerId), every time the records are sent again.
    """
    return any(is_rejection(error) for error in errors) and all(
        is_rejection(error) or isinstance(error, SEQUENCE_ERRORS) for error in errors
    )


# What one cached key costs besides its bytes: the dict slot, the bytes object's header, the int.
KEY_ENTRY_OVERHEAD_BYTES = 120
KEY_CACHE_MAX_BYTES = 16 * 1024 * 1024


class KeyPartitioner:
    """aiokafka's (and Java's) default partitioner, with the hash of each key cached.

    The cache is bounded in bytes (`max_bytes`: key lengths plus a fixed overhead per entry), not in
    entries: keys are learner ids of any length. At the bound it is emptied and refilled, which
    costs one murmur2 per key again, nothing else.
    """

    def __init__(self, max_bytes: int = KEY_CACHE_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._key_hashes: dict[bytes, int] = {}
        self.cached_bytes = 0
        self.clears = 0

    def __call__(self, key: bytes | None, every: list[int], available: list[int]) -> int:
        """murmur2 of the key over every partition; without a key, a random partition that has a
        leader (any partition when none has)."""
        if key is None:
            return random.choice(available or every)
        hashed = self._key_hashes.get(key)
        if hashed is None:
            hashed = murmur2(key) & 0x7FFFFFFF
            cost = len(key) + KEY_ENTRY_OVERHEAD_BYTES
            if self.cached_bytes + cost > self._max_bytes:  # bounded: learners are many, memory is not
                self._key_hashes.clear()
                self.cached_bytes = 0
                self.clears += 1
            if cost <= self._max_bytes:
                self._key_hashes[key] = hashed
                self.cached_bytes += cost
        return every[hashed % len(every)]


async def queue_records(
    producer: Any,
    records: Sequence[OutgoingRecord],
    partitioner: KeyPartitioner,
    watch: Watch = lambda future: future,
    max_batch_bytes: Mapping[str, int] | None = None,
) -> list[asyncio.Future[Any]]:
    """Queue the records as one record batch per partition (more when a batch fills up), in order.

    Record batches (`send_batch`) rather than one `send()` each cost several times less CPU per
    record; partitions are chosen exactly as the default partitioner would (or as the record says).
    A batch also ends before it would outgrow its topic's `max_batch_bytes` entry (max.message.bytes:
    the broker refuses a larger batch whole, whatever its records).
    """
    cluster = producer.client.cluster
    partitions: dict[str, tuple[list[int], list[int]]] = {}
    by_partition: dict[tuple[str, int], list[OutgoingRecord]] = {}
    for record in records:
        partition = record.partition
        if partition is None:
            known = partitions.get(record.topic)
            if known is None:
                # The topics were checked at start-up (consumer.topics), so this finds, never creates.
                every = sorted(await producer.partitions_for(record.topic))
                available = sorted(cluster.available_partitions_for_topic(record.topic) or ())
                known = partitions[record.topic] = (every, available)
            partition = partitioner(record.key, *known)
        by_partition.setdefault((record.topic, partition), []).append(record)
    limits = max_batch_bytes or {}
    futures: list[asyncio.Future[Any]] = []
    try:
        for (topic, partition), queued in by_partition.items():
            limit = limits.get(topic)
            batch = producer.create_batch()
            for record in queued:
                if limit is not None and batch.record_count() and batch.size() + batch_bytes(record) > limit:
                    futures.append(watch(await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                if not _append(batch, record):
                    futures.append(watch(await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                    if not _append(batch, record):
                        raise PublishError(f"a record for {topic} is larger than a whole batch")
            futures.append(watch(await producer.send_batch(batch, topic, partition=partition)))
    except Exception:
        # Collect what was already queued, so no future's error goes unretrieved.
        await asyncio.gather(*futures, return_exceptions=True)
        raise
    return futures


class KafkaSender:
    """At-least-once: one idempotent acks=all producer, started and stopped with the app.

    A producer of our own rather than FastStream's publishers: the derived events' CloudEvents headers
    go out byte for byte as `DerivedEvent.kafka_headers()` builds them (no extra correlation id), and
    records go out in record batches (`queue_records`). A producer that is broken for good is
    replaced before the next batch (`common.producer.ManagedProducer`), and `ping()` reports it as
    unreachable meanwhile.
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        factory: Callable[..., Any] = AIOKafkaProducer,
        partitioner: KeyPartitioner | None = None,
        output_limits: Mapping[str, int] | None = None,
    ) -> None:
        self._producer = ManagedProducer(
            reliable_producer_kwargs(
                settings.kafka,
                linger_ms=settings.producer_linger_ms,
                max_batch_size=settings.producer_max_batch_bytes,
                request_timeout_ms=settings.producer_request_timeout_ms,
            ),
            close_timeout_seconds=settings.producer_request_timeout_ms / 1000,
            factory=factory,
        )
        self._partitioner = partitioner or KeyPartitioner()
        # Topic -> max.message.bytes (filled in by the start-up check): no record batch outgrows it.
        self._output_limits = output_limits if output_limits is not None else {}

    @property
    def replacements(self) -> int:
        """How many producers were replaced since start."""
        return self._producer.replacements

    async def start(self) -> None:
        """Connect the producer."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush what is pending (bounded) and disconnect."""
        await self._producer.stop()

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        """Queue the records as one record batch per partition (more when a batch fills up), in order."""
        try:
            producer = await self._producer.live()
        except ProducerUnavailable as exc:
            raise PublishError(str(exc)) from exc
        return await queue_records(
            producer, records, self._partitioner, self._producer.watch, self._output_limits
        )

    def _partition(self, key: bytes | None, every: list[int], available: list[int]) -> int:
        return self._partitioner(key, every, available)

    async def ping(self, timeout: float) -> bool:
        """True when the producer is usable and a broker answers a metadata request within `timeout` s."""
        if not self._producer.usable():
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._producer.current.client.fetch_all_metadata()
        except Exception:  # any failure means "not reachable" to a readiness probe
            return False
        return True


def _append(batch: Any, record: OutgoingRecord) -> bool:
    """Add the record to the batch; False when the batch is full."""
    appended = batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers))
    return appended is not None


async def await_acks(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every acknowledgement; raise PublishError when any batch was not acknowledged."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        raise PublishError(
            f"{len(errors)} of {len(futures)} record batches not acknowledged: {errors[0]!r}",
            rejected=refused_for_good(errors),
        ) from errors[0]


async def publish_all(sender: RecordSender, records: Sequence[OutgoingRecord]) -> None:
    """Send every record without awaiting each one, then wait for all acknowledgements.

    Records are handed to the producer in order, so one key's records keep their order in its
    partition. Raises PublishError when any record was not acknowledged.
    """
    try:
        futures = await sender.send_many(records)
    except Exception as exc:
        raise PublishError(
            f"queueing {len(records)} records failed: {exc!r}", rejected=is_rejection(exc)
        ) from exc
    await await_acks(futures)
