"""`exam-events tail TOPIC`: print the events of a topic readably, with their CloudEvents attributes.

    exam-events tail exam.results.passed                 the last 10 events, then exit
    exam-events tail exam.results.passed --follow        ... and every new one until Ctrl-C
    exam-events tail exam.resits --from-beginning --json one JSON object per line

Records are read with isolation.level=read_committed, as downstream services read them (no
records of aborted or open transactions). Each shows its partition, offset, time and key, the
`ce_*` headers as CloudEvents attributes, and the value (pretty JSON when it is JSON).

Personal data is masked (`***`) unless --show-personal-data is given:
- the record key, which is the learner id, and the learner id in the value (`id` of a `user` or
  `learner` object, `userId`, `learnerId`);
- in a JSON value, at any depth and whatever the case or separators of the key: `name` (unless
  the object holding it is an exam, qualification, course, test, group, user group or meta),
  `email`, `givenName`, `familyName`, `surname`, `firstName`, `lastName` and the like; the whole
  value of such a key, also an object or a list;
- e-mail addresses in any other text: values, header values, CloudEvents attributes;
- a value that is not a JSON object or array (not JSON, not UTF-8, a bare JSON string or number)
  is masked whole, printed as `*** (N bytes, not a JSON object or array)`: nothing in it can be
  told apart from a name.

Control characters never reach the terminal: C0 (tab and newline included), DEL, C1, escape
sequences such as ESC[2J (whole, with their parameters), and the Unicode line separators and
bidirectional overrides are removed from everything printed (key, header names and values,
attributes, the value and its keys), with or without --show-personal-data.
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
# Keys (folded: lower case, without "_" and "-") whose values are a person's name or e-mail
# address: the derived events' `learner.name` and `learner.email`, the webhooks' user fields, and
# the spellings other senders use.
PERSONAL_KEYS = frozenset(
    {
        "name",
        "email",
        "mail",
        "emailaddress",
        "givenname",
        "familyname",
        "surname",
        "firstname",
        "middlename",
        "lastname",
        "fullname",
        "username",
        "displayname",
    }
)
# Keys named `name` that hold no one's name, by the key of the object that holds them.
IMPERSONAL_PARENTS = frozenset({"exam", "qualification", "meta", "test", "course", "group", "usergroup"})
# The learner id, which is also the record key: `id` in these objects, and these keys anywhere.
LEARNER_PARENTS = frozenset({"user", "learner", "users", "learners"})
LEARNER_ID_KEYS = frozenset({"userid", "learnerid"})
EMAIL = re.compile(r"[^@\s\"']+@[^@\s\"']+\.[A-Za-z]{2,}")
# What a terminal would act on: escape sequences whole (CSI such as ESC[2J, in its 7- and 8-bit
# forms; OSC, DCS and the other strings up to their terminator; two-character escapes), then any
# other C0, DEL or C1 character, the Unicode line separators and the bidirectional overrides.
TERMINAL_CONTROLS = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
    r"|[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def printable(text: str) -> str:
    """`text` without anything a terminal would take for a command (see TERMINAL_CONTROLS)."""
    return TERMINAL_CONTROLS.sub("", text)


def printable_value(value: Any) -> Any:
    """A copy of a JSON value with every string, keys included, made `printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(key)): printable_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [printable_value(item) for item in value]
    return value


def _fold(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _is_personal(key: str, parent: str) -> bool:
    """Whether the value of `key` (folded), in an object held under `parent` (folded), is personal."""
    if key == "name":
        return parent not in IMPERSONAL_PARENTS
    return key in PERSONAL_KEYS or key in LEARNER_ID_KEYS or (key == "id" and parent in LEARNER_PARENTS)


def mask_personal_data(value: Any, parent: str = "") -> Any:
    """A copy of a JSON value with names, e-mail addresses and learner ids replaced by `***`.

    A personal key's whole value is masked, also an object or a list; `null` stays `null`.
    """
    if isinstance(value, dict):
        folded_parent = _fold(parent)
        return {
            key: MASK
            if item is not None and _is_personal(_fold(str(key)), folded_parent)
            else mask_personal_data(item, str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_personal_data(item, parent) for item in value]
    if isinstance(value, str):
        return EMAIL.sub(MASK, value)
    return value


def describe_value(raw: bytes | None, *, show_personal_data: bool) -> Any:
    """The value as JSON when it is a JSON object or array, masked; anything else masked whole.

    Made printable before it is masked: a control character inside a key or an address must not
    hide it from the mask and then vanish from the output.
    """
    if raw is None:
        return None
    try:
        value: Any = printable_value(json.loads(raw))
    except (UnicodeDecodeError, ValueError):
        if show_personal_data:
            return printable(raw.decode("utf-8", "replace"))
        value = None
    if isinstance(value, dict | list):
        return value if show_personal_data else mask_personal_data(value)
    if show_personal_data:
        return value
    # Free text, or a bare string: no field tells a name apart from anything else in it.
    return f"{MASK} ({len(raw)} bytes, not a JSON object or array)"


def describe_record(record: Any, *, show_personal_data: bool) -> dict[str, Any]:
    """A record as a JSON-able dict: coordinates, CloudEvents attributes, other headers, value.

    Masked unless `show_personal_data`, and printable in any case (see the module docstring).
    """
    attributes: dict[str, str] = {}
    headers: dict[str, str] = {}
    for name, raw in record.headers or ():
        text = printable(raw.decode("utf-8", "replace")) if raw is not None else ""
        if not show_personal_data:
            text = EMAIL.sub(MASK, text)
        if name.startswith(CE_PREFIX):
            attributes[printable(name.removeprefix(CE_PREFIX))] = text
        else:
            headers[printable(name)] = text
    key: str | None = None
    if record.key is not None:
        key = printable(record.key.decode("utf-8", "replace")) if show_personal_data else MASK
    return {
        "topic": printable(record.topic),
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds"),
        "key": key,
        "cloudevents": attributes,
        "headers": headers,
        "value": describe_value(record.value, show_personal_data=show_personal_data),
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
        printed += write_records(_last(backlog, lines, from_beginning), out, as_json, show_personal_data)
        if not follow:
            return printed
        printed += write_records(sorted(newer, key=_order), out, as_json, show_personal_data)
        while True:
            batches = await reader.getmany(timeout_ms=idle_exit_ms)
            records = sorted((r for batch in batches.values() for r in batch), key=_order)
            printed += write_records(records, out, as_json, show_personal_data)


def write_records(records: Sequence[Any], out: TextIO, as_json: bool, show_personal_data: bool) -> int:
    """Write each record, readable or as a JSON line, masked unless `show_personal_data`."""
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
        help="print a topic's events readably (personal data masked, control characters removed)",
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
        "--show-personal-data",
        action="store_true",
        help="do not mask the key, names, e-mail addresses, learner ids and values that are not a JSON "
        "object or array "
        "(control characters are removed all the same)",
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
