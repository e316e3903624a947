"""Putting bodies on Kafka: an idempotent acks=all producer that answers only with an acknowledgement.

`KafkaRecordProducer.produce` returns the partition and offset once the broker has the record, or
raises `ProduceFailed` (Kafka refused it, broker unreachable, producer being rebuilt), or
`RecordTooLarge` when the record cannot be stored on the topic at all. How long it may wait for the
acknowledgement is the caller's: the app bounds each request with one deadline (ingress/app.py),
moved from the body read to the produce, and answers 503 when it passes. It never gives
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

While Kafka is known to be unreachable, `produce` refuses at once with `KafkaUnreachable` (a 503
in well under a millisecond) instead of waiting out the produce timeout: when there is no producer
(connecting, or being replaced), or when aiokafka has no open connection to any broker and its
latest metadata refresh reached none (`no_broker_reachable`, the one place that reads aiokafka
internals).
A background watch replaces a broken producer without waiting for a request, and while no broker
is reachable asks aiokafka for a metadata refresh every `WATCH_INTERVAL_SECONDS`, so the condition
clears by itself soon after a broker answers again. A broker that stops answering without closing
its connections is seen once aiokafka gives up on a request to it (its request timeout, the produce
timeout): until then produces wait, as before.

Building, judging and closing the aiokafka producer is `common.producer.ManagedProducer`'s, as for
the consumer; this module adds the reconnect loop, the topic limit, the failure count and the
unreachable condition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
# How often the watch looks at aiokafka's state (in memory), and probes while no broker is reachable.
WATCH_INTERVAL_SECONDS = 0.5
# Longest wait between two attempts to connect a new producer: how late one can notice a broker back.
MAX_CONNECT_BACKOFF_SECONDS = 2.0


class ProduceFailed(Exception):
    """Kafka did not acknowledge the record; the client should retry later."""


class KafkaUnreachable(ProduceFailed):
    """Refused without trying: Kafka is known to be unreachable right now."""


class RecordTooLarge(Exception):
    """The record is larger than the topic's `max.message.bytes`: no retry will store it."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where Kafka stored a record."""

    partition: int
    offset: int


