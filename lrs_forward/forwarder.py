"""From the statements topic to the LRS: batches, splitting, dead letters, commits.

One loop, one batch at a time (up to LRS_BATCH_MAX_STATEMENTS records from the assigned partitions,
in partition order):

1. each record's value must be one JSON object; one that is not goes to the dead-letter topic
   without asking the LRS (a value such as `{..},{..}` would otherwise become two statements);
2. the others go in one POST, each value byte for byte as an element of a JSON array;
3. the answer (`lrs_forward.lrs`): accepted, the group is delivered; a refusal (4xx; a 409 of
   several statements too, since one differing statement fails them all) splits the group in
   halves, sent in order, until the statements at fault stand alone: a lone 409 is delivered
   (already stored), a lone refusal dead-lettered with the LRS's answer; a retried answer is
   retried with a doubling, capped wait, the same group again, for as long as it takes;
4. dead letters are produced (acks=all, idempotent) and acknowledged;
5. only then the batch's offsets are committed.

While the batch waits between attempts the partitions are paused and the consumer keeps polling,
so the group does not evict it however long the LRS is away. The batch is given up uncommitted (and
read again, by whoever owns its partitions) only when every partition of it was reassigned, or when
a shutdown has waited LRS_SHUTDOWN_TIMEOUT_SECONDS for it. A statement delivered twice is harmless:
its id is deterministic, and the LRS answers "already stored".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from common.producer import ManagedProducer, ProducerUnavailable
from lrs_forward.lrs import LrsAnswer, LrsClient, Verdict
from lrs_forward.metrics import ForwarderMetrics
from lrs_forward.settings import LrsForwardSettings

log = structlog.get_logger("lrs_forward")

# Headers of a dead-lettered statement (the record's own headers come first, kept as they were).
DLQ_ERROR_TYPE = "dlq-error-type"
DLQ_ERROR_MESSAGE = "dlq-error-message"
DLQ_LRS_STATUS = "dlq-lrs-status"
DLQ_LRS_RESPONSE = "dlq-lrs-response"
DLQ_SOURCE_TOPIC = "dlq-source-topic"
DLQ_SOURCE_PARTITION = "dlq-source-partition"
DLQ_SOURCE_OFFSET = "dlq-source-offset"
LRS_REFUSED = "LrsRefused"
NOT_JSON_OBJECT = "NotJsonObject"

# The longest single sleep while waiting to retry: the loop looks at shutdown and partitions this often.
WAIT_STEP_SECONDS = 1.0
COMMIT_TIMEOUT_SECONDS = 30.0
# Without an exchange with the LRS for this long, /readyz asks it (GET /xAPI/about) instead.
LRS_CHECK_MAX_AGE_SECONDS = 10.0

Batch = dict[TopicPartition, list[Any]]


class Abandoned(Exception):
    """The batch in flight is given up uncommitted; the message says why."""


@dataclass(frozen=True)
class Statement:
    """A record whose value is one JSON object, and the statement id in it (if any)."""

    record: Any
    id: str | None


@dataclass(frozen=True)
class DeadLetter:
    """A record bound for the dead-letter topic, and why."""

    record: Any
    error_type: str
    message: str
    reason: str  # the metric label: `http_422`, `not_json_object`
    status: int | None = None
    response: bytes = b""

    def headers(self) -> list[tuple[str, bytes]]:
        record = self.record
        added = [
            (DLQ_ERROR_TYPE, self.error_type.encode()),
            (DLQ_ERROR_MESSAGE, self.message.encode()),
            (DLQ_SOURCE_TOPIC, str(record.topic).encode()),
            (DLQ_SOURCE_PARTITION, str(record.partition).encode()),
            (DLQ_SOURCE_OFFSET, str(record.offset).encode()),
        ]
        if self.status is not None:
            added += [(DLQ_LRS_STATUS, str(self.status).encode()), (DLQ_LRS_RESPONSE, self.response)]
        return [*(record.headers or ()), *added]


@dataclass
class Delivery:
    """What became of a batch's statements."""

    forwarded: int = 0
    identical: int = 0
    conflicts: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


def statements_of(records: Sequence[Any]) -> tuple[list[Statement], list[DeadLetter]]:
    """The records that hold one JSON object each, and dead letters for the others."""
    statements: list[Statement] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            document = json.loads(record.value) if record.value is not None else None
        except ValueError:
            document = None
        if isinstance(document, dict):
            statement_id = document.get("id")
            statements.append(Statement(record, statement_id if isinstance(statement_id, str) else None))
        else:
            message = "the record's value is not one JSON object (not sent to the LRS)"
            dead.append(DeadLetter(record, NOT_JSON_OBJECT, message, "not_json_object"))
    return statements, dead


def backoff_seconds(attempt: int, initial: float, maximum: float) -> float:
    """The wait before attempt `attempt + 1`: `initial`, doubling, never more than `maximum`."""
    return float(min(maximum, initial * 2.0 ** min(attempt - 1, 32)))


