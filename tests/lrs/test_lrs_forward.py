"""The forwarder against a real broker and a real LRS (Ralph 5.1.0): statements land exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from lrs_forward.app import ForwarderApp
from lrs_forward.forwarder import DLQ_ERROR_TYPE, DLQ_LRS_RESPONSE, DLQ_LRS_STATUS, DLQ_SOURCE_OFFSET
from lrs_forward.settings import LrsForwardSettings
from tests.support.broker import free_port
from tests.support.kafka_io import read_records
from tests.support.ralph import RalphServer
from tests.support.xapi_statements import encoded, key_of, statement

NewTopic = Callable[..., Awaitable[str]]
METRIC = "exam_events_lrs_forward"
# `exam-events lrs-forward`, as the console script runs it.
COMMAND = (sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())", "lrs-forward")


async def produce_values(bootstrap: str, topic: str, values: Sequence[tuple[bytes, bytes]]) -> None:
    """(key, value) records, acks=all, each acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in values])
    finally:
        await producer.stop()


async def produce_statements(bootstrap: str, topic: str, statements: Sequence[dict[str, Any]]) -> None:
    await produce_values(bootstrap, topic, [(key_of(s), encoded(s)) for s in statements])


def settings_for(bootstrap: str, lrs: RalphServer, topic: str, dlq: str, group: str) -> LrsForwardSettings:
    return LrsForwardSettings.model_validate(
        {
            "url": lrs.url,
            "username": lrs.username,
            "password": lrs.password,
            "statements_topic": topic,
            "dlq_topic": dlq,
            "group_id": group,
            "batch_max_statements": 4,  # several batches per test
            "retry_backoff_initial_seconds": 0.2,
            "retry_backoff_max_seconds": 1.0,
            "http_host": "127.0.0.1",
            "http_port": free_port(),
            "kafka": {"bootstrap_servers": bootstrap},
        }
    )


@asynccontextmanager
async def forwarding(settings: LrsForwardSettings) -> AsyncIterator[ForwarderApp]:
    """The forwarder running in this process until the block ends (then stopped as by SIGTERM)."""
    app = ForwarderApp(settings)
    task = asyncio.create_task(app.run())
    try:
        yield app
    finally:
        app.forwarder.request_stop()
        await asyncio.wait_for(task, 60)


