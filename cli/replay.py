"""`exam-events replay`: copy dead-letter or unrouted records back to the raw topic.

    exam-events replay --from exam.webhooks.unrouted --event-name "Exam Results Released" --dry-run
    exam-events replay --from exam.webhooks.dlq --error-type ValidationError --since 2026-12-01T00:00:00Z

Each matching record is copied to --to (default: the raw topic, CONSUMER_RAW_TOPIC) with its key
and value byte for byte and its headers kept, plus `replay-id`, `replay-source-topic`,
`replay-source-partition` and `replay-source-offset` (an earlier replay's `replay-*` headers are
replaced). The consumer then handles it as any webhook; the derived events keep their ce_ids, and
in exactly-once mode the dedup store suppresses what was published before.

Filters: --since/--until (ISO 8601, on the record's timestamp), --event-name (the `event-name`
header the ingress set, or the consumer's `dlq-event-name` / `unrouted-event-name`), --error-type
(`dlq-error-type`, or the start of `unrouted-reason`, e.g. "no handler"). --limit stops after N
copies, --rate caps copies per second. Only records present when the command starts are considered.

Copying twice is impossible, also after an interruption: the copies and the source position are
committed together, in one Kafka transaction per chunk, under a consumer group named after the
replay id. The replay id is a hash of --from, --to and the filters, so running the same command
again resumes after the last committed chunk; an interrupted chunk is aborted (its transactional
id is the replay id, so the next run fences and aborts it) and copied again, once. A different
filter is a different replay with a position of its own.

Only raw webhook bodies are copied, and only to the raw topic: --from must be the raw, dead-letter
or unrouted topic (CONSUMER_RAW_TOPIC, CONSUMER_DLQ_TOPIC, CONSUMER_UNROUTED_TOPIC) and --to the
raw topic, else the command refuses in one line and copies nothing. From a derived topic the
consumer would take derived events for webhooks; to another topic the bodies (names, e-mail
addresses) would skip the consumer and reach whoever reads that topic. --force copies anyway.

--dry-run moves nothing: it prints a sample (partition, offset, event name, reason) and, on its
last line, how many records would move. A progress bar goes to stderr on a terminal; a summary line
ends every run. Any failure ends the command with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from cli.errors import CommandFailed
from cli.kafka import admin_and_reader, partitions_of
from common.producer import reliable_producer_kwargs
from consumer.plan import DLQ_ERROR_TYPE, DLQ_EVENT_NAME, UNROUTED_EVENT_NAME, UNROUTED_REASON
from consumer.settings import ConsumerSettings

REPLAY_ID = "replay-id"
REPLAY_SOURCE_TOPIC = "replay-source-topic"
REPLAY_SOURCE_PARTITION = "replay-source-partition"
REPLAY_SOURCE_OFFSET = "replay-source-offset"
EVENT_NAME_HEADERS = ("event-name", DLQ_EVENT_NAME, UNROUTED_EVENT_NAME)
REASON_HEADERS = (DLQ_ERROR_TYPE, UNROUTED_REASON)
CHUNK_RECORDS = 500  # copies per transaction, at most
CHUNK_SECONDS = 1.0  # age of a transaction, at most
SAMPLE_SIZE = 10
TRANSACTION_TIMEOUT_MS = 60_000


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ReplayRequest:
    """What to copy where; the replay id and its consumer group follow from it."""

    source: str
    target: str
    since: datetime | None = None
    until: datetime | None = None
    event_name: str | None = None
    error_type: str | None = None
    limit: int | None = None
    rate: float | None = None
    dry_run: bool = False
    force: bool = False  # not part of the replay id: it permits a copy, it does not change it

    @property
    def replay_id(self) -> str:
        """Deterministic: the same source, target and filters resume one replay."""
        identity = json.dumps(
            [
                self.source,
                self.target,
                self.since.isoformat() if self.since else None,
                self.until.isoformat() if self.until else None,
                self.event_name,
                self.error_type,
            ]
        )
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    @property
    def group_id(self) -> str:
        """The consumer group that holds this replay's position in the source topic."""
        return f"exam-events.replay.{self.replay_id}"

    def matches(self, headers: Sequence[tuple[str, bytes]], timestamp_ms: int) -> bool:
        """True when the record passes every filter."""
        if self.since is not None and timestamp_ms < self.since.timestamp() * 1000:
            return False
        if self.event_name is not None and self.event_name not in header_values(headers, EVENT_NAME_HEADERS):
            return False
        if self.error_type is None:
            return True
        # dlq-error-type is a short type; unrouted-reason a sentence, matched by its start.
        return any(reason.startswith(self.error_type) for reason in header_values(headers, REASON_HEADERS))


