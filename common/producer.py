"""The lifecycle of our Kafka producers, shared by the ingress and the consumer.

Every producer of the project is an aiokafka producer with acks=all and idempotence, or a
transactional one (which implies both). `ManagedProducer` holds one at a time and:
- builds and starts it (bounded: with the cluster away, start() would wait forever);
- knows when it is broken for good, and replaces it with a new one (a new producer id, sequence
  numbers from 0):
  - its sender task has ended (a fenced producer, an unexpected delivery error): aiokafka re-raises
    the stored error on every later send, and there is no public flag for it;
  - the broker answered a batch with an error about the producer's state (PRODUCER_STATE_ERRORS,
    e.g. OutOfOrderSequenceNumber after a broker restart): aiokafka fails the batch but keeps the
    sender task running, so every later batch of that partition would meet the same answer;
- closes it within a bound (stop() flushes, which with the broker gone waits forever).

The reading of aiokafka internals (`producer._sender.sender_task`) lives here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    UnknownProducerId,
)

from common.kafka import KafkaConnectionSettings

log = structlog.get_logger("producer")

# Broker answers about an idempotent producer's state after which only a new producer (a new
# producer id, sequence numbers from 0) can succeed. aiokafka fails the batch but keeps its sender
# task alive, so "is the sender task dead?" alone does not catch them.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)
# Broker answers that refuse a record batch for good because of its size: no retry of the same
# records can succeed while the topic's limit stays. The producer had already given the batch its sequence
# numbers, so the partition's next batch would meet OutOfOrderSequenceNumber: a producer that met
# one is replaced too. (InvalidTimestamp and UnsupportedForMessageFormat are no such answers: they
# come from the host's clock or the topic's configuration, refuse every record alike, and pass once
# those are fixed; CorruptRecord, a CRC mismatch in transit, passes when sent again.)
REJECTION_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)

ProducerFactory = Callable[..., Any]
KwargsSource = Callable[[], Awaitable[dict[str, Any]]]


def reliable_producer_kwargs(
    kafka: KafkaConnectionSettings,
    *,
    transactional_id: str | None = None,
    transaction_timeout_ms: int | None = None,
    **tuning: Any,
) -> dict[str, Any]:
    """aiokafka producer arguments: acks=all and idempotent, transactional when an id is given."""
    kwargs: dict[str, Any] = {
        **kafka.aiokafka_kwargs(),
        "acks": "all",
        "enable_idempotence": True,
        **tuning,
    }
    if transactional_id is not None:
        kwargs["transactional_id"] = transactional_id
        if transaction_timeout_ms is not None:
            kwargs["transaction_timeout_ms"] = transaction_timeout_ms
    return kwargs


def sender_task(producer: Any) -> asyncio.Task[Any] | None:
    """The producer's background sender task (None before start)."""
    return getattr(getattr(producer, "_sender", None), "sender_task", None)


def is_dead(producer: Any) -> bool:
    """True once the producer's sender task has ended: every later send would fail."""
    task = sender_task(producer)
    return task is not None and task.done()


def death_cause(producer: Any) -> BaseException | None:
    """What the dead producer's sender task ended with (None when cancelled or still alive)."""
    task = sender_task(producer)
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