def metric(app: ForwarderApp, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(f"{METRIC}_{name}", labels) or 0.0


async def eventually(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def committed_total(bootstrap: str, group: str) -> int:
    """The sum of the group's committed offsets (0 when it committed nothing)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


def stored(lrs: RalphServer, ids: set[str]) -> list[dict[str, Any]]:
    """The LRS's statements with these ids, as GET /xAPI/statements returns them (duplicates kept)."""
    return [s for s in lrs.statements() if s["id"] in ids]


async def test_statements_land_in_the_lrs_once_even_when_forwarded_a_second_time(
    kafka_bootstrap: str, ralph: RalphServer, new_topic: NewTopic, new_group_id: Callable[[], str]
) -> None:
    topic, dlq = await new_topic("xapi", partitions=3), await new_topic("xapi-dlq")
    run = uuid.uuid4().hex
    statements = [statement(run, n, passed=n % 3 != 0) for n in range(10)]
    ids = {s["id"] for s in statements}
    await produce_statements(kafka_bootstrap, topic, statements)

    first = new_group_id()
    async with forwarding(settings_for(kafka_bootstrap, ralph, topic, dlq, first)) as app:
        await eventually(lambda: metric(app, "statements_forwarded_total") == 10, "10 statements forwarded")
    assert await committed_total(kafka_bootstrap, first) == 10

    found = stored(ralph, ids)
    assert sorted(s["id"] for s in found) == sorted(ids)
    by_id = {s["id"]: s for s in found}
    for sent in statements:
        back = by_id[sent["id"]]
        assert back["verb"]["id"] == sent["verb"]["id"]
        assert back["actor"]["account"] == sent["actor"]["account"]
        assert back["result"] == sent["result"]
        assert back["object"]["definition"]["type"] == "http://adlnet.gov/expapi/activities/assessment"

    second = new_group_id()
    async with forwarding(settings_for(kafka_bootstrap, ralph, topic, dlq, second)) as again:
        await eventually(
            lambda: metric(again, "statements_already_stored_total", kind="identical") == 10,
            "10 statements answered as already stored",
        )
        assert metric(again, "statements_forwarded_total") == 0
    assert await committed_total(kafka_bootstrap, second) == 10
    assert sorted(s["id"] for s in stored(ralph, ids)) == sorted(ids)
    assert await read_records(kafka_bootstrap, dlq, idle=0.5) == []


async def test_a_statement_the_lrs_refuses_is_dead_lettered_with_its_answer_and_the_others_are_stored(
    kafka_bootstrap: str, ralph: RalphServer, new_topic: NewTopic, new_group_id: Callable[[], str]
) -> None:
    topic, dlq = await new_topic("xapi"), await new_topic("xapi-dlq")
    run = uuid.uuid4().hex
    valid = [statement(run, n) for n in range(6)]
    without_verb = {k: v for k, v in statement(run, 99).items() if k != "verb"}
    refused_value = encoded(without_verb)
    not_json = b"not a statement"
    values = [(key_of(s), encoded(s)) for s in valid[:3]]
    values += [(b"learner-99", refused_value), (b"learner-98", not_json)]
    values += [(key_of(s), encoded(s)) for s in valid[3:]]
    await produce_values(kafka_bootstrap, topic, values)

    group = new_group_id()
    async with forwarding(settings_for(kafka_bootstrap, ralph, topic, dlq, group)) as app:
        await eventually(lambda: metric(app, "batches_total") >= 2, "both batches committed")
        await eventually(lambda: metric(app, "statements_forwarded_total") == 6, "6 statements forwarded")
    assert await committed_total(kafka_bootstrap, group) == 8

    assert sorted(s["id"] for s in stored(ralph, {s["id"] for s in valid} | {without_verb["id"]})) == sorted(
        s["id"] for s in valid
    )
    letters = {r.value: r for r in await read_records(kafka_bootstrap, dlq, count=2)}
    refused = letters[refused_value]
    assert refused.key == b"learner-99"
    assert refused.headers[DLQ_ERROR_TYPE] == b"LrsRefused"
    assert refused.headers[DLQ_LRS_STATUS] == b"422"  # Ralph answers an invalid statement with 422
    assert b"verb" in refused.headers[DLQ_LRS_RESPONSE]
    assert refused.headers[DLQ_SOURCE_OFFSET] == b"3"
    assert letters[not_json].headers[DLQ_ERROR_TYPE] == b"NotJsonObject"
    assert DLQ_LRS_STATUS not in letters[not_json].headers


async def test_while_the_lrs_is_down_nothing_is_committed_and_the_statements_arrive_once_it_is_back(
    kafka_bootstrap: str, own_ralph: RalphServer, new_topic: NewTopic, new_group_id: Callable[[], str]
) -> None:
    topic, dlq = await new_topic("xapi"), await new_topic("xapi-dlq")
    run = uuid.uuid4().hex
    statements = [statement(run, n) for n in range(3)]
    await produce_statements(kafka_bootstrap, topic, statements)
    own_ralph.stop()

    group = new_group_id()
    settings = settings_for(kafka_bootstrap, own_ralph, topic, dlq, group)
    async with forwarding(settings) as app:
        await eventually(lambda: metric(app, "retries_total", reason="connection") >= 3, "three retries")
        assert await committed_total(kafka_bootstrap, group) == 0
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{settings.http_port}/readyz")
        assert answer.status_code == 503
        assert answer.json()["checks"]["lrs_reachable"] is False
        assert answer.json()["checks"]["retrying"] is True

        await asyncio.to_thread(own_ralph.start)
        await eventually(lambda: metric(app, "statements_forwarded_total") == 3, "3 statements forwarded")
        await eventually(lambda: metric(app, "batches_total") == 1, "the batch committed")
    assert await committed_total(kafka_bootstrap, group) == 3
    assert sorted(s["id"] for s in own_ralph.statements()) == sorted(s["id"] for s in statements)
    assert metric(app, "statements_dead_lettered_total", reason="connection") == 0


async def test_the_command_serves_its_probes_forwards_and_ends_with_exit_0_on_sigterm(
    kafka_bootstrap: str, ralph: RalphServer, new_topic: NewTopic, new_group_id: Callable[[], str]
) -> None:
    topic, dlq = await new_topic("xapi"), await new_topic("xapi-dlq")
    run = uuid.uuid4().hex
    statements = [statement(run, n) for n in range(2)]
    await produce_statements(kafka_bootstrap, topic, statements)
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LRS_URL": ralph.url,
        "LRS_USERNAME": ralph.username,
        "LRS_PASSWORD": ralph.password,
        "LRS_STATEMENTS_TOPIC": topic,
        "LRS_DLQ_TOPIC": dlq,
        "LRS_GROUP_ID": new_group_id(),
        "LRS_HTTP_HOST": "127.0.0.1",
        "LRS_HTTP_PORT": str(port),
    }
    process = await asyncio.create_subprocess_exec(
        *COMMAND, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        ready: dict[str, Any] = {}
        ids = {s["id"] for s in statements}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get("/readyz")
                    ready = answer.json()
                    if answer.status_code == 200:
                        break
                await asyncio.sleep(0.2)
            assert ready.get("status") == "ready", ready
            assert ready["checks"]["assigned_partitions"] == 1
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            await eventually(lambda: len(stored(ralph, ids)) == 2, "both statements stored")
            scrape = (await client.get("/metrics")).text
        assert f"{METRIC}_statements_forwarded_total 2.0" in scrape
        assert f"{METRIC}_lrs_request_seconds_count" in scrape
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert err == b""
    events = {json.loads(line)["event"] for line in out.splitlines()}
    assert {"lrs_forward_started", "lrs_forward_stopping", "lrs_forward_stopped"} <= events
    assert ralph.password not in out.decode()


def test_the_command_ends_in_one_line_when_its_topic_does_not_exist(
    kafka_bootstrap: str, ralph: RalphServer
) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LRS_URL": ralph.url,
        "LRS_USERNAME": ralph.username,
        "LRS_PASSWORD": ralph.password,
        "LRS_STATEMENTS_TOPIC": f"no-such-topic-{uuid.uuid4().hex[:8]}",
        "LRS_HTTP_HOST": "127.0.0.1",
        "LRS_HTTP_PORT": str(free_port()),
    }
    done = subprocess.run(COMMAND, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("exam-events lrs-forward: topic no-such-topic-")
    assert done.stderr.count("\n") == 1