def header_values(headers: Sequence[tuple[str, bytes]], names: Sequence[str]) -> set[str]:
    """The values (as text) of the headers called `names`."""
    return {value.decode("utf-8", "replace") for key, value in headers if key in names and value is not None}


def first_header(headers: Sequence[tuple[str, bytes]], names: Sequence[str]) -> str | None:
    """The first of `names` present, as text."""
    for name in names:
        for key, value in headers:
            if key == name and value is not None:
                return value.decode("utf-8", "replace")
    return None


def replay_headers(
    original: Sequence[tuple[str, bytes]], replay_id: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The original headers (minus an earlier replay's) plus where this copy came from."""
    kept = [(key, value) for key, value in original if not key.startswith("replay-")]
    return [
        *kept,
        (REPLAY_ID, replay_id.encode()),
        (REPLAY_SOURCE_TOPIC, topic.encode()),
        (REPLAY_SOURCE_PARTITION, str(partition).encode()),
        (REPLAY_SOURCE_OFFSET, str(offset).encode()),
    ]


@dataclass
class ReplayReport:
    """What a run did (or, dry, would do)."""

    replay_id: str
    examined: int = 0
    matched: int = 0
    copied: int = 0
    sample: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self._total = max(total, 1)
        self._on = sys.stderr.isatty()
        self._drawn = 0.0

    def update(self, examined: int, copied: int, *, force: bool = False) -> None:
        """Redraw at most ten times a second."""
        now = time.monotonic()
        if not self._on or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        done = min(examined / self._total, 1.0)
        bar = "#" * int(done * 30)
        sys.stderr.write(f"\r[{bar:<30}] {examined}/{self._total} examined, {copied} copied")
        sys.stderr.flush()

    def close(self) -> None:
        if self._on:
            sys.stderr.write("\n")


def refuse_unsafe_topics(request: ReplayRequest, settings: ConsumerSettings) -> None:
    """`CommandFailed` (one line) unless --from holds raw bodies and --to is the raw topic, or --force."""
    if request.force:
        return
    reasons = []
    if request.source not in settings.body_topics:
        reasons.append(
            f"--from {request.source} does not hold raw webhook bodies "
            f"(those are {', '.join(settings.body_topics)})"
        )
    if request.target != settings.raw_topic:
        reasons.append(f"--to {request.target} is not the raw topic {settings.raw_topic}")
    if reasons:
        raise CommandFailed(f"refused: {'; '.join(reasons)}; --force copies anyway")


async def replay(request: ReplayRequest, settings: ConsumerSettings) -> ReplayReport:
    """Copy (or, dry, count) the matching records; see the module docstring for the guarantees."""
    if request.source == request.target:
        raise CommandFailed("--from and --to are the same topic")
    refuse_unsafe_topics(request, settings)
    if request.since and request.until and request.since > request.until:
        raise CommandFailed("--since is after --until")
    report = ReplayReport(request.replay_id)
    started = time.monotonic()
    async with admin_and_reader(settings, max_partition_fetch_bytes=4 * 1024 * 1024) as (admin, reader):
        existing = set(await admin.list_topics())
        for topic, flag in ((request.source, "--from"), (request.target, "--to")):
            if topic not in existing:
                raise CommandFailed(f"{flag} topic {topic} does not exist")
        partitions = await partitions_of(admin, request.source)
        committed = {
            tp: meta.offset
            for tp, meta in (await admin.list_consumer_group_offsets(request.group_id)).items()
            if meta.offset >= 0
        }
        start, end = await _window(reader, partitions, committed, request)
        pending = {tp for tp in partitions if start[tp] < end[tp]}
        reader.assign(partitions)
        for tp in partitions:
            reader.seek(tp, start[tp])
        producer: AIOKafkaProducer | None = None
        if not request.dry_run:
            producer = AIOKafkaProducer(
                **reliable_producer_kwargs(
                    settings.kafka,
                    transactional_id=request.group_id,
                    transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                    max_request_size=4 * 1024 * 1024,
                )
            )
            # InitProducerId with the replay's transactional id aborts an interrupted run's chunk.
            await producer.start()
        try:
            progress = Progress(sum(end[tp] - start[tp] for tp in pending))
            await _copy(reader, producer, request, report, pending, end, progress)
            progress.close()
        finally:
            if producer is not None:
                await producer.stop()
    report.seconds = time.monotonic() - started
    return report


async def _window(
    reader: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    committed: dict[TopicPartition, int],
    request: ReplayRequest,
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Where each partition starts (the replay's position, or --since) and ends (now, or --until)."""
    earliest = await reader.beginning_offsets(partitions)
    end = await reader.end_offsets(partitions)
    start = {tp: max(committed.get(tp, earliest[tp]), earliest[tp]) for tp in partitions}
    for bound, apply_to in ((request.since, start), (request.until, end)):
        if bound is None:
            continue
        millis = int(bound.timestamp() * 1000)
        found = await reader.offsets_for_times(dict.fromkeys(partitions, millis))
        for tp in partitions:
            # No record at or after the time: nothing from it (since) / everything up to now (until).
            offset = found[tp].offset if found.get(tp) is not None else end[tp]
            apply_to[tp] = max(apply_to[tp], offset) if apply_to is start else min(apply_to[tp], offset)
    return start, end


async def _copy(
    reader: AIOKafkaConsumer,
    producer: AIOKafkaProducer | None,
    request: ReplayRequest,
    report: ReplayReport,
    pending: set[TopicPartition],
    end: dict[TopicPartition, int],
    progress: Progress,
) -> None:
    """Read each pending partition up to its end; copy matches in transactions with the position."""
    rate_started = time.monotonic()
    positions: dict[TopicPartition, int] = {}  # next offset to examine, per partition
    chunk = _Chunk(producer, request.group_id)
    for tp in set(end) - pending:
        reader.pause(tp)
    try:
        while pending and not _limit_reached(request, report):
            batches = await reader.getmany(*pending, timeout_ms=1000, max_records=CHUNK_RECORDS)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp] or _limit_reached(request, report):
                        break
                    report.examined += 1
                    positions[tp] = record.offset + 1
                    chunk.dirty = True
                    headers = list(record.headers)
                    if not request.matches(headers, record.timestamp):
                        continue
                    report.matched += 1
                    if len(report.sample) < SAMPLE_SIZE:
                        report.sample.append(_sample_line(tp, record.offset, headers))
                    if producer is not None:
                        copy_headers = replay_headers(
                            headers, request.replay_id, tp.topic, tp.partition, record.offset
                        )
                        await chunk.send(request.target, record.value, record.key, copy_headers)
                        report.copied += 1
                        if chunk.full():
                            await chunk.commit(positions)
                        await _pace(request, report.copied, rate_started)
                    progress.update(report.examined, report.copied)
            if chunk.full():
                await chunk.commit(positions)
            for tp in list(pending):
                # The reader's position, not the last record's: under read_committed the offsets before
                # the end may be transaction markers, which are never returned as records.
                if await reader.position(tp) >= end[tp]:
                    pending.discard(tp)
                    reader.pause(tp)
        await chunk.commit(positions)
    except BaseException:
        report.copied -= await chunk.abort()
        raise
    progress.update(report.examined, report.copied, force=True)


class _Chunk:
    """The open transaction: copies plus, at commit, the source position, visible together or not at all."""

    def __init__(self, producer: AIOKafkaProducer | None, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id
        self._open_since: float | None = None
        self.copies = 0
        self.dirty = False  # positions moved since the last commit

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        assert self._producer is not None
        if self._open_since is None:
            await self._producer.begin_transaction()
            self._open_since = time.monotonic()
        await self._producer.send(topic, value, key=key, headers=headers)
        self.copies += 1

    def full(self) -> bool:
        """Commit after CHUNK_RECORDS copies or a second, whichever first: a slow --rate never lets a
        transaction run into its timeout, and an interruption loses at most a second's work."""
        opened = self._open_since
        return opened is not None and (
            self.copies >= CHUNK_RECORDS or time.monotonic() - opened >= CHUNK_SECONDS
        )

    async def commit(self, positions: dict[TopicPartition, int]) -> None:
        if self._producer is None or not (self.dirty or self.copies):
            return
        if self._open_since is None:
            await self._producer.begin_transaction()
        await self._producer.send_offsets_to_transaction(dict(positions), self._group_id)
        await self._producer.commit_transaction()
        self._open_since, self.copies, self.dirty = None, 0, False

    async def abort(self) -> int:
        """Abort the open transaction (bounded); returns how many copies it held."""
        if self._producer is None or self._open_since is None:
            return 0
        copies, self._open_since, self.copies = self.copies, None, 0
        # If this fails, the next run's InitProducerId aborts the chunk, or the broker's timeout does.
        with contextlib.suppress(KafkaError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._producer.abort_transaction()), 10)
        return copies


def _limit_reached(request: ReplayRequest, report: ReplayReport) -> bool:
    return request.limit is not None and report.matched >= request.limit


async def _pace(request: ReplayRequest, copied: int, started: float) -> None:
    """Sleep so that copies stay at or under --rate per second."""
    if request.rate:
        ahead = copied / request.rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


def _sample_line(tp: TopicPartition, offset: int, headers: Sequence[tuple[str, bytes]]) -> str:
    name = first_header(headers, EVENT_NAME_HEADERS) or "-"
    reason = first_header(headers, REASON_HEADERS) or "-"
    return f"partition={tp.partition} offset={offset} event_name={name!r} reason={reason!r}"


def add_parser(commands: Any) -> None:
    """`exam-events replay ...`."""
    parser = commands.add_parser(
        "replay",
        help="copy dead-letter or unrouted records back to the raw topic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="source", required=True, metavar="TOPIC", help="topic to copy from")
    parser.add_argument(
        "--to", dest="target", metavar="TOPIC", help="topic to copy to (default: the raw topic)"
    )
    parser.add_argument("--since", type=parse_time, metavar="ISO8601", help="records at or after this time")
    parser.add_argument("--until", type=parse_time, metavar="ISO8601", help="records before this time")
    parser.add_argument("--event-name", metavar="NAME", help="only records of this event name")
    parser.add_argument(
        "--error-type", metavar="TYPE", help="only records with this dlq-error-type/unrouted-reason"
    )
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="copy at most N records")
    parser.add_argument(
        "--rate", type=_positive_float, metavar="PER_S", help="copy at most this many per second"
    )
    parser.add_argument("--dry-run", action="store_true", help="move nothing; print a sample and the count")
    parser.add_argument(
        "--force",
        action="store_true",
        help="copy also from a topic other than the raw, dead-letter or unrouted one, or to a topic "
        "other than the raw one (refused without it: see above)",
    )
    parser.set_defaults(run=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


async def run(args: argparse.Namespace, settings: ConsumerSettings) -> int:
    """Run the replay and print the sample (dry) and the summary line."""
    request = ReplayRequest(
        source=args.source,
        target=args.target or settings.raw_topic,
        since=args.since,
        until=args.until,
        event_name=args.event_name,
        error_type=args.error_type,
        limit=args.limit,
        rate=args.rate,
        dry_run=args.dry_run,
        force=args.force,
    )
    report = await replay(request, settings)
    if request.dry_run:
        for line in report.sample:
            print(line)
        print(
            f"dry run (replay id {report.replay_id}): examined {report.examined}; "
            f"{report.matched} records would move from {request.source} to {request.target}"
        )
    else:
        print(
            f"replay {report.replay_id}: copied {report.copied} records from {request.source} to "
            f"{request.target} (examined {report.examined}) in {report.seconds:.1f} s"
        )
    return 0
