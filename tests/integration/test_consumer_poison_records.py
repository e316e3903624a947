"""No single webhook stops its partition, on the real broker, in both processing guarantees.

The derived topics here take at most 16 KiB per record batch; one webhook's exam name is 20 KB, so
each of its derived records is larger than its topic takes. It shares raw partition 0 with ten
ordinary webhooks posted after it: all ten must be derived (exactly once in exactly-once mode, read
read_committed), and the large one must be on the dead-letter topic with its reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from consumer import app as app_module
from consumer.app import create_app
from consumer.settings import ConsumerSettings
from consumer.topics import check_topics
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
from tests.support.kafka_io import Record, produce, read_records, set_max_message_bytes
from tests.support.webhooks import encode, results_released

DERIVED_TOPIC_LIMIT = 16 * 1024
GUARANTEES = ["at-least-once", "exactly-once"]


async def lower_derived_limits(bootstrap: str, topics: ConsumerTopics) -> None:
    """Set the results' derived topics' max.message.bytes to DERIVED_TOPIC_LIMIT and wait until it holds."""
    limited = [topics.passed, topics.failed, topics.resits, topics.xapi]
    await set_max_message_bytes(bootstrap, limited, DERIVED_TOPIC_LIMIT)


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    """The test's topics, the results' derived topics limited to DERIVED_TOPIC_LIMIT bytes."""
    made = await make_consumer_topics(kafka_bootstrap, unique_name)
    await lower_derived_limits(kafka_bootstrap, made)
    return made


def large_webhook() -> bytes:
    body = results_released(passed=False, user_id="learner-with-a-long-exam-name", attempt_id="a-large")
    body["exam"]["name"] = "x" * 20_000
    return encode(body)


def ordinary_webhooks(count: int) -> list[bytes]:
    return [
        encode(results_released(passed=i % 2 == 0, resit_count=i % 2, user_id=f"u{i}", attempt_id=f"a{i}"))
        for i in range(count)
    ]


async def run_until_committed(settings: ConsumerSettings, bootstrap: str, count: int) -> Any:
    async def committed() -> bool:
        return await committed_offsets(bootstrap, settings.group_id, settings.raw_topic) == {0: count}

    async with running(create_app(settings)) as app:
        await wait_until(committed, what="every record of partition 0 to be committed")
        return app


def dead_letter_of(records: list[Record], value: bytes) -> Record:
    assert len(records) == 1, [r.headers.get("dlq-error-type") for r in records]
    assert records[0].value == value
    return records[0]


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_webhook_whose_derived_records_would_not_fit_is_dead_lettered_and_its_partition_goes_on(
    kafka_bootstrap: str, topics: ConsumerTopics, new_group_id: Callable[[], str], guarantee: str
) -> None:
    settings = consumer_settings(kafka_bootstrap, topics, new_group_id(), processing_guarantee=guarantee)
    poison, ordinary = large_webhook(), ordinary_webhooks(10)
    await produce(kafka_bootstrap, topics.raw, [poison, *ordinary], partition=0)

    app = await run_until_committed(settings, kafka_bootstrap, 11)

    expected = Counter(dict.fromkeys(ce_ids_of(ordinary), 1))
    assert ce_ids(await read_derived(kafka_bootstrap, topics, count=len(expected))) == expected
    dead = dead_letter_of(await read_records(kafka_bootstrap, topics.dlq, idle=0.3), poison)
    assert dead.headers["dlq-error-type"] == b"OutputTooLarge"
    assert int(dead.headers["dlq-output-bytes"]) > int(dead.headers["dlq-output-max-bytes"])
    assert int(dead.headers["dlq-output-max-bytes"]) == DERIVED_TOPIC_LIMIT
    assert dead.headers["dlq-output-topic"].decode() in (topics.failed, topics.resits, topics.xapi)
    assert dead.headers["dlq-source-offset"] == b"0"
    assert metric(app, "outputs_rejected_total") == 0  # found by planning, nothing was refused


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_records_the_broker_refuses_dead_letter_their_webhook_and_the_rest_of_the_batch_is_derived(
    kafka_bootstrap: str,
    topics: ConsumerTopics,
    new_group_id: Callable[[], str],
    guarantee: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The limits are unknown to the consumer, at start and after the refusal (as when they cannot be
    # read): only the broker's refusal tells, and the batch is halved until the webhook is alone.
    async def check_without_limits(settings: ConsumerSettings) -> dict[str, int]:
        await check_topics(settings)
        return {}

    async def no_limits(_settings: ConsumerSettings) -> dict[str, int]:
        return {}

    monkeypatch.setattr(app_module, "check_topics", check_without_limits)
    monkeypatch.setattr(app_module, "read_output_limits", no_limits)
    # Record batches of 16 KiB: the large record fills one alone, and the records after it on the same
    # output partition go in the next batch, which the broker then refuses for its sequence number.
    settings = consumer_settings(
        kafka_bootstrap,
        topics,
        new_group_id(),
        processing_guarantee=guarantee,
        producer_max_batch_bytes=16 * 1024,
    )
    ordinary = ordinary_webhooks(10)
    poison = large_webhook()
    # The large one in the middle of the batch: records before and after it share its transaction.
    await produce(kafka_bootstrap, topics.raw, [*ordinary[:4], poison, *ordinary[4:]], partition=0)

    app = await run_until_committed(settings, kafka_bootstrap, 11)

    expected = ce_ids_of(ordinary)
    derived = ce_ids(await read_derived(kafka_bootstrap, topics, count=len(expected)))
    if guarantee == "exactly-once":
        assert derived == Counter(dict.fromkeys(expected, 1))  # nothing of the aborted tries
    else:
        assert set(derived) == set(expected)  # redeliveries allowed, each with its ce_id
    dead = dead_letter_of(await read_records(kafka_bootstrap, topics.dlq, idle=0.3), poison)
    assert dead.headers["dlq-error-type"] == b"OutputRejected"
    assert b"MessageSizeTooLarge" in dead.headers["dlq-error-message"]
    assert dead.headers["dlq-source-offset"] == b"4"
    assert metric(app, "outputs_rejected_total") >= 1


def ce_ids_of(bodies: list[bytes]) -> list[str]:
    """The ce_ids of every derived record the bodies lead to (handlers are pure: computed here)."""
    return [dict(record.headers)["ce_id"].decode() for record in expected_outputs(bodies)]


def metric(app: Any, name: str) -> float:
    value = app.metrics.registry.get_sample_value(f"exam_events_consumer_{name}")
    return float(value or 0.0)


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_limit_lowered_while_the_consumer_runs_is_read_again_at_the_first_refusal(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group_id: Callable[[], str], guarantee: str
) -> None:
    roomy = await make_consumer_topics(kafka_bootstrap, unique_name)
    settings = consumer_settings(kafka_bootstrap, roomy, new_group_id(), processing_guarantee=guarantee)
    ordinary = ordinary_webhooks(10)
    poison = large_webhook()

    async with running(create_app(settings)) as app:
        await lower_derived_limits(kafka_bootstrap, roomy)  # after the start-up check read them
        await produce(kafka_bootstrap, roomy.raw, [*ordinary[:4], poison, *ordinary[4:]], partition=0)

        async def committed() -> bool:
            return await committed_offsets(kafka_bootstrap, settings.group_id, settings.raw_topic) == {0: 11}

        await wait_until(committed, what="every record of partition 0 to be committed")

    expected = ce_ids_of(ordinary)
    derived = ce_ids(await read_derived(kafka_bootstrap, roomy, count=len(expected)))
    if guarantee == "exactly-once":
        assert derived == Counter(dict.fromkeys(expected, 1))
    else:
        assert set(derived) == set(expected)
    dead = dead_letter_of(await read_records(kafka_bootstrap, roomy.dlq, idle=0.3), poison)
    assert dead.headers["dlq-error-type"] == b"OutputTooLarge"  # planned against the limits read again
    assert int(dead.headers["dlq-output-max-bytes"]) == DERIVED_TOPIC_LIMIT
    assert metric(app, "outputs_rejected_total") >= 1
