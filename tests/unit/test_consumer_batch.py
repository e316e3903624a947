"""One batch: nothing is committed until every output is acknowledged; broker errors are retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from structlog.testing import LogCapture

from consumer import checkpoint as batch_module
from consumer.checkpoint import BatchProcessor, backoff_delay, record_outcomes
from consumer.metrics import ConsumerMetrics
from consumer.plan import OutgoingRecord, plan_batch
from consumer.sender import KeyPartitioner, PublishError, publish_all
from consumer.settings import ConsumerSettings
from handlers import RulesSettings, build_routing_table
from tests.support.webhooks import encode, platform_body, results_released
from tests.unit.test_consumer_plan import FakeRecord


class ScriptedSender:
    """Acknowledges records, except that the first `failures` attempts fail as a broker outage does:
    their acknowledgements fail, or (`raise_on_send`) queueing itself raises."""

    def __init__(self, failures: int = 0, *, raise_on_send: bool = False) -> None:
        self.failures = failures
        self.raise_on_send = raise_on_send
        self.attempts: list[OutgoingRecord] = []
        self.acknowledged: list[OutgoingRecord] = []

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        self.attempts.extend(records)
        futures: list[asyncio.Future[Any]] = []
        failing = self.failures > 0
        self.failures -= failing
        if failing and self.raise_on_send:
            raise KafkaTimeoutError("no metadata")
        for record in records:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            if failing:
                future.set_exception(KafkaTimeoutError("request timed out"))
            else:
                self.acknowledged.append(record)
                future.set_result(None)
            futures.append(future)
        return futures


class RecordingCommit:
    """Records each commit together with how many records were acknowledged at that moment."""

    def __init__(self, sender: ScriptedSender, error: Exception | None = None) -> None:
        self.sender = sender
        self.error = error
        self.calls: list[tuple[dict[tuple[str, int], int], int]] = []

    async def __call__(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.calls.append((dict(offsets), len(self.sender.acknowledged)))
        if self.error is not None:
            raise self.error


@pytest.fixture
def metrics() -> ConsumerMetrics:
    return ConsumerMetrics.create()


def processor(
    sender: ScriptedSender, commit: RecordingCommit, metrics: ConsumerMetrics, sleeps: list[float]
) -> BatchProcessor:
    settings = ConsumerSettings(
        rules=RulesSettings(), retry_backoff_initial_seconds=0.5, retry_backoff_max_seconds=2.0
    )

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return BatchProcessor(
        settings=settings,
        table=build_routing_table(settings.rules),
        sender=sender,
        commit=commit,
        metrics=metrics,
        sleep=sleep,
    )


def batch() -> list[FakeRecord]:
    return [
        FakeRecord(encode(results_released(passed=False, user_id="u1")), offset=0),
        FakeRecord(encode(results_released(passed=True, user_id="u2")), offset=1),
        FakeRecord(b"not json", offset=2),
        FakeRecord(encode({"meta": {"eventName": "user.updated"}}), offset=3),
        FakeRecord(encode(results_released(revoked=True)), offset=4),
    ]


def sample(metrics: ConsumerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_batch_is_committed_once_after_every_output_is_acknowledged(metrics: ConsumerMetrics) -> None:
    sender, sleeps = ScriptedSender(), list[float]()
    commit = RecordingCommit(sender)

    await processor(sender, commit, metrics, sleeps).process(batch())

    # 2 failed events + 1 passed + 2 xAPI statements + 1 DLQ + 1 unrouted; the revoked attempt emits nothing.
    assert len(sender.acknowledged) == 7
    assert commit.calls == [({("exam.webhooks.raw", 0): 5}, 7)]
    assert sleeps == []
    assert sample(metrics, "exam_events_consumer_records_consumed_total") == 5
    assert sample(metrics, "exam_events_consumer_events_emitted_total", type="exam.result.failed") == 1
    assert sample(metrics, "exam_events_consumer_events_emitted_total", type="exam.resit.available") == 1
    assert sample(metrics, "exam_events_consumer_records_dead_lettered_total", error_type="InvalidJson") == 1
    assert sample(metrics, "exam_events_consumer_records_unrouted_total") == 1
    assert sample(metrics, "exam_events_consumer_attempts_revoked_total") == 1
    assert sample(metrics, "exam_events_consumer_handler_seconds_count") == 5


@pytest.mark.parametrize("raise_on_send", [False, True], ids=["ack-fails", "send-raises"])
async def test_a_broker_error_republishes_the_whole_batch_with_backoff_and_commits_only_after(
    metrics: ConsumerMetrics, raise_on_send: bool
) -> None:
    sender, sleeps = ScriptedSender(failures=3, raise_on_send=raise_on_send), list[float]()
    commit = RecordingCommit(sender)

    await processor(sender, commit, metrics, sleeps).process(batch())

    # One commit, made after the last attempt had every one of its 5 records acknowledged.
    assert commit.calls == [({("exam.webhooks.raw", 0): 5}, len(sender.acknowledged))]
    assert sender.acknowledged[-5:] == sender.attempts[-5:]  # the last attempt re-sent the whole batch
    assert sleeps[:3] == [0.5, 1.0, 2.0]  # doubling, capped at the maximum
    assert sample(metrics, "exam_events_consumer_publish_retries_total") == len(sleeps) > 0
    # Outcomes are counted once, when acknowledged, not once per attempt.
    assert sample(metrics, "exam_events_consumer_records_unrouted_total") == 1


async def test_a_failed_commit_is_counted_and_does_not_crash_the_worker(metrics: ConsumerMetrics) -> None:
    sender, sleeps = ScriptedSender(), list[float]()
    commit = RecordingCommit(sender, error=CommitFailedError("rebalanced"))

    await processor(sender, commit, metrics, sleeps).process(batch())

    assert sample(metrics, "exam_events_consumer_commit_failures_total") == 1


async def test_cancellation_during_retries_leaves_the_batch_uncommitted(metrics: ConsumerMetrics) -> None:
    sender = ScriptedSender(failures=10**6)
    commit = RecordingCommit(sender)
    settings = ConsumerSettings(rules=RulesSettings(), retry_backoff_initial_seconds=0.01)
    work = BatchProcessor(
        settings=settings,
        table=build_routing_table(settings.rules),
        sender=sender,
        commit=commit,
        metrics=metrics,
    )

    task = asyncio.create_task(work.process(batch()))
    while sample(metrics, "exam_events_consumer_publish_retries_total") < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert commit.calls == []


class HalfAcknowledging:
    """Acknowledges every other record batch."""

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in records]
        for n, future in enumerate(futures):
            if n % 2:
                future.set_result(None)
            else:
                future.set_exception(KafkaTimeoutError("request timed out"))
        return futures


async def test_publish_all_fails_when_any_record_batch_is_not_acknowledged() -> None:
    records = [OutgoingRecord("t", None, b"v", ()) for _ in range(3)]

    with pytest.raises(PublishError, match="2 of 3"):
        await publish_all(HalfAcknowledging(), records)


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (500, 30.0)]
)
def test_backoff_doubles_from_the_initial_delay_up_to_the_maximum(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 0.5, 30.0) == expected


async def test_logs_name_offsets_and_ce_ids_but_never_the_body_or_personal_data(
    metrics: ConsumerMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A logger of our own at DEBUG: the module's logger may already be cached at another level.
    capture = LogCapture()
    debug = structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    monkeypatch.setattr(batch_module, "log", debug)
    invalid = results_released(user_id="u9")
    del invalid["attempt"]["grade"]
    records = [*batch(), FakeRecord(encode(invalid), offset=5)]
    personal = {results_released()["user"]["email"], results_released()["user"]["name"]}
    sender, sleeps = ScriptedSender(failures=1), list[float]()

    await processor(sender, RecordingCommit(sender), metrics, sleeps).process(records)
    logs = capture.entries

    text = repr(logs)
    assert not any(value in text for value in personal)
    assert not any((r.value or b"").decode(errors="replace")[:200] in text for r in records)
    emitted = [entry for entry in logs if entry["event"] == "events_emitted"]
    assert emitted
    assert all(entry["ce_ids"] and "offset" in entry and "partition" in entry for entry in emitted)
    assert {entry["event"] for entry in logs} >= {
        "publish_failed",
        "record_dead_lettered",
        "record_unrouted",
        "attempt_revoked",
        "batch_committed",
    }


async def test_a_retrying_batch_is_dropped_uncommitted_once_none_of_its_partitions_is_owned(
    metrics: ConsumerMetrics,
) -> None:
    sender, sleeps = ScriptedSender(failures=10**6), list[float]()
    commit = RecordingCommit(sender)
    owned_checks: list[set[tuple[str, int]]] = []

    def owned(partitions: set[tuple[str, int]]) -> set[tuple[str, int]]:
        owned_checks.append(partitions)
        return partitions if len(owned_checks) < 3 else set()  # evicted during the third wait

    work = processor(sender, commit, metrics, sleeps)
    work._owned = owned

    assert await work.process(batch()) is False
    assert commit.calls == []
    assert owned_checks == [{("exam.webhooks.raw", 0)}] * 3
    assert sample(metrics, "exam_events_consumer_batches_dropped_total") == 1
    assert sample(metrics, "exam_events_consumer_batches_total") == 0
    assert work.in_flight_seconds() == 0.0  # nothing in flight any more


async def test_failures_become_errors_after_some_attempts_and_the_batch_age_is_visible_meanwhile(
    metrics: ConsumerMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = LogCapture()
    monkeypatch.setattr(batch_module, "log", structlog.wrap_logger(None, processors=[capture]))
    sender = ScriptedSender(failures=batch_module.ERROR_AFTER_ATTEMPTS + 2)
    ages: list[float] = []
    work = processor(sender, RecordingCommit(sender), metrics, [])

    async def sleep(_seconds: float) -> None:
        ages.append(work.in_flight_seconds())

    work._sleep = sleep
    assert await work.process(batch()) is True

    levels = [e["log_level"] for e in capture.entries if e["event"] == "publish_failed"]
    first_error = batch_module.ERROR_AFTER_ATTEMPTS - 1
    assert levels == ["warning"] * first_error + ["error"] * (len(levels) - first_error)
    assert len(levels) == batch_module.ERROR_AFTER_ATTEMPTS + 2
    assert all(age > 0 for age in ages)
    assert ages == sorted(ages)  # the same batch, getting older
    assert work.in_flight_seconds() == 0.0


def test_the_offset_guard_reports_a_batch_that_starts_past_unhandled_records() -> None:
    async def scenario() -> list[dict[Any, int]]:
        async def committed(_tp: Any) -> int | None:
            return 10

        guard = batch_module.OffsetGuard(committed)
        results = []
        first = [FakeRecord(b"x", offset=10), FakeRecord(b"x", offset=11)]
        results.append(await guard.gaps(first))  # starts at the committed offset: fine
        guard.handled(first)
        results.append(await guard.gaps([FakeRecord(b"x", offset=12)]))  # follows on: fine
        results.append(await guard.gaps([FakeRecord(b"x", offset=20)]))  # 12-19 never handled: gap
        results.append(await guard.gaps([FakeRecord(b"x", offset=20)]))  # again after a rewind: no data there
        guard.forget()  # a new assignment: expectations start again from the committed offset
        results.append(await guard.gaps([FakeRecord(b"x", offset=15)]))
        return results

    tp = TopicPartition("exam.webhooks.raw", 0)
    assert asyncio.run(scenario()) == [{}, {}, {tp: 12}, {}, {tp: 10}]


def test_an_event_name_conflict_is_counted_and_logged_with_both_names(
    metrics: ConsumerMetrics, monkeypatch: pytest.MonkeyPatch, sample_body: bytes
) -> None:
    capture = LogCapture()
    monkeypatch.setattr(batch_module, "log", structlog.wrap_logger(None, processors=[capture]))
    plan = plan_batch(
        [FakeRecord(sample_body, offset=3, headers=(("event-name", b"exam.completed"),))],
        build_routing_table(RulesSettings()),
        ConsumerSettings(rules=RulesSettings()).derived_topics,
        dlq_topic="dlq",
        unrouted_topic="unrouted",
    )

    record_outcomes(plan, metrics)

    assert sample(metrics, "exam_events_consumer_event_name_conflicts_total") == 1
    (conflict,) = [entry for entry in capture.entries if entry["event"] == "event_name_conflict"]
    assert conflict["event_name"] == "exam.resultsReleased"
    assert conflict["header_event_name"] == "exam.completed"
    assert conflict["offset"] == 3


def test_the_log_lines_of_the_platforms_other_events_carry_no_name_or_email(
    metrics: ConsumerMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = LogCapture()
    debug = structlog.wrap_logger(
        None, processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    monkeypatch.setattr(batch_module, "log", debug)
    names = ["attempt-override-created", "exam-submitted", "exam-completed", "user-registered-for-exam"]
    bodies = [platform_body(name) for name in names]
    records = [
        FakeRecord(encode(body), offset=offset, headers=(("event-name", b"user.registeredForExam"),))
        for offset, body in enumerate(bodies)
    ]
    plan = plan_batch(
        records,
        build_routing_table(RulesSettings()),
        ConsumerSettings(rules=RulesSettings()).derived_topics,
        dlq_topic="dlq",
        unrouted_topic="unrouted",
    )

    record_outcomes(plan, metrics)

    assert sum(plan.emitted.values()) == 4
    text = repr(capture.entries)
    assert "events_emitted" in text
    for body in bodies:
        assert body["user"]["name"] not in text
        assert body["user"]["email"] not in text


class RefusingSender(ScriptedSender):
    """Acknowledges records, except that the broker refuses for good every derived record keyed `refused`."""

    def __init__(self, refused: bytes) -> None:
        super().__init__()
        self.refused = refused
        self.publishes = 0

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        self.publishes += 1
        futures: list[asyncio.Future[Any]] = []
        for record in records:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            if record.key == self.refused and not record.topic.endswith(".dlq"):
                future.set_exception(MessageSizeTooLargeError())
            else:
                self.acknowledged.append(record)
                future.set_result(None)
            futures.append(future)
        return futures


async def test_a_webhook_whose_records_the_broker_refuses_is_dead_lettered_and_the_others_are_committed(
    metrics: ConsumerMetrics,
) -> None:
    sender, sleeps = RefusingSender(refused=b"u2"), list[float]()
    commit = RecordingCommit(sender)
    records = [
        FakeRecord(encode(results_released(passed=False, user_id=f"u{n}", attempt_id=f"a{n}")), offset=n)
        for n in range(1, 4)
    ]

    assert await processor(sender, commit, metrics, sleeps).process(records)

    dead = [record for record in sender.acknowledged if record.topic == "exam.webhooks.dlq"]
    assert [dict(record.headers)["dlq-error-type"] for record in dead] == [b"OutputRejected"]
    assert dead[0].value == records[1].value
    assert {record.key for record in sender.acknowledged if record.topic != "exam.webhooks.dlq"} == {
        b"u1",
        b"u3",
    }
    assert commit.calls[-1][0] == {("exam.webhooks.raw", 0): 4}
    assert sleeps == []  # a refusal is not retried with backoff: no retry could store the record
    assert sample(metrics, "exam_events_consumer_outputs_rejected_total") >= 1


def test_the_partitioners_key_cache_stays_within_its_bytes() -> None:
    partitioner = KeyPartitioner(max_bytes=10_000)
    every = list(range(12))

    chosen = [partitioner(f"learner-{n:06d}".encode(), every, every) for n in range(1_000)]

    assert partitioner.cached_bytes <= 10_000
    assert partitioner.clears > 0
    assert chosen == [(murmur2(f"learner-{n:06d}".encode()) & 0x7FFFFFFF) % 12 for n in range(1_000)]


async def test_the_refused_webhook_is_found_by_halving_the_batch_not_one_webhook_at_a_time(
    metrics: ConsumerMetrics,
) -> None:
    sender, sleeps = RefusingSender(refused=b"u37"), list[float]()
    commit = RecordingCommit(sender)
    records = [
        FakeRecord(encode(results_released(user_id=f"u{n}", attempt_id=f"a{n}")), offset=n) for n in range(64)
    ]

    assert await processor(sender, commit, metrics, sleeps).process(records)

    assert sender.publishes <= 2 * 6 + 2  # the batch, two halves per level of six, the dead letter
    dead = [record for record in sender.acknowledged if record.topic == "exam.webhooks.dlq"]
    assert [record.value for record in dead] == [records[37].value]
    assert commit.calls[-1][0] == {("exam.webhooks.raw", 0): 64}