class Forwarder:
    """Consumes statements, delivers them to the LRS, dead-letters refusals, commits."""

    def __init__(
        self,
        settings: LrsForwardSettings,
        consumer: Any,
        lrs: LrsClient,
        producer: ManagedProducer,
        metrics: ForwarderMetrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._consumer = consumer
        self._lrs = lrs
        self._producer = producer
        self._metrics = metrics
        self._sleep = sleep
        self._stop = asyncio.Event()
        self._stop_at: float | None = None
        self._in_flight_since: float | None = None
        self.retrying = False
        self.last_batch_ok: bool | None = None  # None until the first batch
        self._lrs_ok: bool | None = None
        self._lrs_checked_at = 0.0
        metrics.in_flight_batch_seconds.set_function(self.in_flight_seconds)

    def request_stop(self) -> None:
        """Finish the batch in flight (or give it up after the shutdown timeout), then end `run()`."""
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()
            log.info("lrs_forward_stopping", batch_in_flight=self._in_flight_since is not None)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def in_flight_seconds(self) -> float:
        """Age of the batch in flight, 0 when none."""
        since = self._in_flight_since
        return 0.0 if since is None else time.monotonic() - since

    async def run(self) -> None:
        """Fetch and forward batches until `request_stop()`."""
        settings = self._settings
        attempt = 0
        while not self._stop.is_set():
            try:
                batch: Batch = await self._consumer.getmany(
                    timeout_ms=settings.batch_timeout_ms, max_records=settings.batch_max_statements
                )
            except KafkaError as exc:  # e.g. the cluster away: aiokafka reconnects, we wait and ask again
                attempt += 1
                log.warning("kafka_fetch_failed", error=type(exc).__name__, attempt=attempt)
                await self._sleep(backoff_seconds(attempt, settings.retry_backoff_initial_seconds, 5.0))
                continue
            attempt = 0
            self._metrics.assigned_partitions.set(len(self._consumer.assignment()))
            if batch:
                await self.handle(batch)

    async def handle(self, batch: Batch) -> bool:
        """Deliver, dead-letter and commit one batch; False when it was given up uncommitted."""
        started = self._in_flight_since = time.monotonic()
        partitions = set(batch)
        records = [record for tp in sorted(batch) for record in batch[tp]]
        self._metrics.consumed.inc(len(records))
        statements, dead = statements_of(records)
        try:
            delivery = await self.deliver(statements, partitions)
            letters = dead + delivery.dead_letters
            if letters:
                await self.dead_letter(letters, partitions)
        except Abandoned as exc:
            self._metrics.batches_dropped.inc()
            log.warning("batch_given_up_uncommitted", reason=str(exc), records=len(records))
            return False
        finally:
            self._in_flight_since = None
            self.retrying = False
            paused = self._consumer.paused()
            if paused:
                self._consumer.resume(*paused)
        await self._commit(batch)
        self.last_batch_ok = True
        self._metrics.batches.inc()
        self._metrics.batch_seconds.observe(time.monotonic() - started)
        log.info(
            "batch_forwarded",
            records=len(records),
            forwarded=delivery.forwarded,
            already_stored=delivery.identical + delivery.conflicts,
            dead_lettered=len(letters),
        )
        return True

    async def deliver(self, statements: list[Statement], partitions: set[TopicPartition]) -> Delivery:
        """POST the statements until each is stored, already stored or refused on its own."""
        delivery = Delivery()
        pending: deque[list[Statement]] = deque([statements] if statements else [])
        attempt = 0
        while pending:
            group = pending.popleft()
            answer = await self._post(group)
            verdict = answer.verdict
            if verdict is Verdict.RETRY:
                attempt += 1
                self._note_retry(answer, attempt, len(group))
                pending.appendleft(group)
                await self._wait_to_retry(attempt, partitions)
                continue
            attempt = 0
            self.retrying = False
            if verdict is Verdict.ACCEPTED:
                self._count_accepted(group, answer, delivery)
            elif len(group) > 1:
                middle = len(group) // 2
                pending.extendleft([group[middle:], group[:middle]])
            elif verdict is Verdict.CONFLICT:
                delivery.conflicts += 1
                self._metrics.already_stored.labels("conflict").inc()
                log.warning("statement_conflicts_with_stored", statement_id=group[0].id)
            else:
                delivery.dead_letters.append(self._refused(group[0], answer))
        return delivery

    async def _post(self, group: list[Statement]) -> LrsAnswer:
        answer = await self._lrs.post([statement.record.value for statement in group])
        self._metrics.request_seconds.observe(answer.seconds)
        self._metrics.requests.labels(answer.verdict.value).inc()
        self._lrs_ok = answer.verdict is not Verdict.RETRY
        self._lrs_checked_at = time.monotonic()
        return answer

    def _count_accepted(self, group: list[Statement], answer: LrsAnswer, delivery: Delivery) -> None:
        stored = answer.stored_ids()
        if answer.status == 204:
            known = len(group)
        elif stored is None:
            known = 0  # an answer without the ids: count them as stored now
        else:
            known = sum(1 for statement in group if statement.id is not None and statement.id not in stored)
        delivery.forwarded += len(group) - known
        delivery.identical += known
        self._metrics.forwarded.inc(len(group) - known)
        if known:
            self._metrics.already_stored.labels("identical").inc(known)

    def _refused(self, statement: Statement, answer: LrsAnswer) -> DeadLetter:
        record = statement.record
        log.warning(
            "statement_refused_by_lrs",
            status=answer.status,
            statement_id=statement.id,
            partition=record.partition,
            offset=record.offset,
        )
        return DeadLetter(
            record,
            LRS_REFUSED,
            f"the LRS answered {answer.status}",
            answer.reason,
            status=answer.status,
            response=answer.excerpt(self._settings.response_excerpt_bytes),
        )

    def _note_retry(self, answer: LrsAnswer, attempt: int, statements: int) -> None:
        self.retrying = True
        self.last_batch_ok = False
        self._metrics.retries.labels(answer.reason).inc()
        settings = self._settings
        wait = backoff_seconds(
            attempt, settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
        )
        log.warning(
            "lrs_retry", reason=answer.reason, attempt=attempt, statements=statements, wait_seconds=wait
        )

    async def dead_letter(self, letters: list[DeadLetter], partitions: set[TopicPartition]) -> None:
        """Produce the dead letters and wait for every acknowledgement, retrying the unacknowledged."""
        settings = self._settings
        waiting = list(letters)
        attempt = 0
        while waiting:
            failed: list[DeadLetter] = []
            try:
                producer = await self._producer.live()
                async with asyncio.timeout(settings.dlq_timeout_seconds):
                    futures = [
                        self._producer.watch(
                            await producer.send(
                                settings.dlq_topic,
                                letter.record.value,
                                key=letter.record.key,
                                headers=letter.headers(),
                            )
                        )
                        for letter in waiting
                    ]
                    results = await asyncio.gather(*futures, return_exceptions=True)
                failed = [
                    letter
                    for letter, result in zip(waiting, results, strict=True)
                    if isinstance(result, BaseException)
                ]
                for letter, result in zip(waiting, results, strict=True):
                    if not isinstance(result, BaseException):
                        self._metrics.dead_lettered.labels(letter.reason).inc()
                error = next((r for r in results if isinstance(r, BaseException)), None)
            except (KafkaError, TimeoutError, ProducerUnavailable) as exc:
                failed, error = waiting, exc
            waiting = failed
            if waiting:
                attempt += 1
                self._metrics.dead_letter_retries.inc()
                log.warning(
                    "dead_letter_retry", error=type(error).__name__, attempt=attempt, records=len(waiting)
                )
                await self._wait_to_retry(attempt, partitions)

    async def _wait_to_retry(self, attempt: int, partitions: set[TopicPartition]) -> None:
        """Wait the backoff, polling paused partitions; `Abandoned` when the batch must be given up."""
        settings = self._settings
        deadline = time.monotonic() + backoff_seconds(
            attempt, settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
        )
        while True:
            self._give_up_when_due(partitions)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self._keep_membership()
            await self._sleep(min(WAIT_STEP_SECONDS, remaining))

    def _give_up_when_due(self, partitions: set[TopicPartition]) -> None:
        if (
            self._stop_at is not None
            and time.monotonic() - self._stop_at >= self._settings.shutdown_timeout_seconds
        ):
            raise Abandoned("shutting down, and the LRS did not take the batch within the shutdown timeout")
        if not partitions & self._consumer.assignment():
            raise Abandoned("every partition of the batch was assigned to another member")

    async def _keep_membership(self) -> None:
        """Poll with every partition paused: the group sees a live member, nothing new is fetched."""
        consumer = self._consumer
        assigned = consumer.assignment()
        if assigned:
            consumer.pause(*assigned)
        with contextlib.suppress(KafkaError):
            fetched: Batch = await consumer.getmany(timeout_ms=0)
            for tp, records in fetched.items():  # a partition assigned since the pause: read it later
                if records:
                    consumer.seek(tp, records[0].offset)

    async def _commit(self, batch: Batch) -> None:
        assigned = self._consumer.assignment()
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if tp in assigned and records}
        if len(offsets) < len(batch):
            log.warning("commit_skips_reassigned_partitions", partitions=len(batch) - len(offsets))
        if not offsets:
            return
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_SECONDS):
                await self._consumer.commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            # Delivered but not committed: read again later, answered "already stored" by the LRS.
            self._metrics.commit_failures.inc()
            log.warning("commit_failed", error=type(exc).__name__)

    async def lrs_reachable(self) -> bool:
        """The last exchange with the LRS went well; when it is old, ask the LRS now."""
        if self.retrying:
            return False
        if self._lrs_ok is None or time.monotonic() - self._lrs_checked_at > LRS_CHECK_MAX_AGE_SECONDS:
            self._lrs_ok = await self._lrs.probe(2.0)
            self._lrs_checked_at = time.monotonic()
        return bool(self._lrs_ok)
