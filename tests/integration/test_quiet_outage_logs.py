"""A broker outage, as the logs tell it: a few counted lines, not one per reconnect attempt.

An aiokafka producer and group consumer run in this process against a broker of the test's own
(`restartable_broker`), which the test stops for some seconds and starts again, with the logging of
our processes (`configure_logging`, JSON lines) and shorter intervals so the test stays short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import common.logging
from common.logging import configure_logging
from tests.support.broker import LocalBroker
from tests.support.consumer_harness import wait_until
from tests.support.kafka_io import create_topics

DOWN_SECONDS = 6.0


@pytest.fixture
def short_intervals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A 2 s quiet interval and a 3 s reminder for `configure_logging`; the test's logging afterwards."""
    monkeypatch.setattr(common.logging, "QUIET_SECONDS", 2.0)
    monkeypatch.setattr(common.logging, "REMIND_EVERY_SECONDS", 3.0)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def process_logging() -> common.logging.RepeatedErrorFilter:
    """Configure logging as our processes do (into this test's captured stdout); return its filter."""
    configure_logging("test", json=True)
    [handler] = logging.getLogger().handlers
    return next(f for f in handler.filters if isinstance(f, common.logging.RepeatedErrorFilter))


@contextlib.asynccontextmanager
async def traffic(bootstrap: str, topic: str, group_id: str) -> AsyncIterator[list[bytes]]:
    """Produce a record every 0.2 s and consume them in a group; yields what was consumed so far."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group_id, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    consumed: list[bytes] = []

    async def produce() -> None:
        for n in range(1_000_000):
            # A send that times out in the outage is given up: only the log lines matter here.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.send_and_wait(topic, str(n).encode()), 2.0)
            await asyncio.sleep(0.2)

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            consumed.extend(record.value for records in batches.values() for record in records)

    tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]
    try:
        yield consumed
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()
        await producer.stop()


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.timeout(120)
async def test_an_outage_reads_as_one_error_per_condition_counted_summaries_and_a_stopped_line(
    restartable_broker: LocalBroker,
    short_intervals: None,
    capsys: pytest.CaptureFixture[str],
    new_group_id: Any,
) -> None:
    collapse = process_logging()
    bootstrap = restartable_broker.bootstrap
    await create_topics(bootstrap, ["quiet.outage"], 1)
    log = structlog.get_logger("test")
    async with traffic(bootstrap, "quiet.outage", new_group_id()) as consumed:

        async def consumed_more_than(count: int) -> bool:
            return len(consumed) > count

        await wait_until(lambda: consumed_more_than(0), timeout=30, what="a first record consumed")
        log.info("broker_stopping")
        await asyncio.to_thread(restartable_broker.stop)
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(restartable_broker.start)
        log.info("broker_started")
        before_restart = len(consumed)
        await wait_until(lambda: consumed_more_than(before_restart), timeout=30, what="records after restart")

        async def every_condition_stopped() -> bool:
            return not collapse.active

        await wait_until(every_condition_stopped, timeout=20, what="the outage's stopped lines")

    lines = json_lines(capsys.readouterr().out)
    started_at = [line["event"] for line in lines].index("broker_started")
    library = [line for line in lines if line.get("logger", "").startswith("aiokafka")]
    summaries = [line for line in library if line["event"].startswith("library_errors_")]
    written = [line for line in library if line not in summaries and line["level"] in ("warning", "error")]
    # Without the filter this outage writes about a thousand aiokafka lines, one per reconnect attempt.
    assert sum(line["count"] for line in summaries) > 100, summaries
    assert len(written) < 30, [line["event"] for line in written]
    assert "library_errors_repeating" in {line["event"] for line in summaries}  # the 3 s reminders
    # Every condition that repeated has its stopped line, and the broker's return is what stopped them.
    ended = [line for line in summaries if line["event"] == "library_errors_stopped"]
    assert {line["condition"] for line in ended} == {line["condition"] for line in summaries}
    assert any(lines.index(line) > started_at for line in ended)
