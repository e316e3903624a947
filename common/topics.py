"""Reading topics' configuration with the admin client (which never creates a topic)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from common.kafka import KafkaConnectionSettings

MAX_MESSAGE_BYTES = "max.message.bytes"
# How much more the dead-letter and unrouted topics take than the raw topic: a copy of a raw record
# gains the consumer's headers (why and where from; the error message is at most 1,000 characters).
DEAD_LETTER_HEADROOM_BYTES = 64 * 1024


class TopicConfigUnavailable(Exception):
    """The broker answered, but not with the topic's configuration (e.g. the topic does not exist)."""


async def describe_max_message_bytes(admin: Any, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's effective `max.message.bytes`, read with a started admin client.

    Raises `TopicConfigUnavailable` when a topic is missing or its configuration cannot be read.
    """
    wanted = list(dict.fromkeys(topics))
    responses = await admin.describe_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, topic, configs={MAX_MESSAGE_BYTES: None})
            for topic in wanted
        ]
    )
    sizes: dict[str, int] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            topic = resource["resource_name"]
            if resource["error_code"]:
                raise TopicConfigUnavailable(
                    f"cannot read the configuration of topic {topic!r} (error {resource['error_code']}: "
                    f"{resource['error_message'] or 'does the topic exist?'})"
                )
            for entry in resource["config_entries"]:
                if entry["config_names"] == MAX_MESSAGE_BYTES and entry["config_value"] is not None:
                    sizes[topic] = int(entry["config_value"])
    unreported = [topic for topic in wanted if topic not in sizes]
    if unreported:
        raise TopicConfigUnavailable(f"the broker did not report {MAX_MESSAGE_BYTES} of {unreported}")
    return sizes


async def max_message_bytes(kafka: KafkaConnectionSettings, topic: str, *, timeout_ms: int = 10_000) -> int:
    """The largest record batch the broker stores on `topic` (its effective `max.message.bytes`).

    Raises `TopicConfigUnavailable` when the topic is missing or its configuration cannot be read,
    and aiokafka's `KafkaError` (or `OSError`) when the cluster cannot be reached.
    """
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs(), request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        return (await describe_max_message_bytes(admin, [topic]))[topic]
    finally:
        await admin.close()
