"""`exam-events lag [--group ID] [--json]`: how far the consumer group is behind, per partition.

For every partition of the raw topic (and of any other topic the group has committed offsets on):
the committed offset, the log-end offset (the last stable offset: the consumer reads with
read_committed, so records of open transactions do not count yet) and the lag between them, then
the total. A partition without a committed offset counts from its earliest offset.

Records written in a transaction (e.g. by `exam-events replay`) are followed by a commit marker,
which takes an offset of its own and is never delivered: a partition whose last write was a
transaction shows a lag of 1 until its next record is consumed. Lag that stays at 1 on an idle
partition is that marker, not a stuck consumer.

    --json prints {"group": ..., "total_lag": N,
                   "partitions": [{"topic": ..., "partition": ..., "committed": ..., "end": ..., "lag": ...}]}
("committed" is null where the group has none.)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import TopicPartition

from cli.errors import CommandFailed
from cli.kafka import admin_and_reader
from common.lag import partition_lag
from consumer.settings import ConsumerSettings


@dataclass(frozen=True)
class PartitionLag:
    """One partition's row."""

    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


async def group_lag(settings: ConsumerSettings, group: str) -> list[PartitionLag]:
    """The group's lag on every partition of the raw topic and of the topics it committed on."""
    async with admin_and_reader(settings) as (admin, reader):
        committed = {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
        topics = {settings.raw_topic} | {tp.topic for tp in committed}
        existing = set(await admin.list_topics())
        if settings.raw_topic not in existing:
            raise CommandFailed(f"topic {settings.raw_topic} does not exist (exam-events topics create)")
        partitions: list[TopicPartition] = []
        for described in await admin.describe_topics(sorted(topics & existing)):
            partitions.extend(
                TopicPartition(described["topic"], p["partition"]) for p in described["partitions"]
            )
        ends = await reader.end_offsets(partitions)
        earliest = await reader.beginning_offsets(partitions)
    rows = []
    for tp in sorted(partitions):
        mark = committed.get(tp)
        mark = mark if mark is not None and mark >= 0 else None
        rows.append(
            PartitionLag(tp.topic, tp.partition, mark, ends[tp], partition_lag(mark, ends[tp], earliest[tp]))
        )
    return rows


def as_json(group: str, rows: list[PartitionLag]) -> str:
    """The `--json` document."""
    return json.dumps(
        {"group": group, "total_lag": sum(r.lag for r in rows), "partitions": [asdict(r) for r in rows]}
    )


def as_table(group: str, rows: list[PartitionLag]) -> list[str]:
    """Aligned text: one line per partition, then the total."""
    width = max([len("TOPIC"), *(len(r.topic) for r in rows)])
    lines = [f"{'TOPIC':<{width}}  PARTITION  COMMITTED        END        LAG"]
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        lines.append(f"{r.topic:<{width}}  {r.partition:>9}  {committed:>9}  {r.end:>9}  {r.lag:>9}")
    lines.append(f"group {group}: total lag {sum(r.lag for r in rows)}")
    return lines


def add_parser(commands: Any) -> None:
    """`exam-events lag ...`."""
    parser = commands.add_parser(
        "lag",
        help="the consumer group's lag per partition, and the total",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--group", help="consumer group id (default: $CONSUMER_GROUP_ID or exam-events)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (see above)")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    """Print the lag table (or JSON)."""
    group = args.group or settings.group_id
    rows = await group_lag(settings, group)
    print(as_json(group, rows) if args.json else "\n".join(as_table(group, rows)))
    return 0
