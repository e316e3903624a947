"""The producer wrapper's own logic: reconnecting, and replacing an aiokafka producer that cannot recover.

aiokafka is stood in for by a small double here; the real broker versions of these paths are in
tests/integration/test_ingress_broker_outage.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
)
from aiokafka.structs import RecordMetadata, TopicPartition

from common.kafka import KafkaConnectionSettings
from common.producer import PRODUCER_STATE_ERRORS
from ingress.producer import (
    FAILURES_BEFORE_REPLACING,
    Delivery,
    KafkaRecordProducer,
    KafkaUnreachable,
    ProduceFailed,
    RecordTooLarge,
    no_broker_reachable,
)

TOPIC = "raw"


@dataclass
class Sender:
    sender_task: asyncio.Future[None] | None = None


class Connection:
    def __init__(self) -> None:
        self.up = True

    def connected(self) -> bool:
        return self.up


class Cluster:
    """aiokafka's metadata, as far as `no_broker_reachable` reads it: when a refresh was tried and
    succeeded."""

    def __init__(self) -> None:
        self._last_refresh_ms = self._last_successful_refresh_ms = 1_000.0

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


class Client:
    """aiokafka's client as far as the wrapper reads it: connections and metadata refreshes. The broker
    answers metadata requests while `broker_up`; readiness then depends on the wrapper alone."""

    def __init__(self) -> None:
        self.cluster = Cluster()
        self._conns = {(0, 0): Connection()}
        self.broker_up = True
        self.refreshes = 0

    async def force_metadata_update(self) -> bool:
        self.refreshes += 1
        self.cluster._last_refresh_ms += 1
        if self.broker_up:
            self.cluster._last_successful_refresh_ms = self.cluster._last_refresh_ms
            for connection in self._conns.values():
                connection.up = True
        return self.broker_up

    def lose_broker(self) -> None:
        """As aiokafka after the broker went away: connections closed, the refresh they set off failed."""
        self.broker_up = False
        for connection in self._conns.values():
            connection.up = False
        self.cluster._last_refresh_ms += 1


@dataclass
class StandInProducer:
    """Enough of AIOKafkaProducer for the wrapper: start, send, stop, and a sender task that can die."""

    refuse_start: bool = False
    refuse_partitions: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    sent: list[bytes] = field(default_factory=list)
    stopped: bool = False
    # Set: every batch fails with it while the sender task keeps running (aiokafka after a sequence gap).
    batch_error: KafkaError | None = None
    # Set: batches stay unanswered (in `held`) until the test answers them.
    hold: bool = False
    held: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)
    client: Client = field(default_factory=Client)
    _sender: Sender = field(default_factory=Sender)

    async def start(self) -> None:
        if self.refuse_start:
            raise KafkaConnectionError("Unable to bootstrap")
        self._sender.sender_task = asyncio.get_running_loop().create_future()

    async def partitions_for(self, topic: str) -> set[int]:
        if self.refuse_partitions:
            raise KafkaConnectionError("metadata request failed")
        return {0}

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[RecordMetadata]:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        assert self._sender.sender_task is not None
        if len(value) > self.kwargs.get("max_request_size", 1 << 30):
            raise MessageSizeTooLargeError("larger than max_request_size")
        if self.hold:
            self.held.append(future)
        elif self._sender.sender_task.done():
            future.set_exception(KafkaError("sender is dead"))
        elif self.batch_error is not None:
            future.set_exception(self.batch_error)
        else:
            self.sent.append(value)
            future.set_result(RecordMetadata(topic, 0, TopicPartition(topic, 0), len(self.sent) - 1, 0, 0, 0))
        return future

    def die(self) -> None:
        assert self._sender.sender_task is not None
        self._sender.sender_task.set_exception(KafkaError("OutOfOrderSequenceNumber"))
        self._sender.sender_task.exception()  # retrieved, as aiokafka's done-callback does

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class Factory:
    """Hands out stand-ins in order; the first `refusals` of them refuse to start, the next
    `partition_refusals` start but fail to fetch the topic's partitions."""

    refusals: int = 0
    partition_refusals: int = 0
    made: list[StandInProducer] = field(default_factory=list)

    def __call__(self, **kwargs: Any) -> StandInProducer:
        n = len(self.made)
        producer = StandInProducer(
            refuse_start=n < self.refusals,
            refuse_partitions=self.refusals <= n < self.refusals + self.partition_refusals,
            kwargs=kwargs,
        )
        self.made.append(producer)
        return producer


@dataclass
class TopicLimit:
    """Stands in for reading `max.message.bytes`; `failures` first reads raise."""

    limit: int = 1_048_588
    failures: int = 0
    reads: int = 0

    async def __call__(self, kafka: KafkaConnectionSettings, topic: str) -> int:
        self.reads += 1
        if self.reads <= self.failures:
            raise RuntimeError("a bug of ours, or anything unexpected")
        return self.limit


