"""`exam-events topics create|grow|describe`: provision and inspect the project's topics.

Topic names come from the consumer's settings (CONSUMER_*_TOPIC, CONSUMER_DEDUP_TOPIC) and the
forwarder's dead-letter topic (LRS_DLQ_TOPIC), the cluster from KAFKA_*. `create` is idempotent:
existing topics are left alone. `grow` raises partition counts: Kafka can only add partitions, and
adding them moves keys (learners) to other partitions. The dedup changelog of exactly-once mode is
compacted, keeps records for the dedup window (CONSUMER_DEDUP_WINDOW_HOURS) and gets as many
partitions as the raw topic.

Replication: by default min(3, brokers in the cluster), with `min.insync.replicas=2` at a factor of
3 or more (so acks=all survives one broker down) and `min.insync.replicas=1` at a factor of 2 (a
minimum of 2 there would stop writes whenever either broker is down); a factor below 1 or above
the broker count is refused.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from cli.errors import CommandFailed
from cli.kafka import REQUEST_TIMEOUT_MS, unreachable
from common.topics import DEAD_LETTER_HEADROOM_BYTES
from consumer.settings import ConsumerSettings
from lrs_forward.settings import LrsForwardSettings

# The raw, dead-letter and unrouted topics carry whole webhook bodies: room for the ingress's
# largest body (INGRESS_MAX_BODY_BYTES, 1 MiB by default) plus headers and batch overhead, which
# the broker's default limit (1 MiB + 12 bytes) does not leave.
DEFAULT_BODY_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DEFAULT_PARTITIONS = 6
DESCRIBED_CONFIGS = ("cleanup.policy", "retention.ms", "max.message.bytes", "min.insync.replicas")


def body_max_message_bytes() -> int:
    """`max.message.bytes` of the topics that carry whole bodies ($TOPIC_BODY_MAX_MESSAGE_BYTES)."""
    return int(os.environ.get("TOPIC_BODY_MAX_MESSAGE_BYTES", str(DEFAULT_BODY_MAX_MESSAGE_BYTES)))


def topic_configs(settings: ConsumerSettings, topic: str, replication: int) -> dict[str, str]:
    """Per-topic configuration: room for whole bodies; a compacted, windowed dedup changelog."""
    configs: dict[str, str] = {}
    if replication >= 3:
        # acks=all then needs two replicas in sync: one broker may fail without losing a write.
        configs["min.insync.replicas"] = os.environ.get("TOPIC_MIN_INSYNC_REPLICAS", "2")
    elif replication == 2:
        # Set on the topic, not left to the broker's default (2 on a cluster tuned for factor 3):
        # with two replicas a minimum of 2 means either broker down stops every acks=all write.
        # The price: a write acknowledged while one broker is down is on one replica only.
        configs["min.insync.replicas"] = "1"
    if topic == settings.raw_topic:
        configs["max.message.bytes"] = str(body_max_message_bytes())
    elif topic in settings.body_topics:
        # A copy of a raw record gains the consumer's headers: room for the largest one and them.
        configs["max.message.bytes"] = str(body_max_message_bytes() + DEAD_LETTER_HEADROOM_BYTES)
    if topic == settings.dedup_topic:
        # Compaction keeps one record per ce_id; deletion drops segments older than the window,
        # which the store would expire on restore anyway.
        configs["cleanup.policy"] = "compact,delete"
        configs["retention.ms"] = str(int(settings.dedup_window_seconds * 1000))
    return configs


def project_topics(settings: ConsumerSettings) -> list[str]:
    """Every topic the system uses (the dedup changelog included, whichever mode runs now, and the
    dead-letter topic of `exam-events lrs-forward`, whose statements topic is the consumer's)."""
    return sorted({*settings.all_topics, settings.dedup_topic, lrs_dead_letter_topic()})


def lrs_dead_letter_topic() -> str:
    """`LRS_DLQ_TOPIC`, else its default (the forwarder's other settings need not be set here)."""
    default: str = LrsForwardSettings.model_fields["dlq_topic"].default
    return os.environ.get("LRS_DLQ_TOPIC", "").strip() or default


async def _admin(settings: ConsumerSettings) -> Any:
    admin = AIOKafkaAdminClient(**settings.kafka.aiokafka_kwargs(), request_timeout_ms=REQUEST_TIMEOUT_MS)
    try:
        await admin.start()
    except Exception as exc:
        await admin.close()
        raise unreachable(settings, exc) from None
    return admin


async def _partition_counts(admin: Any, topics: list[str]) -> dict[str, int]:
    # list_topics, not describe_topics of missing names: a metadata request naming a missing topic
    # would make a broker with auto.create.topics.enable create it, with default settings.
    present = set(await admin.list_topics()) & set(topics)
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(sorted(present))}


async def broker_count(admin: Any) -> int:
    """How many brokers the cluster metadata lists."""
    cluster = await admin.describe_cluster()
    return len(cluster["brokers"])