async def close_bounded(producer: Any, timeout_seconds: float) -> None:
    """Stop a producer, flushing what is pending for at most `timeout_seconds`; never raises."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_seconds)
    except TimeoutError:
        log.warning("kafka_producer_close_timed_out", seconds=timeout_seconds)
    except Exception as exc:  # closing a broken producer: nothing more to do than say so
        log.warning("kafka_producer_close_failed", error=repr(exc)[:500])


class ProducerUnavailable(Exception):
    """No started producer: not started yet, stopped, or the cluster did not answer in time."""


class ManagedProducer:
    """One aiokafka producer at a time, replaced when it is broken for good."""

    def __init__(
        self,
        kwargs: dict[str, Any] | KwargsSource,
        *,
        close_timeout_seconds: float,
        start_timeout_seconds: float | None = None,
        factory: ProducerFactory = AIOKafkaProducer,
    ) -> None:
        self._kwargs = kwargs
        self._close_timeout = close_timeout_seconds
        self._start_timeout = start_timeout_seconds
        self._factory = factory
        self._producer: Any = None
        self._state_error: BaseException | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._running = False  # between start() and stop()
        self.replacements = 0

    @property
    def current(self) -> Any:
        """The producer in use, or None."""
        return self._producer

    async def start(self) -> Any:
        """Build and start a producer (bounded by the start timeout), and make it the current one."""
        return await self._start(None)

    async def start_prepared(self, prepare: Callable[[Any], Awaitable[object]]) -> Any:
        """Like `start()`, but `prepare(producer)` must succeed too before the producer becomes current.

        Nobody sees the producer before `prepare` is done; when it fails, the producer is closed.
        """
        return await self._start(prepare)

    async def _start(self, prepare: Callable[[Any], Awaitable[object]] | None) -> Any:
        self._running = True
        kwargs = self._kwargs if isinstance(self._kwargs, dict) else await self._kwargs()
        producer = self._factory(**kwargs)
        try:
            if self._start_timeout is None:
                await self._start_one(producer, prepare)
            else:
                await asyncio.wait_for(self._start_one(producer, prepare), self._start_timeout)
        except BaseException:
            self._spawn_close(producer)
            raise
        self._producer = producer
        self._state_error = None
        return producer

    @staticmethod
    async def _start_one(producer: Any, prepare: Callable[[Any], Awaitable[object]] | None) -> None:
        await producer.start()
        if prepare is not None:
            await prepare(producer)

    def broken(self) -> str | None:
        """Why the current producer cannot be used any more, or None while it can."""
        producer = self._producer
        if producer is None:
            return None
        if isinstance(self._state_error, REJECTION_ERRORS):
            return (
                f"the broker refused a record batch for good ({type(self._state_error).__name__}): "
                "its sequence numbers are spent"
            )
        if self._state_error is not None:
            return f"the broker refused the producer's state ({type(self._state_error).__name__})"
        if is_dead(producer):
            return f"its sender task ended ({death_cause(producer)!r})"
        return None

    def usable(self) -> bool:
        """True when there is a producer and it is not broken."""
        return self._producer is not None and self.broken() is None

    def watch(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Note a batch refused for the producer's state, so that `live()` replaces the producer."""
        future.add_done_callback(self._note_state_error)
        return future

    def _note_state_error(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and isinstance(
            future.exception(), PRODUCER_STATE_ERRORS + REJECTION_ERRORS
        ):
            self._state_error = future.exception()

    def note_error(self, error: BaseException) -> None:
        """Note an error met outside a send future (e.g. committing a transaction)."""
        if isinstance(error, PRODUCER_STATE_ERRORS + REJECTION_ERRORS):
            self._state_error = error

    async def live(self) -> Any:
        """The current producer; a broken one is replaced first, a missing one started."""
        reason = self.broken()
        if reason is not None:
            await self.replace(reason)
        if self._producer is None:
            if not self._running:
                raise ProducerUnavailable("the producer is not started")
            await self.start()
            log.info("kafka_producer_started")
        return self._producer

    async def replace(self, reason: str) -> None:
        """Drop the current producer and wait (bounded) until it is closed; the next `live()` starts one."""
        producer = self._take(reason)
        if producer is not None:
            await close_bounded(producer, self._close_timeout)

    def discard(self, reason: str) -> None:
        """Drop the current producer (closed in the background, bounded); the next `live()` starts one."""
        producer = self._take(reason)
        if producer is not None:
            self._spawn_close(producer)

    def _take(self, reason: str) -> Any:
        producer, self._producer = self._producer, None
        self._state_error = None
        if producer is not None:
            self.replacements += 1
            log.error("kafka_producer_replaced", reason=reason)
        return producer

    async def stop(self) -> None:
        """Close the current producer (flushing, bounded) and wait for background closes."""
        self._running = False
        producer, self._producer = self._producer, None
        if producer is not None:
            await close_bounded(producer, self._close_timeout)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _spawn_close(self, producer: Any) -> None:
        task = asyncio.create_task(close_bounded(producer, self._close_timeout), name="kafka-producer-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
