"""The composition root: building the app connects nothing; its HTTP routes and AsyncAPI document."""

from __future__ import annotations

import json

import httpx
import pytest

from common.kafka import KafkaConnectionSettings
from consumer.app import ConsumerApp, create_app
from consumer.asyncapi import DOCUMENT, ENVIRONMENT_PREFIXES, asyncapi_document, render
from consumer.settings import ConsumerSettings
from handlers import RulesSettings
from tests.support.broker import free_port


@pytest.fixture
def app() -> ConsumerApp:
    # Nothing listens on this port: building the app must not try to connect.
    unreachable = KafkaConnectionSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    return create_app(ConsumerSettings(kafka=unreachable, rules=RulesSettings()))


async def get(app: ConsumerApp, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://consumer"
    ) as client:
        return await client.get(path)


async def test_healthz_answers_while_the_broker_is_not_even_connected(app: ConsumerApp) -> None:
    response = await get(app, "/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_is_unavailable_until_the_broker_answers_and_partitions_are_assigned(
    app: ConsumerApp,
) -> None:
    response = await get(app, "/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {
            "processing_guarantee": "exactly-once",
            "broker_reachable": False,
            "assigned_partitions": 0,
            "consume_loop_running": False,
            "in_flight_batch_seconds": 0.0,
            "batch_stuck": False,
        },
    }


async def test_metrics_lists_every_consumer_metric_in_prometheus_format(app: ConsumerApp) -> None:
    response = await get(app, "/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in [
        "exam_events_consumer_records_consumed_total",
        "exam_events_consumer_events_emitted_total",
        "exam_events_consumer_records_dead_lettered_total",
        "exam_events_consumer_records_unrouted_total",
        "exam_events_consumer_attempts_revoked_total",
        "exam_events_consumer_handler_seconds",
        "exam_events_consumer_publish_retries_total",
        "exam_events_consumer_commit_failures_total",
        "exam_events_consumer_assigned_partitions",
        "exam_events_consumer_consume_task_crashes",
    ]:
        assert f"# HELP {name} " in response.text


async def test_the_asyncapi_page_and_document_describe_the_consumer_channels(app: ConsumerApp) -> None:
    page = await get(app, "/asyncapi")
    document = (await get(app, "/asyncapi.json")).json()

    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {
        "exam.webhooks.raw",
        "exam.results.passed",
        "exam.results.failed",
        "exam.resits",
        "exam.results.overrides",
        "exam.attempts",
        "exam.xapi.statements",
        "exam.registrations",
        "exam.webhooks.dlq",
        "exam.webhooks.unrouted",
        "exam.events.dedup",
    }
    schemas = document["components"]["schemas"]
    assert {
        "ExamResultsReleased",
        "AttemptOverrideCreated",
        "AttemptReported",
        "UserRegisteredForExam",
    } <= set(schemas)
    assert {"ScoreOverridden", "AttemptSubmitted", "AttemptCompleted", "RegistrationCreated"} <= set(schemas)


async def test_there_is_no_try_it_out_route_that_would_let_http_callers_publish(app: ConsumerApp) -> None:
    response = await get(app, "/asyncapi/try")

    assert response.status_code == 404


def test_the_committed_asyncapi_document_matches_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(ENVIRONMENT_PREFIXES):
            monkeypatch.delenv(name)

    generated = render(asyncapi_document(ConsumerSettings()))

    assert json.loads(DOCUMENT.read_text()) == json.loads(generated), (
        "docs/asyncapi.json is stale: run `.venv/bin/python -m consumer.asyncapi` and commit it"
    )