async def create(settings: ConsumerSettings, partitions: int, replication: int | None) -> list[str]:
    """Create the missing topics; returns one line per topic (created or exists)."""
    if replication is not None and replication < 1:
        raise CommandFailed(f"replication factor {replication} is not possible: a topic needs at least 1")
    topics = project_topics(settings)
    admin = await _admin(settings)
    lines = []
    try:
        brokers = await broker_count(admin)
        factor = min(3, brokers) if replication is None else replication
        if factor > brokers:
            raise CommandFailed(
                f"replication factor {factor} is more than the {brokers} broker(s) of the cluster"
            )
        existing = await _partition_counts(admin, topics)
        missing = [t for t in topics if t not in existing]
        # Changelog partition p holds raw partition p's dedup store: the two counts go together.
        raw_partitions = existing.get(settings.raw_topic, partitions)

        def count(topic: str) -> int:
            return raw_partitions if topic == settings.dedup_topic else partitions

        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        t,
                        num_partitions=count(t),
                        replication_factor=factor,
                        topic_configs=topic_configs(settings, t, factor),
                    )
                    for t in missing
                ]
            )
            for topic, code, message in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:
                    lines.append(f"exists {topic} (created concurrently)")
                elif code:
                    raise CommandFailed(f"cannot create {topic}: error {code} {message or ''}".strip())
                else:
                    lines.append(f"created {topic} ({count(topic)} partitions, replication factor {factor})")
        lines.extend(f"exists {topic} ({n} partitions)" for topic, n in sorted(existing.items()))
    finally:
        await admin.close()
    return lines


async def grow(settings: ConsumerSettings, partitions: int) -> list[str]:
    """Raise every existing project topic with fewer than `partitions` partitions to that count."""
    admin = await _admin(settings)
    lines = []
    try:
        existing = await _partition_counts(admin, project_topics(settings))
        if not existing:
            raise CommandFailed("no project topic exists yet: run `exam-events topics create` first")
        for topic, count in sorted(existing.items()):
            if count < partitions:
                await admin.create_partitions({topic: NewPartitions(total_count=partitions)})
                lines.append(f"grew {topic} from {count} to {partitions} partitions")
            else:
                lines.append(f"kept {topic} ({count} partitions)")
    finally:
        await admin.close()
    return lines


async def describe(settings: ConsumerSettings) -> list[dict[str, Any]]:
    """Each project topic: partitions, replication factor, in-sync replicas and key configs."""
    topics = project_topics(settings)
    admin = await _admin(settings)
    try:
        present = set(await admin.list_topics()) & set(topics)
        described = {t["topic"]: t for t in await admin.describe_topics(sorted(present))}
        configs: dict[str, dict[str, str]] = {}
        if present:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t) for t in sorted(present)]
            )
            for response in responses:
                for resource in response.to_object()["resources"]:
                    configs[resource["resource_name"]] = {
                        entry["config_names"]: entry["config_value"]
                        for entry in resource["config_entries"]
                        if entry["config_names"] in DESCRIBED_CONFIGS
                    }
    finally:
        await admin.close()
    rows: list[dict[str, Any]] = []
    for topic in topics:
        info = described.get(topic)
        if info is None:
            rows.append({"topic": topic, "exists": False})
            continue
        parts = info["partitions"]
        rows.append(
            {
                "topic": topic,
                "exists": True,
                "partitions": len(parts),
                "replication_factor": min((len(p["replicas"]) for p in parts), default=0),
                "under_replicated": sum(1 for p in parts if len(p["isr"]) < len(p["replicas"])),
                "configs": configs.get(topic, {}),
            }
        )
    return rows


def format_description(rows: list[dict[str, Any]]) -> list[str]:
    """`describe`'s rows as aligned text lines."""
    width = max(len(row["topic"]) for row in rows)
    lines = []
    for row in rows:
        if not row["exists"]:
            lines.append(f"{row['topic']:<{width}}  missing")
            continue
        settings = " ".join(f"{k}={v}" for k, v in sorted(row["configs"].items()))
        lines.append(
            f"{row['topic']:<{width}}  partitions={row['partitions']} "
            f"replication={row['replication_factor']} under_replicated={row['under_replicated']} {settings}"
        )
    return lines


def add_parser(commands: Any) -> None:
    """`exam-events topics ...`."""
    parser = commands.add_parser(
        "topics",
        help="create, grow or describe the project's topics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{create,grow,describe}")
    default_partitions = int(os.environ.get("TOPIC_PARTITIONS", str(DEFAULT_PARTITIONS)))
    create_parser = actions.add_parser(
        "create", help="create the missing topics (idempotent)", description="Create the missing topics."
    )
    create_parser.add_argument(
        "--partitions",
        type=int,
        default=default_partitions,
        help=f"partitions of each new topic (default: $TOPIC_PARTITIONS or {DEFAULT_PARTITIONS})",
    )
    env_factor = os.environ.get("TOPIC_REPLICATION_FACTOR")
    create_parser.add_argument(
        "--replication-factor",
        type=int,
        default=int(env_factor) if env_factor else None,
        help="replicas of each new topic, 1..brokers (default: $TOPIC_REPLICATION_FACTOR, else "
        "min(3, brokers)); min.insync.replicas is set to 2 at 3 or more, to 1 at 2",
    )
    grow_parser = actions.add_parser(
        "grow",
        help="raise the partition count of existing topics",
        description="Raise every project topic to --partitions (Kafka cannot shrink a topic; keys move).",
    )
    grow_parser.add_argument("--partitions", type=int, required=True, help="the new partition count")
    describe_parser = actions.add_parser(
        "describe", help="show partitions, replication and configs", description="Describe the topics."
    )
    describe_parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    """Run the chosen action and print its lines."""
    import json

    if args.action == "create":
        lines = await create(settings, args.partitions, args.replication_factor)
    elif args.action == "grow":
        lines = await grow(settings, args.partitions)
    else:
        rows = await describe(settings)
        lines = [json.dumps(rows)] if args.json else format_description(rows)
    for line in lines:
        print(line)
    return 0
