"""On the real broker: the consumer refuses to start without its topics, and creates none of them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.app import create_app
from consumer.topics import TopicsNotReady
from tests.support.consumer_harness import consumer_settings, make_consumer_topics, running, wait_until


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_missing_output_topic_makes_the_consumer_refuse_to_start_and_it_is_not_created(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group_id: Callable[[], str]
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name)
    missing = unique_name("missing-resits")
    settings = consumer_settings(kafka_bootstrap, topics, new_group_id(), resits_topic=missing)

    with pytest.raises(TopicsNotReady, match=missing):
        async with running(create_app(settings), timeout=10):
            pass

    assert missing not in await topic_names(kafka_bootstrap)


async def test_a_dlq_topic_that_cannot_hold_the_largest_raw_record_makes_the_consumer_refuse_to_start(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group_id: Callable[[], str]
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name)
    raw = unique_name("raw-2mib")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # As scripts/create-topics provisions the raw topic; the DLQ keeps the broker default (1 MiB).
        await admin.create_topics(
            [NewTopic(raw, 3, 1, topic_configs={"max.message.bytes": str(2 * 1024 * 1024)})]
        )
    finally:
        await admin.close()

    async def visible() -> bool:
        return raw in await topic_names(kafka_bootstrap)

    await wait_until(visible, timeout=30, what="the new raw topic in the cluster's metadata")
    settings = consumer_settings(kafka_bootstrap, topics, new_group_id(), raw_topic=raw)

    with pytest.raises(TopicsNotReady, match=f"{topics.dlq} has max.message.bytes"):
        async with running(create_app(settings), timeout=10):
            pass
