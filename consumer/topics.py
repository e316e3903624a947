"""Start-up check of the topics the consumer reads and writes; it never creates one.

A metadata request from a producer may auto-create a missing topic with the broker's defaults
(partition count, `max.message.bytes`), so the topics are checked with the admin client first:
`list_topics()` and `describe_configs()` never create anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, KafkaTimeoutError

from common.topics import DEAD_LETTER_HEADROOM_BYTES, MAX_MESSAGE_BYTES, describe_max_message_bytes
from consumer.settings import ConsumerSettings

log = structlog.get_logger("consumer")

# How long the start-up check keeps asking while the cluster cannot answer (a node restarting, a
# leader election): long enough for a node failure on a replicated cluster, short enough that a
# wrong bootstrap address still ends the process within a minute.
STARTUP_RETRY_SECONDS = 60.0
RETRY_BACKOFF_MAX_SECONDS = 5.0


class TopicsNotReady(Exception):
    """A topic is missing or too small for what the consumer copies into it; the consumer must not start."""


def problems(
    settings: ConsumerSettings,
    existing: set[str],
    max_message_bytes: Mapping[str, int],
    partitions: Mapping[str, int] | None = None,
) -> list[str]:
    """What is wrong with the cluster's topics, one short sentence each (empty when nothing is)."""
    missing = [topic for topic in settings.all_topics if topic not in existing]
    if missing:
        return [f"missing topics (create them: exam-events topics create): {', '.join(missing)}"]
    raw_limit = max_message_bytes.get(settings.raw_topic)
    found = []
    counts = partitions or {}
    raw_count, dedup_count = counts.get(settings.raw_topic), counts.get(settings.dedup_topic)
    if settings.exactly_once and raw_count and dedup_count is not None and dedup_count < raw_count:
        # Changelog partition p holds the dedup store of raw partition p.
        found.append(
            f"{settings.dedup_topic} has {dedup_count} partitions, fewer than {settings.raw_topic}'s "
            f"{raw_count} (grow it: exam-events topics grow --partitions {raw_count})"
        )
    for topic in settings.body_topics[1:]:  # where raw records are copied
        limit = max_message_bytes.get(topic)
        # Raw records are copied byte for byte (plus headers): the copy must fit where the original did.
        if raw_limit is not None and limit is not None and limit < raw_limit:
            found.append(
                f"{topic} has {MAX_MESSAGE_BYTES}={limit}, less than {settings.raw_topic}'s {raw_limit}: "
                "a large raw record could never be copied there"
            )
    return found


def tight_copy_topics(settings: ConsumerSettings, max_message_bytes: Mapping[str, int]) -> list[str]:
    """Dead-letter and unrouted topics with less room than the raw topic's limit plus the headers a
    copy gains (DEAD_LETTER_HEADROOM_BYTES): a raw record at the very limit could not be copied."""
    raw_limit = max_message_bytes.get(settings.raw_topic)
    if raw_limit is None:
        return []
    wanted = raw_limit + DEAD_LETTER_HEADROOM_BYTES
    return [
        topic
        for topic in settings.body_topics[1:]
        if raw_limit <= max_message_bytes.get(topic, wanted) < wanted
    ]


async def check_topics(
    settings: ConsumerSettings,
    timeout_ms: int = 10_000,
    *,
    retry_for_seconds: float = STARTUP_RETRY_SECONDS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, int]:
    """Each topic's `max.message.bytes` (the consumer dead-letters a webhook whose derived records
    would not fit: `OutputTooLarge`), once the topics are found fit.

    Raise TopicsNotReady when a topic is missing, the DLQ/unrouted topic is smaller than the raw one,
    or (exactly-once) the dedup changelog has fewer partitions than the raw topic.

    While the cluster cannot answer (a retriable Kafka error: a node down, no leader yet) the check
    is asked again with backoff, for at most `retry_for_seconds`; then the error is raised.
    """
    deadline = time.monotonic() + retry_for_seconds
    delay = 0.5
    while True:
        try:
            found, sizes = await _problems_on_the_cluster(settings, timeout_ms)
            break
        except (KafkaError, TimeoutError) as exc:
            retriable = isinstance(exc, TimeoutError | KafkaTimeoutError) or bool(
                getattr(exc, "retriable", False)
            )
            if not retriable or time.monotonic() + delay > deadline:
                raise
            log.warning("topic_check_retrying", error=type(exc).__name__, retry_in_s=delay)
            await sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF_MAX_SECONDS)
    if found:
        raise TopicsNotReady("; ".join(found))
    for topic in tight_copy_topics(settings, sizes):
        log.warning(
            "dead_letter_topic_tight",
            hint=f"give it a {MAX_MESSAGE_BYTES} of the raw topic's plus {DEAD_LETTER_HEADROOM_BYTES} "
            "at least: a raw record at the raw topic's limit could not be copied there with its headers",
            topic=topic,
            max_message_bytes=sizes[topic],
            raw_max_message_bytes=sizes[settings.raw_topic],
        )
    return sizes


async def read_output_limits(settings: ConsumerSettings, timeout_ms: int = 10_000) -> dict[str, int]:
    """Every topic's `max.message.bytes` now (read again after the broker refused a record as too
    large: a limit may have been lowered since start-up)."""
    admin = AIOKafkaAdminClient(**settings.kafka.aiokafka_kwargs(), request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        return await describe_max_message_bytes(admin, settings.all_topics)
    finally:
        await admin.close()


async def _problems_on_the_cluster(
    settings: ConsumerSettings, timeout_ms: int
) -> tuple[list[str], dict[str, int]]:
    admin = AIOKafkaAdminClient(**settings.kafka.aiokafka_kwargs(), request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        sizes: dict[str, int] = {}
        if all(topic in existing for topic in settings.all_topics):
            sizes = await describe_max_message_bytes(admin, settings.all_topics)
        counted = [t for t in (settings.raw_topic, settings.dedup_topic) if t in existing]
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(counted)}
    finally:
        await admin.close()
    return problems(settings, existing, sizes, partitions), sizes
