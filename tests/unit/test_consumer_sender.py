"""KafkaSender: partitions as aiokafka's default partitioner picks them; a dead producer is replaced."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, NotLeaderForPartitionError, OutOfOrderSequenceNumber
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from consumer.plan import OutgoingRecord
from consumer.sender import (
    KafkaSender,
    KeyPartitioner,
    PublishError,
    is_dead,
    publish_all,
    queue_records,
    refused_for_good,
)
from consumer.settings import ConsumerSettings
from handlers import RulesSettings

SETTINGS = ConsumerSettings(rules=RulesSettings())
SENDER = KafkaSender(SETTINGS)


@given(
    keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=50),
    partitions=st.integers(min_value=1, max_value=64),
    down=st.sets(st.integers(min_value=0, max_value=63)),
)
def test_keyed_records_go_where_the_default_partitioner_puts_them_whichever_partitions_are_down(
    keys: list[bytes], partitions: int, down: set[int]
) -> None:
    every = list(range(partitions))
    available = [p for p in every if p not in down]

    for key in keys:
        # Twice: the second answer comes from the sender's hash cache.
        for _ in range(2):
            assert SENDER._partition(key, every, available) == DefaultPartitioner()(key, every, available)


def test_keys_spread_over_every_partition_and_known_learners_land_where_java_clients_put_them() -> None:
    every = list(range(6))
    placed = Counter(SENDER._partition(f"usr_{i}".encode(), every, every) for i in range(600))

    assert set(placed) == set(every)
    # Placements of the Java client's partitioner over 1000 partitions (kafka-python's compatibility table).
    thousand = list(range(1000))
    java = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}
    assert {key: SENDER._partition(key, thousand, thousand) for key in java} == java


def test_a_record_without_key_goes_only_to_partitions_that_have_a_leader() -> None:
    placed = {SENDER._partition(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}

    assert placed == {1, 3}


def test_a_record_without_key_goes_anywhere_when_no_partition_has_a_leader() -> None:
    placed = {SENDER._partition(None, [0, 1, 2], []) for _ in range(200)}

    assert placed == {0, 1, 2}


class FakeSenderTask:
    def __init__(self) -> None:
        self.task: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def sender_task(self) -> asyncio.Future[None]:
        return self.task


class FakeBatch:
    def append(self, **_kwargs: Any) -> object:
        return object()


class FakeCluster:
    def available_partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}


class FakeClient:
    cluster = FakeCluster()

    async def fetch_all_metadata(self) -> None:
        return None


class FakeProducer:
    """Just enough of AIOKafkaProducer: a sender task the test can kill, batches that are acknowledged."""

    made: ClassVar[list[FakeProducer]] = []

    def __init__(self, **_kwargs: Any) -> None:
        self._sender = FakeSenderTask()
        self.client = FakeClient()
        self.stopped = False
        self.sent = 0
        self.refuse_with: BaseException | None = None  # the broker's answer to every batch, if any
        FakeProducer.made.append(self)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, _batch: FakeBatch, _topic: str, *, partition: int) -> asyncio.Future[None]:
        if is_dead(self):
            raise RuntimeError("stored error of the dead sender task")
        self.sent += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse_with is not None:
            done.set_exception(self.refuse_with)
        else:
            done.set_result(None)
        return done


RECORD = OutgoingRecord("t", b"k", b"v", ())


async def test_a_producer_whose_sender_task_died_is_replaced_before_the_next_send() -> None:
    FakeProducer.made.clear()
    sender = KafkaSender(SETTINGS, factory=FakeProducer)
    await sender.start()
    first = FakeProducer.made[0]
    first._sender.task.set_exception(RuntimeError("OutOfOrderSequenceNumber"))

    assert not await sender.ping(timeout=1.0)  # dead: not ready
    futures = await sender.send_many([RECORD])
    await asyncio.gather(*futures)

    assert len(FakeProducer.made) == 2
    assert first.stopped
    assert first.sent == 0
    assert FakeProducer.made[1].sent == 1
    assert sender.replacements == 1
    assert await sender.ping(timeout=1.0)
    await sender.stop()


async def test_a_producer_whose_batches_are_refused_for_its_state_is_replaced_though_its_task_lives() -> None:
    # After a broker restart, aiokafka fails such batches with OutOfOrderSequenceNumber but keeps its
    # sender task running: retrying with the same producer would fail forever.
    FakeProducer.made.clear()
    sender = KafkaSender(SETTINGS, factory=FakeProducer)
    await sender.start()
    first = FakeProducer.made[0]
    first.refuse_with = OutOfOrderSequenceNumber()

    with pytest.raises(PublishError):
        await publish_all(sender, [RECORD])
    await asyncio.sleep(0)  # the done callbacks run
    assert not is_dead(first)
    assert not await sender.ping(timeout=1.0)  # refused state: not ready

    await publish_all(sender, [RECORD])

    assert len(FakeProducer.made) == 2
    assert first.stopped
    assert FakeProducer.made[1].sent == 1
    assert sender.replacements == 1
    assert await sender.ping(timeout=1.0)
    await sender.stop()


async def test_other_refusals_keep_the_producer() -> None:
    FakeProducer.made.clear()
    sender = KafkaSender(SETTINGS, factory=FakeProducer)
    await sender.start()
    FakeProducer.made[0].refuse_with = NotLeaderForPartitionError()

    with pytest.raises(PublishError):
        await publish_all(sender, [RECORD])
    await asyncio.sleep(0)

    assert await sender.ping(timeout=1.0)
    assert len(FakeProducer.made) == 1
    await sender.stop()


async def test_sending_before_start_or_after_stop_fails_without_connecting() -> None:
    FakeProducer.made.clear()
    sender = KafkaSender(SETTINGS, factory=FakeProducer)

    with pytest.raises(PublishError):
        await sender.send_many([RECORD])
    await sender.start()
    await sender.stop()
    with pytest.raises(PublishError):
        await sender.send_many([RECORD])
    assert len(FakeProducer.made) == 1


class BatchRecordingProducer:
    """Builds real aiokafka record batches (an unstarted producer's) and records what is sent."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.client = type("Client", (), {"cluster": FakeCluster()})()
        self.sent: list[tuple[str, int, int, int]] = []  # topic, partition, records, bytes

    def create_batch(self) -> Any:
        return self._producer.create_batch()

    async def partitions_for(self, _topic: str) -> set[int]:
        return {0}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, batch.record_count(), batch.size()))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_no_record_batch_outgrows_its_topics_max_message_bytes() -> None:
    unstarted = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=256 * 1024)
    producer = BatchRecordingProducer(unstarted)
    records = [OutgoingRecord("small", b"k", b"v" * 1000, ()) for _ in range(40)]
    records += [OutgoingRecord("roomy", b"k", b"v" * 1000, ()) for _ in range(40)]

    await queue_records(producer, records, KeyPartitioner(), max_batch_bytes={"small": 8 * 1024})

    small = [sent for sent in producer.sent if sent[0] == "small"]
    assert sum(count for _, _, count, _ in small) == 40
    assert all(size <= 8 * 1024 for _, _, _, size in small)
    assert [count for topic, _, count, _ in producer.sent if topic == "roomy"] == [40]  # no limit known


@pytest.mark.parametrize(
    ("errors", "refused"),
    [
        ([MessageSizeTooLargeError()], True),
        ([MessageSizeTooLargeError(), OutOfOrderSequenceNumber()], True),  # the batch after a refused one
        ([OutOfOrderSequenceNumber()], False),  # alone: the producer's state, fixed by a new producer
        ([MessageSizeTooLargeError(), NotLeaderForPartitionError()], False),  # retried until it passes
    ],
)
def test_a_publish_counts_as_refused_for_good_only_when_a_refusal_explains_every_failure(
    errors: list[BaseException], refused: bool
) -> None:
    assert refused_for_good(errors) is refused