def no_broker_reachable(producer: Any) -> bool:
    """True when aiokafka has no open connection to any broker and its latest metadata refresh
    reached none: a produce would wait for nothing. In memory, no network (about 0.5 us).

    THE one place reading aiokafka internals (as of aiokafka 0.14):
    - `producer.client.cluster._last_refresh_ms` and `._last_successful_refresh_ms`: when the latest
      metadata refresh was attempted and when one last succeeded (a failed one sets only the first);
    - `producer.client._conns`: the open connections, `{(node id, group): AIOKafkaConnection}`; a
      connection's `connected()` is public.

    Should aiokafka rename them, this says False: fail-fast is then off and produces wait for the
    timeout as before, never the reverse. tests/unit/test_ingress_producer.py checks these names on
    a real AIOKafkaProducer, so an upgrade that renames them fails a test.
    """
    client = getattr(producer, "client", None)
    cluster = getattr(client, "cluster", None)
    attempted = getattr(cluster, "_last_refresh_ms", None)
    succeeded = getattr(cluster, "_last_successful_refresh_ms", None)
    # The refresh times first: they settle the common case (the latest refresh worked) cheaply.
    if not isinstance(attempted, int | float) or not isinstance(succeeded, int | float):
        return False
    if attempted <= succeeded:
        return False
    conns = getattr(client, "_conns", None)
    if not isinstance(conns, dict):
        return False
    return not any(conn.connected() for conn in list(conns.values()))


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a produce is expected to succeed now, and what that verdict was made of."""

    ready: bool
    checks: Mapping[str, object]  # booleans and numbers only: it is shown on /readyz


class RecordProducer(Protocol):
    """What the HTTP app needs from a producer."""

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Store one record and return where it went, or raise `ProduceFailed` (`KafkaUnreachable`
        at once, without trying, while `unreachable()` says why). The caller bounds the wait."""
        ...

    def unreachable(self) -> str | None:
        """Why Kafka is known to be unreachable right now, or None (cheap: no network)."""
        ...

    async def readiness(self) -> Readiness:
        """Whether a produce is expected to succeed now, with the checks behind it."""
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
        self._watching: asyncio.Task[None] | None = None
        self._stopped = False
        self._failures = 0  # Kafka errors in a row (not timeouts) of the current producer

    async def start(self) -> None:
        """Connect in the background; wait up to the produce timeout for the first connection."""
        self._reconnect()
        self._watching = asyncio.create_task(self._watch(), name="kafka-watch")
        assert self._connecting is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._connecting), self._timeout)
        if self._producer.current is None:
            log.warning("kafka_unreachable_at_start", retrying=True)

    async def stop(self) -> None:
        """Flush what is pending (bounded by the produce timeout) and close."""
        self._stopped = True
        tasks = [task for task in (self._connecting, self._watching) if task is not None]
        for task in tasks:
            task.cancel()
        # Whatever the tasks ended with (cancelled, or a bug of ours) must not stop the close.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._producer.stop()

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Store one record and return where it went, or raise `ProduceFailed` / `RecordTooLarge`.

        While `unreachable()` says why, `KafkaUnreachable` at once: nothing is sent. The caller
        bounds the wait for the acknowledgement (a cancelled wait leaves the record to aiokafka).
        """
        reason = self.unreachable()
        if reason is not None:
            self._replace(self._producer.broken())
            raise KafkaUnreachable(reason)
        producer = self._producer.current
        try:
            try:
                future = await producer.send(topic, value, key=key, headers=list(headers))
            except MessageSizeTooLargeError as exc:
                # Refused by aiokafka itself (max_request_size, capped at the topic's limit):
                # no sequence number was taken, the producer is fine.
                raise RecordTooLarge(str(exc)) from None
            # Shielded: cancelling aiokafka's future would not stop the record, only our view of it.
            metadata = await asyncio.shield(future)
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

    def unreachable(self) -> str | None:
        """Why Kafka is known to be unreachable right now (a webhook gets 503 at once), or None."""
        producer = self._producer.current
        if producer is None:
            return "not connected to Kafka"
        if self._producer.broken() is not None:
            return "the producer is being replaced"
        if no_broker_reachable(producer):
            return "no broker reachable (no open connection; the latest metadata refresh reached none)"
        return None

    async def readiness(self) -> Readiness:
        """Ready when the producer runs, is not failing every produce, and a metadata refresh just
        reached a broker and found leaders for the raw topic."""
        producer = self._producer.current
        running = self._producer.usable()
        failing = self._failures
        reachable = leaders = False
        # Known unreachable: say so at once rather than wait for a refresh that cannot work.
        if running and failing < FAILURES_BEFORE_REPLACING and self.unreachable() is None:
            try:
                async with asyncio.timeout(self._timeout):
                    reachable = bool(await producer.client.force_metadata_update())
            except (TimeoutError, KafkaError):
                reachable = False
            leaders = reachable and bool(producer.client.cluster.available_partitions_for_topic(self._topic))
        checks = {
            "producer_running": running,
            "broker_reachable": reachable,
            "raw_topic_has_leaders": leaders,
            "failing_produces": failing,
        }
        return Readiness(running and reachable and leaders and failing < FAILURES_BEFORE_REPLACING, checks)

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

    async def _watch(self) -> None:
        """Replace a broken producer without waiting for a request; while no broker is reachable,
        ask for a metadata refresh each turn, so that the condition clears by itself once one answers."""
        was_unreachable: str | None = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            try:
                was_unreachable = await self._watch_once(was_unreachable)
            except Exception as exc:  # a bug of ours must not end the watch: it is the way back
                log.error("kafka_watch_failed", error=repr(exc)[:500])

    async def _watch_once(self, was_unreachable: str | None) -> str | None:
        broken = self._producer.broken()
        if broken is not None:
            self._replace(broken)
        reason = self.unreachable()
        if reason is not None and was_unreachable is None:
            log.warning("kafka_unreachable", reason=reason, effect="webhooks get 503 at once")
        elif reason is None and was_unreachable is not None:
            log.info("kafka_reachable_again")
        producer = self._producer.current
        if producer is not None and no_broker_reachable(producer):
            # aiokafka itself retries only when a request needs a broker; this reconnects meanwhile.
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(producer.client.force_metadata_update(), self._timeout)
        return reason

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
                delay = min(delay * 2, MAX_CONNECT_BACKOFF_SECONDS)
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

    def unreachable(self) -> str | None:
        """Never."""
        return None

    async def readiness(self) -> Readiness:
        """Always ready."""
        return Readiness(True, {"producer_running": True})
