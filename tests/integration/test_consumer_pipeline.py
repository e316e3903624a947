"""The consumer, in this process, against the real broker: raw topic in, derived/DLQ/unrouted topics out."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from consumer.app import create_app
from consumer.plan import OutgoingRecord
from consumer.sender import KafkaSender
from consumer.settings import ConsumerSettings
from tests.support.consumer_harness import (
    ConsumerTopics,
    ce_ids,
    committed_offsets,
    consumer_settings,
    expected_outputs,
    make_consumer_topics,
    read_derived,
    running,
    wait_until,
)
from tests.support.kafka_io import produce, read_records
from tests.support.webhooks import encode, results_released


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    return await make_consumer_topics(kafka_bootstrap, unique_name)


@pytest.fixture
def settings(
    kafka_bootstrap: str, topics: ConsumerTopics, new_group_id: Callable[[], str]
) -> ConsumerSettings:
    return consumer_settings(kafka_bootstrap, topics, new_group_id())


def varied_webhooks() -> list[bytes]:
    """One of each outcome the rules table knows, for several learners."""
    return [
        encode(results_released(passed=True, user_id="u1", attempt_id="a1")),
        encode(results_released(passed=False, resit_count=0, user_id="u2", attempt_id="a2")),
        encode(results_released(passed=False, resit_count=2, user_id="u3", attempt_id="a3")),
        encode(results_released(passed=True, resit_count=1, user_id="u4", attempt_id="a4")),
        encode(results_released(passed=False, publish_grade=False, user_id="u5", attempt_id="a5")),
        encode(results_released(revoked=True, user_id="u6", attempt_id="a6")),
    ]


def signature(topic: str, key: bytes | None, headers: Any) -> tuple[str, bytes | None, tuple[Any, ...]]:
    return topic, key, tuple(sorted(dict(headers).items()))


async def test_webhooks_on_the_raw_topic_become_cloudevents_on_the_derived_topics(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    bodies = varied_webhooks()
    expected = [
        OutgoingRecord(
            settings.derived_topics[dict(r.headers)["ce_type"].decode()], r.key, r.value, r.headers
        )
        for r in expected_outputs(bodies)
    ]
    await produce(kafka_bootstrap, topics.raw, bodies)

    async with running(create_app(settings)):
        records = await read_derived(kafka_bootstrap, topics, count=len(expected))

    assert Counter(signature(r.topic, r.key, r.headers.items()) for r in records) == Counter(
        signature(e.topic, e.key, e.headers) for e in expected
    )
    assert len(expected) == 14  # 1 + 2 + 2 + 2 + 2 + 0, and an xAPI statement for each of the five results
    results = [r for r in records if r.topic != topics.xapi]
    withheld = [json.loads(r.value or b"") for r in results if r.key == b"u5"]
    assert all(d["gradeWithheld"] and d["grade"] is None and d["attempt"]["score"] is None for d in withheld)
    # Each event names the raw record it came from.
    raw = {(r.partition, r.offset): r.value for r in await read_records(kafka_bootstrap, topics.raw, count=6)}
    for record in results:
        source = json.loads(record.value or b"")["source"]
        assert source["topic"] == topics.raw
        assert (
            json.loads(raw[(source["partition"], source["offset"])] or b"")["user"]["id"]
            == (record.key or b"").decode()
        )


async def test_a_webhook_delivered_twice_gives_events_with_identical_ids(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings, sample_body: bytes
) -> None:
    await produce(kafka_bootstrap, topics.raw, [sample_body, sample_body], partition=0)

    async with running(create_app(settings)):
        records = await read_derived(kafka_bootstrap, topics, count=4)  # passed and its statement, twice

    records = [r for r in records if r.topic == topics.passed]
    first, again = records
    assert first.headers == again.headers
    assert list(ce_ids(records).values()) == [2]
    assert {json.loads(r.value or b"")["source"]["offset"] for r in records} == {0, 1}


async def test_invalid_bodies_go_to_the_dlq_byte_for_byte_and_unroutable_ones_to_the_unrouted_topic(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    invalid_known = results_released()
    invalid_known["attempt"]["grade"] = "Merit"
    not_json = b'{"meta": {"eventName": "exam.resultsReleased"'
    bodies = [
        not_json,
        encode(invalid_known),
        encode({"meta": {"eventName": "user.registered"}, "user": {"id": "u9"}}),
        encode({"user": {"id": "u9"}}),
    ]
    await produce(
        kafka_bootstrap, topics.raw, bodies, key=b"raw-key", headers=[("webhook-id", b"msg_1")], partition=0
    )

    async with running(create_app(settings)):
        dlq = await read_records(kafka_bootstrap, topics.dlq, count=2)
        unrouted = await read_records(kafka_bootstrap, topics.unrouted, count=2)

    assert [r.value for r in dlq] == bodies[:2]
    assert [r.headers["dlq-error-type"] for r in dlq] == [b"InvalidJson", b"ValidationError"]
    assert all(r.key == b"raw-key" and r.headers["webhook-id"] == b"msg_1" for r in dlq + unrouted)
    assert [(r.headers["dlq-source-partition"], r.headers["dlq-source-offset"]) for r in dlq] == [
        (b"0", b"0"),
        (b"0", b"1"),
    ]
    assert all(r.headers["dlq-source-topic"] == topics.raw.encode() for r in dlq)
    assert [r.value for r in unrouted] == bodies[2:]
    assert [r.headers.get("unrouted-event-name") for r in unrouted] == [b"user.registered", None]


class FlakySender(KafkaSender):
    """The real producer, except that in its first `failures` attempts half the records really go
    out and the acknowledgement of the other half fails, as a broker timeout would.

    At each failure it records the group's committed offsets, read from the broker.
    """

    def __init__(self, settings: ConsumerSettings, failures: int) -> None:
        super().__init__(settings)
        self.failures = failures
        self.settings = settings
        self.committed_during_failures: list[dict[int, int]] = []

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[asyncio.Future[Any]]:
        if self.failures <= 0:
            return await super().send_many(records)
        self.failures -= 1
        self.committed_during_failures.append(
            await committed_offsets(
                self.settings.kafka.bootstrap_servers, self.settings.group_id, self.settings.raw_topic
            )
        )
        sent = await super().send_many(records[: len(records) // 2])
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaTimeoutError("injected: broker did not acknowledge"))
        return [*sent, failed]


async def test_a_publish_failure_is_retried_and_nothing_is_committed_until_the_outputs_are_acknowledged(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    settings: ConsumerSettings,
) -> None:
    bodies = varied_webhooks()
    await produce(kafka_bootstrap, topics.raw, bodies, partition=0)
    sender = FlakySender(settings, failures=3)
    expected = Counter(dict(r.headers)["ce_id"].decode() for r in expected_outputs(bodies))

    async with running(create_app(settings, sender=sender)) as app:

        async def committed_to_the_end() -> bool:
            return await committed_offsets(kafka_bootstrap, settings.group_id, topics.raw) == {0: len(bodies)}

        await wait_until(committed_to_the_end, what="the batch to be committed")
        retries = app.metrics.registry.get_sample_value("exam_events_consumer_publish_retries_total")
        records = await read_derived(kafka_bootstrap, topics, count=len(expected))

    assert sender.committed_during_failures
    assert all(committed == {} for committed in sender.committed_during_failures)
    assert (retries or 0) >= 1
    assert set(ce_ids(records)) == set(expected)  # every event made it, re-sent until acknowledged


async def test_a_crash_outside_the_per_record_guard_rewinds_the_batch_instead_of_skipping_it(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumer import app as app_module

    bodies = varied_webhooks()
    await produce(kafka_bootstrap, topics.raw, bodies, partition=0)
    real_commit = app_module.commit_assigned
    crashes = 0

    async def commit_that_crashes_once(consumer: Any, offsets: Any) -> None:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("injected bug after publishing")
        await real_commit(consumer, offsets)

    monkeypatch.setattr(app_module, "commit_assigned", commit_that_crashes_once)
    expected = Counter(dict(r.headers)["ce_id"].decode() for r in expected_outputs(bodies))

    async with running(create_app(settings)) as app:

        async def committed_to_the_end() -> bool:
            return await committed_offsets(kafka_bootstrap, settings.group_id, topics.raw) == {0: len(bodies)}

        await wait_until(committed_to_the_end, what="the batch to be read again and committed")
        failures = app.metrics.registry.get_sample_value("exam_events_consumer_batch_failures_total")
        consumed = app.metrics.registry.get_sample_value("exam_events_consumer_records_consumed_total")

    records = await read_derived(kafka_bootstrap, topics, count=2 * len(expected))
    assert failures == 1
    assert consumed == 2 * len(bodies)  # the crashed batch was fetched again, not skipped
    assert ce_ids(records) == Counter({ce_id: 2 * n for ce_id, n in expected.items()})  # identical re-publish
