"""The consumer's lag gauges, refreshed in the background from the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.lag import LagMonitor
from consumer.metrics import ConsumerMetrics
from tests.support.kafka_io import produce


def sample(metrics: ConsumerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"exam_events_consumer_{name}", labels or None)


async def test_lag_gauges_follow_the_committed_offsets_of_the_assigned_partitions(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], new_group_id: Callable[[], str]
) -> None:
    topic = await new_topic("raw", partitions=2)
    await produce(kafka_bootstrap, topic, [b"{}"] * 5, partition=0)
    await produce(kafka_bootstrap, topic, [b"{}"] * 3, partition=1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=new_group_id(),
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    metrics = ConsumerMetrics.create()
    monitor = LagMonitor(lambda: consumer, metrics.partition_lag, metrics.group_lag, interval_seconds=0.1)
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.commit({TopicPartition(topic, 0): 2})
        await monitor.start()
        await wait_for_refresh(monitor)

        assert sample(metrics, "partition_lag", topic=topic, partition="0") == 3
        assert sample(metrics, "partition_lag", topic=topic, partition="1") == 3  # no commit: from earliest
        assert sample(metrics, "group_lag") == 6

        consumer.assign([TopicPartition(topic, 1)])
        await consumer.commit({TopicPartition(topic, 1): 3})
        await wait_for_refresh(monitor)

        assert sample(metrics, "partition_lag", topic=topic, partition="0") is None  # revoked: series gone
        assert sample(metrics, "partition_lag", topic=topic, partition="1") == 0
        assert sample(metrics, "group_lag") == 0
    finally:
        await monitor.stop()
        await consumer.stop()


async def wait_for_refresh(monitor: LagMonitor) -> None:
    """Wait until the monitor has refreshed twice more (so the latest state is shown)."""
    target = monitor.refreshed + 2
    async with asyncio.timeout(20):
        while monitor.refreshed < target:  # noqa: ASYNC110  # a counter, not an event, of the monitor
            await asyncio.sleep(0.05)