def wrapper(
    factory: Factory, limit: TopicLimit | None = None, max_body_bytes: int = 1024
) -> KafkaRecordProducer:
    return KafkaRecordProducer(
        KafkaConnectionSettings(bootstrap_servers="127.0.0.1:1"),
        topic=TOPIC,
        timeout_seconds=0.5,
        linger_ms=0,
        max_body_bytes=max_body_bytes,
        factory=factory,
        topic_limit=limit or TopicLimit(),
    )


async def ready(producer: KafkaRecordProducer) -> bool:
    return (await producer.readiness()).ready


async def produce_until_delivered(producer: KafkaRecordProducer, attempts: int = 100) -> Delivery:
    for _ in range(attempts):
        try:
            return await producer.produce(TOPIC, b"{}", None, [])
        except ProduceFailed:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no delivery after {attempts} attempts")


@pytest.mark.parametrize("error", PRODUCER_STATE_ERRORS)
async def test_a_producer_whose_batches_fail_with_a_producer_state_error_is_replaced(
    error: type[KafkaError],
) -> None:
    # aiokafka fails the batch with e.g. OutOfOrderSequenceNumber and keeps its sender task running:
    # every later batch of the partition fails the same way until the producer is replaced.
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    first = factory.made[0]
    first.batch_error = error()

    with pytest.raises(ProduceFailed, match=error.__name__):
        await producer.produce(TOPIC, b"{}", None, [])
    assert not await ready(producer)  # being replaced
    await produce_until_delivered(producer)

    assert len(factory.made) == 2
    assert first.stopped
    assert first._sender.sender_task is not None
    assert not first._sender.sender_task.done()
    assert factory.made[1].sent == [b"{}"]
    assert await ready(producer)
    await producer.stop()


async def test_repeated_other_kafka_errors_make_it_not_ready_and_replace_the_producer() -> None:
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    first = factory.made[0]
    first.batch_error = RequestTimedOutError()

    for _ in range(FAILURES_BEFORE_REPLACING - 1):
        with pytest.raises(ProduceFailed):
            await producer.produce(TOPIC, b"{}", None, [])
    assert len(factory.made) == 1  # a few failures are not enough
    with pytest.raises(ProduceFailed):
        await producer.produce(TOPIC, b"{}", None, [])
    assert not await ready(producer)
    await produce_until_delivered(producer)

    assert len(factory.made) == 2
    assert first.stopped
    assert await ready(producer)
    await producer.stop()


async def test_record_and_batch_sizes_are_capped_at_the_topic_limit_and_too_large_is_refused_locally() -> (
    None
):
    factory = Factory()
    producer = wrapper(factory, TopicLimit(limit=2000), max_body_bytes=1024 * 1024)
    await producer.start()
    kwargs = factory.made[0].kwargs
    assert (kwargs["max_request_size"], kwargs["max_batch_size"]) == (2000, 2000)

    with pytest.raises(RecordTooLarge):
        await producer.produce(TOPIC, b"x" * 2001, None, [])
    assert await producer.produce(TOPIC, b"{}", None, []) == Delivery(0, 0)
    assert len(factory.made) == 1  # refused before a sequence number: nothing to replace
    await producer.stop()


async def test_an_unexpected_error_while_connecting_is_retried_and_stop_does_not_raise_it() -> None:
    factory = Factory()
    limit = TopicLimit(failures=2)
    producer = wrapper(factory, limit)
    await producer.start()
    await produce_until_delivered(producer)

    assert limit.reads == 3
    await producer.stop()


async def test_a_producer_whose_sender_died_is_replaced_and_produce_works_again() -> None:
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    first = factory.made[0]
    assert await producer.produce(TOPIC, b"{}", None, []) == Delivery(0, 0)

    first.die()
    with pytest.raises(ProduceFailed):
        await producer.produce(TOPIC, b"{}", None, [])
    await produce_until_delivered(producer)

    assert len(factory.made) == 2
    assert first.stopped
    assert factory.made[1].sent == [b"{}"]
    await producer.stop()


async def test_kafka_unreachable_at_start_gives_503s_until_it_connects_in_the_background() -> None:
    factory = Factory(refusals=2)
    producer = wrapper(factory)
    await producer.start()  # returns after the timeout even though nothing connected yet

    with pytest.raises(ProduceFailed, match="not connected"):
        await producer.produce(TOPIC, b"{}", None, [])
    await produce_until_delivered(producer)

    assert [p.refuse_start for p in factory.made] == [True, True, False]
    await producer.stop()
    assert factory.made[-1].stopped


async def test_a_producer_that_cannot_fetch_the_topic_partitions_is_closed_unused_and_retried() -> None:
    factory = Factory(partition_refusals=1)
    producer = wrapper(factory)
    await producer.start()

    await produce_until_delivered(producer)
    assert len(factory.made) == 2
    assert factory.made[0].stopped
    assert factory.made[0].sent == []  # never served a produce
    assert factory.made[1].sent == [b"{}"]
    await producer.stop()


