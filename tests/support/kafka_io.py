"""Small helpers to put records on a topic and read them back, with timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from common.kafka import KafkaConnectionSettings
from common.topics import max_message_bytes


@dataclass(frozen=True)
class Record:
    """A record as read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 1) -> None:
    """Create topics and wait until each has a leader for every partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            cluster = consumer._client.cluster
            if all(
                len(consumer.partitions_for_topic(n) or ()) == partitions
                and all(
                    cluster.leader_for_partition(TopicPartition(n, p)) is not None for p in range(partitions)
                )
                for n in names
            ):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"topics {names} have no leaders after 30 s")
    finally:
        await consumer.stop()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    *,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int | None = None,
) -> None:
    """Produce values with acks=all and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, v, key=key, headers=list(headers), partition=partition) for v in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_records(
    bootstrap: str,
    topic: str,
    *,
    count: int | None = None,
    timeout: float = 20.0,
    idle: float = 1.0,
    isolation_level: str = "read_committed",
) -> list[Record]:
    """Read a topic from the beginning, without a group, as downstream services do (read_committed).

    Stops after `count` records (failing if fewer arrive within `timeout`), or, when `count` is
    None, once the topic has been read to its end and `idle` seconds brought nothing new.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for m in msgs:
                    records.append(Record(m.topic, m.partition, m.offset, m.key, m.value, dict(m.headers)))
                    last_new = time.monotonic()
            if count is not None and len(records) >= count:
                break
            if count is None and time.monotonic() - last_new >= idle:
                break
        if count is not None and len(records) < count:
            raise TimeoutError(f"read {len(records)} of {count} records from {topic} in {timeout:.0f} s")
        return records
    finally:
        await consumer.stop()


async def set_max_message_bytes(bootstrap: str, topics: Sequence[str], limit: int) -> None:
    """Set the topics' max.message.bytes and wait until the broker reports it (it applies it later)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)})
                for topic in topics
            ]
        )
    finally:
        await admin.close()
    kafka = KafkaConnectionSettings(bootstrap_servers=bootstrap)
    for _ in range(200):
        if all([await max_message_bytes(kafka, topic) == limit for topic in topics]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{', '.join(topics)} still do not report max.message.bytes={limit}")
