"""The Kafka clients of the commands: started together, failing in one line, always closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from cli.errors import CommandFailed
from consumer.settings import ConsumerSettings

REQUEST_TIMEOUT_MS = 10_000


def unreachable(settings: ConsumerSettings, exc: BaseException) -> CommandFailed:
    """The one-line failure when the cluster does not answer."""
    return CommandFailed(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {type(exc).__name__}")


@asynccontextmanager
async def admin_and_reader(
    settings: ConsumerSettings, **reader_options: Any
) -> AsyncIterator[tuple[Any, AIOKafkaConsumer]]:
    """A started admin client and a group-less read_committed consumer (as downstream reads).

    A cluster that does not answer, or a Kafka error on the way, becomes `CommandFailed`.
    """
    kafka = settings.kafka.aiokafka_kwargs()
    admin = AIOKafkaAdminClient(**kafka, request_timeout_ms=REQUEST_TIMEOUT_MS)
    reader = AIOKafkaConsumer(
        **kafka,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        **reader_options,
    )
    try:
        try:
            await admin.start()
            await reader.start()
        except Exception as exc:
            raise unreachable(settings, exc) from None
        try:
            yield admin, reader
        except KafkaError as exc:
            raise CommandFailed(f"Kafka error: {exc!r}") from None
    finally:
        await reader.stop()
        await admin.close()


async def partitions_of(admin: Any, topic: str) -> list[TopicPartition]:
    """Every partition of an existing topic."""
    described = await admin.describe_topics([topic])
    return [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