async def test_a_late_failure_of_a_replaced_producer_leaves_the_new_one_alone() -> None:
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    first = factory.made[0]
    first.hold = True
    in_flight = asyncio.create_task(producer.produce(TOPIC, b"{}", None, []))
    await asyncio.sleep(0)  # the produce sends, then waits for the held batch
    assert first.held

    first.die()
    await produce_until_delivered(producer)  # replaced while a produce of the first one is in flight
    second = factory.made[1]
    # An answer about the old producer's state: it must not be taken for the new producer's.
    first.held[0].set_exception(OutOfOrderSequenceNumber())
    with pytest.raises(ProduceFailed):
        await in_flight
    await asyncio.sleep(0.1)  # time enough to connect a third producer, if one were started

    assert len(factory.made) == 2
    assert not second.stopped
    assert await ready(producer)
    assert await producer.produce(TOPIC, b"{}", None, []) == Delivery(0, 1)
    await producer.stop()


async def wait_until(condition: Any, attempts: int = 200) -> None:
    """Poll `condition()` every 20 ms (bounded); no request is made meanwhile."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still not {condition} after {attempts} attempts")


async def test_while_no_broker_is_reachable_produce_is_refused_at_once_without_sending() -> None:
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    stand_in = factory.made[0]
    stand_in.client.lose_broker()

    reason = producer.unreachable()
    with pytest.raises(KafkaUnreachable, match="no broker reachable"):
        await producer.produce(TOPIC, b"{}", None, [])

    assert reason is not None
    assert stand_in.sent == []
    readiness = await producer.readiness()
    assert not readiness.ready
    assert readiness.checks["broker_reachable"] is False
    assert len(factory.made) == 1  # no failed produce was counted: nothing to replace
    await producer.stop()


async def test_the_unreachable_condition_clears_by_itself_once_a_broker_answers_again() -> None:
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    client = factory.made[0].client
    with structlog.testing.capture_logs() as logs:
        client.lose_broker()
        await wait_until(lambda: client.refreshes >= 2)  # the watch keeps probing while it holds
        assert producer.unreachable() is not None

        client.broker_up = True  # the broker is back: the next probe reaches it
        await wait_until(lambda: producer.unreachable() is None)
        await wait_until(lambda: "kafka_reachable_again" in [entry["event"] for entry in logs])

    assert await producer.produce(TOPIC, b"{}", None, []) == Delivery(0, 0)
    assert [e["event"] for e in logs if e["event"].startswith("kafka_")] == [
        "kafka_unreachable",
        "kafka_reachable_again",
    ]
    await producer.stop()


async def test_connections_closed_while_the_metadata_is_fresh_are_no_outage() -> None:
    # aiokafka drops idle connections; the latest refresh worked, so a produce is tried as usual.
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()
    for connection in factory.made[0].client._conns.values():
        connection.up = False

    assert producer.unreachable() is None
    assert await producer.produce(TOPIC, b"{}", None, []) == Delivery(0, 0)
    await producer.stop()


async def test_without_a_producer_the_reason_is_not_connected_and_produce_refuses_at_once() -> None:
    producer = wrapper(Factory(refusals=1000))
    await producer.start()

    assert producer.unreachable() == "not connected to Kafka"
    with pytest.raises(KafkaUnreachable):
        await producer.produce(TOPIC, b"{}", None, [])
    readiness = await producer.readiness()
    assert readiness.checks == {
        "producer_running": False,
        "broker_reachable": False,
        "raw_topic_has_leaders": False,
        "failing_produces": 0,
    }
    await producer.stop()


async def test_a_broken_producer_is_replaced_by_the_watch_without_a_request() -> None:
    factory = Factory()
    producer = wrapper(factory)
    await producer.start()

    factory.made[0].die()
    await wait_until(lambda: len(factory.made) == 2 and producer.unreachable() is None)

    assert factory.made[0].stopped
    assert await producer.produce(TOPIC, b"{}", None, []) == Delivery(0, 0)
    await producer.stop()


async def test_the_aiokafka_state_read_by_no_broker_reachable_still_exists() -> None:
    # no_broker_reachable reads aiokafka internals; if an upgrade renamed them, fail-fast would silently
    # turn off (the view says "connected"). This catches it on a real, unstarted AIOKafkaProducer.
    from aiokafka import AIOKafkaProducer

    real = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    try:
        assert isinstance(real.client._conns, dict)
        assert isinstance(real.client.cluster._last_refresh_ms, int | float)
        assert isinstance(real.client.cluster._last_successful_refresh_ms, int | float)
        assert not no_broker_reachable(real)  # never refreshed, so never failed
        real.client.cluster.failed_update(None)
        assert no_broker_reachable(real)  # no connection, and the latest refresh failed
    finally:
        await real.stop()
