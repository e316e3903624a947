"""The producer side of the consumer: records go out without waiting for each acknowledgement."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from common.kafka import PRODUCER_STATE_ERRORS
from consumer.plan import OutgoingRecord
from consumer.settings import ConsumerSettings

log = structlog.get_logger("consumer")


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
    """Some records of a batch were not acknowledged by Kafka; the batch must not be committed."""


class KafkaSender:
    """An idempotent aiokafka producer with acks=all, started and stopped with the app.

    A producer of our own rather than FastStream's publishers: the derived events' CloudEvents headers
    go out byte for byte as `DerivedEvent.kafka_headers()` builds them (no extra correlation id), and
    records are appended to one record batch per partition (`send_batch`) instead of one `send()`
    each, which costs several times less CPU per record. Partitions are chosen exactly as aiokafka's
    default partitioner does (murmur2 of the key), so one learner's events share a partition.

    aiokafka's producer is unusable once its sender task has ended (a fenced producer, an unexpected
    delivery error): every later send re-raises the stored error. It is just as stuck, with its
    sender task alive, after the broker answered a batch with an error about the producer's state
    (OutOfOrderSequenceNumber after a broker restart, for one): every retry meets the same answer.
    So before each batch of sends such a producer is closed and replaced by a new one, and `ping()`
    reports it as unreachable meanwhile.
    """

    def __init__(self, settings: ConsumerSettings, *, factory: Callable[..., Any] = AIOKafkaProducer) -> None:
        self._settings = settings
        self._factory = factory
        self._producer: Any = None
        self._started = False
        self._key_hashes: dict[bytes, int] = {}
        self._state_error: BaseException | None = None  # set when a batch got a PRODUCER_STATE_ERROR
        self.replacements = 0

    async def start(self) -> None:
        """Connect the producer."""
        self._started = True
        self._producer = await self._connect()

    async def _connect(self) -> Any:
        settings = self._settings
        producer = self._factory(
            **settings.kafka.aiokafka_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.producer_linger_ms,
            max_batch_size=settings.producer_max_batch_bytes,
            request_timeout_ms=settings.producer_request_timeout_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await self._close(producer)
            raise
        return producer

    async def _close(self, producer: Any) -> None:
        """Stop a producer; bounded, since with the broker gone flushing would wait forever."""
        try:
            await asyncio.wait_for(producer.stop(), self._settings.producer_request_timeout_ms / 1000)
        except Exception as exc:  # closing a broken producer: nothing more to do than say so
            log.warning("closing the producer failed", error=repr(exc)[:500])

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        self._started = False
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _live_producer(self) -> Any:
        """The producer, replaced first when its sender task has died or its state was refused."""
        producer = self._producer
        if producer is not None and (is_dead(producer) or self._state_error is not None):
            error: BaseException | None = self._state_error
            why = "the broker refused the producer's state"
            if error is None:
                task = producer._sender.sender_task
                error, why = (None if task.cancelled() else task.exception()), "the sender task died"
            log.error(f"{why}; replacing the producer", error=repr(error)[:500])
            self._state_error = None
            self._producer = None
            self.replacements += 1
            await self._close(producer)
        if self._producer is None:
            if not self._started:
                raise PublishError("the producer is not started")
            self._producer = await self._connect()
            log.info("producer replaced")
        return self._producer

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        """Queue the records as one record batch per partition (more when a batch fills up), in order."""
        producer = await self._live_producer()
        cluster = producer.client.cluster
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        by_partition: dict[tuple[str, int], list[OutgoingRecord]] = {}
        for record in records:
            known = partitions.get(record.topic)
            if known is None:
                # The topics were checked at start-up (consumer.topics), so this finds, never creates.
                every = sorted(await producer.partitions_for(record.topic))
                available = sorted(cluster.available_partitions_for_topic(record.topic) or ())
                known = partitions[record.topic] = (every, available)
            partition = self._partition(record.key, *known)
            by_partition.setdefault((record.topic, partition), []).append(record)
        futures: list[asyncio.Future[Any]] = []
        try:
            for (topic, partition), queued in by_partition.items():
                batch = producer.create_batch()
                for record in queued:
                    if not _append(batch, record):
                        futures.append(
                            self._watched(await producer.send_batch(batch, topic, partition=partition))
                        )
                        batch = producer.create_batch()
                        if not _append(batch, record):
                            raise PublishError(f"a record for {topic} is larger than a whole batch")
                futures.append(self._watched(await producer.send_batch(batch, topic, partition=partition)))
        except Exception:
            # Collect what was already queued, so no future's error goes unretrieved.
            await asyncio.gather(*futures, return_exceptions=True)
            raise
        return futures

    def _watched(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        future.add_done_callback(self._note_state_error)
        return future

    def _note_state_error(self, future: asyncio.Future[Any]) -> None:
        """Remember a batch refused for the producer's state: the next attempt needs a new producer."""
        if not future.cancelled() and isinstance(future.exception(), PRODUCER_STATE_ERRORS):
            self._state_error = future.exception()

    def _partition(self, key: bytes | None, every: list[int], available: list[int]) -> int:
        """aiokafka's (and Java's) default partitioner: murmur2 of the key over every partition; without
        a key, a random partition that has a leader (any partition when none has)."""
        if key is None:
            return random.choice(available or every)
        hashed = self._key_hashes.get(key)
        if hashed is None:
            if len(self._key_hashes) > 100_000:  # bounded: learners are many, memory is not
                self._key_hashes.clear()
            hashed = self._key_hashes[key] = murmur2(key) & 0x7FFFFFFF
        return every[hashed % len(every)]

    async def ping(self, timeout: float) -> bool:
        """True when the producer is alive and a broker answers a metadata request within `timeout` s."""
        if self._producer is None or is_dead(self._producer) or self._state_error is not None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._producer.client.fetch_all_metadata()
        except Exception:  # any failure means "not reachable" to a readiness probe
            return False
        return True


def is_dead(producer: Any) -> bool:
    """True once the producer's sender task has ended: every later send would fail (no public flag)."""
    sender_task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return sender_task is not None and sender_task.done()


def _append(batch: Any, record: OutgoingRecord) -> bool:
    """Add the record to the batch; False when the batch is full."""
    appended = batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers))
    return appended is not None


async def publish_all(sender: RecordSender, records: Sequence[OutgoingRecord]) -> None:
    """Send every record without awaiting each one, then wait for all acknowledgements.

    Records are handed to the producer in order, so one key's records keep their order in its
    partition. Raises PublishError when any record was not acknowledged.
    """
    try:
        futures = await sender.send_many(records)
    except Exception as exc:
        raise PublishError(f"queueing {len(records)} records failed: {exc!r}") from exc
    results = await asyncio.gather(*futures, return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        raise PublishError(
            f"{len(errors)} of {len(futures)} record batches not acknowledged: {errors[0]!r}"
        ) from errors[0]
