"""The producer wrapper's own logic: reconnecting, and replacing an aiokafka producer whose sender died.

aiokafka is stood in for by a small double here; the real broker versions of these paths are in
tests/integration/test_ingress_broker_outage.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import RecordMetadata, TopicPartition

from common.kafka import KafkaConnectionSettings
from ingress.producer import Delivery, KafkaRecordProducer, ProduceFailed

TOPIC = "raw"


@dataclass
class Sender:
    sender_task: asyncio.Future[None] | None = None


@dataclass
class StandInProducer:
    """Enough of AIOKafkaProducer for the wrapper: start, send, stop, and a sender task that can die."""

    refuse_start: bool = False
    sent: list[bytes] = field(default_factory=list)
    stopped: bool = False
    _sender: Sender = field(default_factory=Sender)

    async def start(self) -> None:
        if self.refuse_start:
            raise KafkaConnectionError("Unable to bootstrap")
        self._sender.sender_task = asyncio.get_running_loop().create_future()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[RecordMetadata]:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        assert self._sender.sender_task is not None
        if self._sender.sender_task.done():
            future.set_exception(KafkaError("sender is dead"))
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
    """Hands out stand-ins in order; the first `refusals` of them refuse to start."""

    refusals: int = 0
    made: list[StandInProducer] = field(default_factory=list)

    def __call__(self, **_: Any) -> StandInProducer:
        producer = StandInProducer(refuse_start=len(self.made) < self.refusals)
        self.made.append(producer)
        return producer


def wrapper(factory: Factory) -> KafkaRecordProducer:
    return KafkaRecordProducer(
        KafkaConnectionSettings(bootstrap_servers="127.0.0.1:1"),
        topic=TOPIC,
        timeout_seconds=0.5,
        linger_ms=0,
        max_body_bytes=1024,
        factory=factory,
    )


async def produce_until_delivered(producer: KafkaRecordProducer, attempts: int = 100) -> Delivery:
    for _ in range(attempts):
        try:
            return await producer.produce(TOPIC, b"{}", None, [])
        except ProduceFailed:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no delivery after {attempts} attempts")


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
