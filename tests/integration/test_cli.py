"""`exam-events` subcommands on the real broker: replay, lag, tail, topics."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from cli.errors import CommandFailed
from cli.lag import group_lag
from cli.replay import ReplayRequest, parse_time, replay
from cli.tail import tail
from consumer.settings import ConsumerSettings
from tests.support.broker import ROOT
from tests.support.consumer_harness import ConsumerTopics, consumer_settings, make_consumer_topics
from tests.support.kafka_io import produce, read_records
from tests.support.webhooks import encode, results_released

EXAM_EVENTS = [sys.executable, "-m", "cli"]


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> ConsumerTopics:
    return await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=2)


@pytest.fixture
def settings(
    kafka_bootstrap: str, topics: ConsumerTopics, new_group_id: Callable[[], str]
) -> ConsumerSettings:
    return consumer_settings(kafka_bootstrap, topics, new_group_id())


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXAM_EVENTS, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(settings: ConsumerSettings, topics: ConsumerTopics) -> dict[str, str]:
    return {
        **topics.env(),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CONSUMER_GROUP_ID": settings.group_id,
    }


async def put_unrouted(
    bootstrap: str, topic: str, count: int, event_name: str, reason: str = "unknown"
) -> None:
    for i in range(count):
        body = encode(
            results_released(user_id=f"usr_{i}", attempt_id=f"att_{event_name}_{i}", event_name=event_name)
        )
        await produce(
            bootstrap,
            topic,
            [body],
            key=f"usr_{i}".encode(),
            headers=[
                ("event-name", event_name.encode()),
                ("unrouted-reason", reason.encode()),
                ("webhook-id", b"w"),
            ],
            partition=i % 3,
        )


async def test_replay_copies_matching_records_byte_for_byte_with_their_headers_and_where_they_came_from(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await put_unrouted(kafka_bootstrap, topics.unrouted, 4, "exam.newName")
    await put_unrouted(kafka_bootstrap, topics.unrouted, 2, "user.updated")
    sources = {
        (r.partition, r.offset): r for r in await read_records(kafka_bootstrap, topics.unrouted, count=6)
    }

    report = await replay(ReplayRequest(topics.unrouted, topics.raw, event_name="exam.newName"), settings)

    assert (report.examined, report.matched, report.copied) == (6, 4, 4)
    copies = await read_records(kafka_bootstrap, topics.raw, count=4)
    for copy in copies:
        origin = sources[
            (int(copy.headers["replay-source-partition"]), int(copy.headers["replay-source-offset"]))
        ]
        assert (copy.key, copy.value) == (origin.key, origin.value)
        assert copy.headers["replay-source-topic"] == topics.unrouted.encode()
        assert copy.headers["replay-id"] == report.replay_id.encode()
        assert copy.headers["event-name"] == b"exam.newName"
        assert copy.headers["webhook-id"] == b"w"


async def test_running_the_same_replay_again_copies_only_what_arrived_since(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    request = ReplayRequest(topics.unrouted, topics.raw, limit=2)
    await put_unrouted(kafka_bootstrap, topics.unrouted, 3, "exam.newName")

    first = await replay(request, settings)
    second = await replay(ReplayRequest(topics.unrouted, topics.raw), settings)
    await put_unrouted(kafka_bootstrap, topics.unrouted, 1, "exam.later")
    third = await replay(ReplayRequest(topics.unrouted, topics.raw), settings)

    assert (first.copied, second.copied, third.copied) == (2, 1, 1)
    copies = await read_records(kafka_bootstrap, topics.raw, count=4)
    sources = [(r.headers["replay-source-partition"], r.headers["replay-source-offset"]) for r in copies]
    assert len(sources) == len(set(sources)) == 4


async def test_an_interrupted_replay_run_again_copies_every_record_exactly_once(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await put_unrouted(kafka_bootstrap, topics.unrouted, 60, "exam.newName")
    env = cli_env(settings, topics)
    # 10 per second: the first run is interrupted a few seconds in, mid-chunk.
    interrupted = await asyncio.create_subprocess_exec(
        *EXAM_EVENTS,
        "replay",
        "--from",
        topics.unrouted,
        "--rate",
        "10",
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await asyncio.sleep(3.5)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(interrupted.communicate(), 30)
    assert interrupted.returncode == 130, stderr

    rerun = run_cli(env, "replay", "--from", topics.unrouted, "--rate", "10")

    assert rerun.returncode == 0, rerun.stderr
    copies = await read_records(kafka_bootstrap, topics.raw, timeout=30, idle=2)
    sources = [(r.headers["replay-source-partition"], r.headers["replay-source-offset"]) for r in copies]
    assert len(sources) == 60
    assert len(set(sources)) == 60
    # Some copies of the interrupted run were aborted: visible only to read_uncommitted readers.
    assert 0 < int(rerun.stdout.split("copied ")[1].split()[0]) < 60


async def test_a_dry_run_moves_nothing_and_says_how_many_records_would_move_on_its_last_line(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await put_unrouted(kafka_bootstrap, topics.unrouted, 3, "exam.newName", reason="no handler")
    await put_unrouted(kafka_bootstrap, topics.unrouted, 2, "exam.newName", reason="other")

    result = run_cli(
        cli_env(settings, topics),
        "replay",
        "--from",
        topics.unrouted,
        "--error-type",
        "no handler",
        "--dry-run",
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    assert all("event_name='exam.newName'" in line and "reason='no handler'" in line for line in lines[:3])
    assert lines[-1].endswith(f"3 records would move from {topics.unrouted} to {topics.raw}")
    assert await read_records(kafka_bootstrap, topics.raw, idle=1) == []


async def test_replay_honours_since_and_until(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await put_unrouted(kafka_bootstrap, topics.unrouted, 2, "exam.early")
    await asyncio.sleep(1.1)
    middle = time.time()
    await put_unrouted(kafka_bootstrap, topics.unrouted, 2, "exam.middle")
    await asyncio.sleep(1.1)
    late = time.time()
    await put_unrouted(kafka_bootstrap, topics.unrouted, 2, "exam.late")

    since = parse_time(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1000):03d}Z"
    )
    until = parse_time(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(late)) + f".{int(late % 1 * 1000):03d}Z"
    )
    report = await replay(ReplayRequest(topics.unrouted, topics.raw, since=since, until=until), settings)

    assert report.copied == 2
    copies = await read_records(kafka_bootstrap, topics.raw, count=2)
    assert {r.headers["event-name"] for r in copies} == {b"exam.middle"}


async def test_replay_refuses_a_derived_topic_and_copies_nothing_unless_forced(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await produce(kafka_bootstrap, topics.passed, [b'{"learner": {}}'], key=b"usr_1")

    with pytest.raises(CommandFailed, match=f"^refused: --from {topics.passed} does not hold raw"):
        await replay(ReplayRequest(topics.passed, topics.raw), settings)
    assert await read_records(kafka_bootstrap, topics.raw, idle=1) == []
    forced = await replay(ReplayRequest(topics.passed, topics.raw, force=True), settings)

    assert forced.copied == 1
    [copy] = await read_records(kafka_bootstrap, topics.raw, count=1)
    assert (copy.key, copy.value) == (b"usr_1", b'{"learner": {}}')


def test_replay_fails_with_one_line_when_the_source_topic_does_not_exist(
    settings: ConsumerSettings, topics: ConsumerTopics
) -> None:
    # A dead-letter topic the settings name but nobody created: past the refusal, to the broker.
    env = {**cli_env(settings, topics), "CONSUMER_DLQ_TOPIC": "no.such.topic"}
    result = run_cli(env, "replay", "--from", "no.such.topic")

    assert result.returncode == 1
    assert result.stderr.strip() == "exam-events replay: --from topic no.such.topic does not exist"


async def test_lag_counts_from_the_committed_offset_or_from_the_earliest_without_one(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await produce(kafka_bootstrap, topics.raw, [b"{}"] * 5, partition=0)
    await produce(kafka_bootstrap, topics.raw, [b"{}"] * 3, partition=1)
    reader = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    await reader.start()
    try:
        reader.assign([TopicPartition(topics.raw, 0)])
        await reader.commit({TopicPartition(topics.raw, 0): 2})
    finally:
        await reader.stop()

    rows = await group_lag(settings, settings.group_id)
    result = run_cli(cli_env(settings, topics), "lag", "--json")

    assert [(r.partition, r.committed, r.end, r.lag) for r in rows] == [(0, 2, 5, 3), (1, None, 3, 3)]
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document == {
        "group": settings.group_id,
        "total_lag": 6,
        "partitions": [
            {"topic": topics.raw, "partition": 0, "committed": 2, "end": 5, "lag": 3},
            {"topic": topics.raw, "partition": 1, "committed": None, "end": 3, "lag": 3},
        ],
    }


async def test_tail_prints_the_cloudevents_attributes_and_masks_names_and_emails(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    data: dict[str, Any] = {
        "learner": {"id": "usr_1", "name": "Ada Lovelace", "email": "ada@example.org"},
        "exam": {"id": "exm_1", "name": "Maths"},
    }
    headers = [("ce_type", b"exam.result.passed"), ("ce_id", b"id-1"), ("ce_specversion", b"1.0")]
    await produce(kafka_bootstrap, topics.passed, [json.dumps(data).encode()], key=b"usr_1", headers=headers)

    masked, shown, readable = io.StringIO(), io.StringIO(), io.StringIO()
    common: dict[str, Any] = {"from_beginning": True, "follow": False, "lines": 10}
    await tail(settings, topics.passed, as_json=True, show_personal_data=False, out=masked, **common)
    await tail(settings, topics.passed, as_json=True, show_personal_data=True, out=shown, **common)
    await tail(settings, topics.passed, as_json=False, show_personal_data=False, out=readable, **common)

    event = json.loads(masked.getvalue())
    assert event["cloudevents"] == {"type": "exam.result.passed", "id": "id-1", "specversion": "1.0"}
    assert event["key"] == "***"
    assert event["value"]["learner"] == {"id": "***", "name": "***", "email": "***"}
    assert event["value"]["exam"]["name"] == "Maths"
    assert json.loads(shown.getvalue())["value"]["learner"]["email"] == "ada@example.org"
    assert json.loads(shown.getvalue())["key"] == "usr_1"
    assert "Ada" not in readable.getvalue()
    assert "ada@" not in readable.getvalue()
    assert "exam.result.passed" in readable.getvalue()


async def test_tail_prints_neither_the_key_nor_a_text_body_nor_an_escape_sequence_of_a_real_topic(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    hostile = b"exam.\x1b[2Jhijacked"
    await produce(
        kafka_bootstrap,
        topics.unrouted,
        [b"name=Ada Lovelace", json.dumps({"meta": {"eventName": hostile.decode()}}).encode()],
        key=b"usr_1",
        headers=[("event-name", hostile)],
        partition=0,
    )

    result = run_cli(cli_env(settings, topics), "tail", topics.unrouted, "--from-beginning")

    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "usr_1" not in result.stdout
    assert "Ada" not in result.stdout
    assert result.stdout.count("event-name=exam.hijacked") == 2
    assert '"eventName": "exam.hijacked"' in result.stdout
    assert "*** (17 bytes, not a JSON object or array)" in result.stdout


async def test_tail_shows_only_the_last_records_unless_asked_for_all(
    kafka_bootstrap: str, topics: ConsumerTopics, settings: ConsumerSettings
) -> None:
    await produce(
        kafka_bootstrap, topics.passed, [json.dumps({"n": n}).encode() for n in range(5)], partition=0
    )

    last, everything = io.StringIO(), io.StringIO()
    await tail(
        settings,
        topics.passed,
        from_beginning=False,
        follow=False,
        lines=2,
        as_json=True,
        show_personal_data=False,
        out=last,
    )
    await tail(
        settings,
        topics.passed,
        from_beginning=True,
        follow=False,
        lines=2,
        as_json=True,
        show_personal_data=False,
        out=everything,
    )

    assert [json.loads(line)["value"]["n"] for line in last.getvalue().splitlines()] == [3, 4]
    assert [json.loads(line)["value"]["n"] for line in everything.getvalue().splitlines()] == [0, 1, 2, 3, 4]


def test_topics_create_refuses_a_replication_factor_above_the_broker_count(
    settings: ConsumerSettings, topics: ConsumerTopics
) -> None:
    result = run_cli(cli_env(settings, topics), "topics", "create", "--replication-factor", "3")

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "exam-events topics: replication factor 3 is more than the 1 broker(s) of the cluster"
    )


def test_topics_describe_reports_every_project_topic(
    settings: ConsumerSettings, topics: ConsumerTopics
) -> None:
    result = run_cli(cli_env(settings, topics), "topics", "describe", "--json")

    assert result.returncode == 0, result.stderr
    rows = {row["topic"]: row for row in json.loads(result.stdout)}
    assert rows[topics.raw]["partitions"] == 2
    assert rows[topics.passed]["replication_factor"] == 1
    assert all(row["exists"] for row in rows.values())


@pytest.mark.parametrize("command", ["ingress", "consumer", "topics", "replay", "tail", "lag"])
def test_every_subcommand_explains_itself(command: str) -> None:
    result = run_cli({}, command, "--help")

    assert result.returncode == 0
    assert "usage: exam-events " + command in result.stdout
    assert len(result.stdout.splitlines()) > 3
