"""`exam-events tail TOPIC`: print the events of a topic readably, with their CloudEvents attributes.

    exam-events tail exam.results.passed                 the last 10 events, then exit
    exam-events tail exam.results.passed --follow        ... and every new one until Ctrl-C
    exam-events tail exam.resits --from-beginning --json one JSON object per line

Records are read with isolation.level=read_committed, as downstream services read them (no
records of aborted or open transactions). Each shows its partition, offset, time and key, the
`ce_*` headers as CloudEvents attributes, and the value (pretty JSON when it is JSON). Learners'
names and e-mail addresses are masked unless --show-personal-data is given.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from cli.errors import CommandFailed
from cli.kafka import admin_and_reader, partitions_of
from consumer.settings import ConsumerSettings

CE_PREFIX = "ce_"
MASK = "***"
# Keys whose values are a person's name or e-mail address (the derived events' `learner.name`
# and `learner.email`, the webhooks' user fields).
PERSONAL_KEYS = frozenset(
    {"name", "email", "firstname", "lastname", "fullname", "username", "displayname", "mail"}
)
# Keys named `name` that hold no one's name.
IMPERSONAL_PARENTS = frozenset({"exam", "qualification", "meta", "test", "course", "group", "usergroup"})
EMAIL = re.compile(r"[^@\s\"']+@[^@\s\"']+\.[A-Za-z]{2,}")


def mask_personal_data(value: Any, parent: str | None = None) -> Any:
    """A copy of a JSON value with names and e-mail addresses replaced by `***`."""
    if isinstance(value, dict):
        masked = {}
        for key, item in value.items():
            folded = key.lower().replace("_", "")
            personal = folded in PERSONAL_KEYS and not (
                folded == "name" and (parent or "").lower() in IMPERSONAL_PARENTS
            )
            masked[key] = MASK if personal and isinstance(item, str) else mask_personal_data(item, key)
        return masked
    if isinstance(value, list):
        return [mask_personal_data(item, parent) for item in value]
    if isinstance(value, str):
        return EMAIL.sub(MASK, value)
    return value


def describe_record(record: Any, *, show_personal_data: bool) -> dict[str, Any]:
    """A record as a JSON-able dict: coordinates, CloudEvents attributes, other headers, value."""
    attributes: dict[str, str] = {}
    headers: dict[str, str] = {}
    for key, raw in record.headers or ():
        text = raw.decode("utf-8", "replace") if raw is not None else ""
        if key.startswith(CE_PREFIX):
            attributes[key.removeprefix(CE_PREFIX)] = text
        else:
            headers[key] = text
    value: Any = None
    if record.value is not None:
        try:
            value = json.loads(record.value)
        except (UnicodeDecodeError, ValueError):
            value = record.value.decode("utf-8", "replace")
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    if not show_personal_data:
        value = mask_personal_data(value)
        headers = {name: EMAIL.sub(MASK, text) for name, text in headers.items()}
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds"),
        "key": key,
        "cloudevents": attributes,
        "headers": headers,
        "value": value,
    }


def render(event: dict[str, Any]) -> str:
    """The readable form: a heading line, the attributes, then the value."""
    attrs = event["cloudevents"]
    lines = [
        f"--- {event['topic']} [{event['partition']}] @{event['offset']}  {event['timestamp']}  "
        f"key={event['key']}",
    ]
    width = max([len(k) for k in attrs] + [4])
    lines.extend(f"  {name:<{width}}  {attrs[name]}" for name in sorted(attrs))
    if event["headers"]:
        lines.append("  headers: " + ", ".join(f"{k}={v}" for k, v in sorted(event["headers"].items())))
    value = event["value"]
    body = json.dumps(value, indent=2, ensure_ascii=False) if not isinstance(value, str) else value
    lines.extend(f"  {line}" for line in body.splitlines())
    return "\n".join(lines)


async def tail(
    settings: ConsumerSettings,
    topic: str,
    *,
    from_beginning: bool,
    follow: bool,
    lines: int,
    as_json: bool,
    show_personal_data: bool,
    out: TextIO = sys.stdout,
    idle_exit_ms: int = 1000,
) -> int:
    """Print the topic's records; returns how many were printed."""
    printed = 0
    async with admin_and_reader(settings) as (admin, reader):
        if topic not in set(await admin.list_topics()):
            raise CommandFailed(f"topic {topic} does not exist")
        partitions = await partitions_of(admin, topic)
        reader.assign(partitions)
        earliest = await reader.beginning_offsets(partitions)
        end = await reader.end_offsets(partitions)
        for tp in partitions:
            # The last `lines` records per partition (or all), like tail(1); merged by time below.
            # Twice as many offsets back: in a transactional topic each transaction's commit marker
            # takes an offset too (at worst one per record), and markers are never returned.
            back = earliest[tp] if from_beginning else max(earliest[tp], end[tp] - 2 * lines)
            reader.seek(tp, back)
        backlog: list[Any] = []  # records present when the command started
        newer: list[Any] = []  # records that arrived while the backlog was read
        while not all([await reader.position(tp) >= end[tp] for tp in partitions]):
            batches = await reader.getmany(timeout_ms=idle_exit_ms)
            for tp, batch in batches.items():
                for record in batch:
                    (backlog if record.offset < end[tp] else newer).append(record)
        printed += _print(_last(backlog, lines, from_beginning), out, as_json, show_personal_data)
        if not follow:
            return printed
        printed += _print(sorted(newer, key=_order), out, as_json, show_personal_data)
        while True:
            batches = await reader.getmany(timeout_ms=idle_exit_ms)
            records = sorted((r for batch in batches.values() for r in batch), key=_order)
            printed += _print(records, out, as_json, show_personal_data)


def _print(records: Sequence[Any], out: TextIO, as_json: bool, show_personal_data: bool) -> int:
    for record in records:
        event = describe_record(record, show_personal_data=show_personal_data)
        out.write((json.dumps(event, ensure_ascii=False) if as_json else render(event)) + "\n")
    out.flush()
    return len(records)


def _order(record: Any) -> tuple[int, int, int]:
    return (record.timestamp, record.partition, record.offset)


def _last(records: Sequence[Any], lines: int, everything: bool) -> list[Any]:
    ordered = sorted(records, key=_order)
    return ordered if everything else ordered[-lines:] if lines else []


def add_parser(commands: Any) -> None:
    """`exam-events tail ...`."""
    parser = commands.add_parser(
        "tail",
        help="print a topic's events readably (names and e-mails masked)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("topic", metavar="TOPIC", help="e.g. exam.results.passed")
    parser.add_argument("--from-beginning", action="store_true", help="every record, not only the last ones")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new records until Ctrl-C")
    parser.add_argument(
        "--lines", "-n", type=int, default=10, metavar="N", help="how many of the last records (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per record and line")
    parser.add_argument(
        "--show-personal-data", action="store_true", help="do not mask learners' names and e-mail addresses"
    )
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    """Print the records."""
    await tail(
        settings,
        args.topic,
        from_beginning=args.from_beginning,
        follow=args.follow,
        lines=max(args.lines, 0),
        as_json=args.json,
        show_personal_data=args.show_personal_data,
    )
    return 0
