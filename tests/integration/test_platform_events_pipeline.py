"""The platform's other events through the running system on the real broker: posted to the ingress
app (one through `POST /webhooks/{eventName}` without meta.eventName), consumed in exactly-once mode,
and read back from their derived topics with read_committed."""

from __future__ import annotations

import json
from collections.abc import Callable

from consumer.app import create_app
from tests.support.consumer_harness import (
    ConsumerTopics,
    consumer_settings,
    make_consumer_topics,
    read_derived,
    running,
    wait_until,
)
from tests.support.ingress_harness import JSON, basic_auth, running_ingress
from tests.support.kafka_io import Record, read_records
from tests.support.webhooks import encode, platform_body, results_released


async def read_topic(bootstrap: str, topic: str, count: int) -> list[Record]:
    return await read_records(bootstrap, topic, count=count, timeout=60)


async def test_each_new_event_posted_to_the_ingress_comes_out_on_its_topic(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group_id: Callable[[], str]
) -> None:
    topics: ConsumerTopics = await make_consumer_topics(kafka_bootstrap, unique_name)
    registration = platform_body("user-registered-for-exam")
    assert "eventName" not in registration["meta"]
    posts = [
        ("/webhooks", platform_body("attempt-override-created")),
        ("/webhooks", platform_body("exam-submitted")),
        ("/webhooks", platform_body("exam-completed")),
        ("/webhooks", platform_body("attempt-submitted")),
        ("/webhooks/user.registeredForExam", registration),
        ("/webhooks", results_released(user_id="u_result", attempt_id="a_result")),
        (
            "/webhooks/user.updated",
            {"user": {"id": "u_updated"}, "meta": {"timestamp": "2026-05-02T11:00:00Z"}},
        ),
    ]
    async with running_ingress(kafka_bootstrap, topics.raw) as ingress:
        for path, body in posts:
            response = await ingress.client.post(path, content=encode(body), headers={**JSON, **basic_auth()})
            assert response.status_code == 202, (path, response.text)

    settings = consumer_settings(kafka_bootstrap, topics, new_group_id(), processing_guarantee="exactly-once")
    async with running(create_app(settings)):
        overrides = await read_topic(kafka_bootstrap, topics.overrides, 1)
        attempts = await read_topic(kafka_bootstrap, topics.attempts, 3)
        registrations = await read_topic(kafka_bootstrap, topics.registrations, 1)
        results = await read_derived(kafka_bootstrap, topics, count=2)
        unrouted = await read_topic(kafka_bootstrap, topics.unrouted, 1)

    (override,) = overrides
    assert override.key == b"usr_8f2c1a7e"
    assert override.headers["ce_type"] == b"exam.score.overridden"
    assert json.loads(override.value or b"")["score"] == {
        "oldValue": 67.5,
        "newValue": 72.5,
        "isOriginal": False,
    }

    by_type = sorted((r.headers["ce_type"].decode(), json.loads(r.value or b"")["isExam"]) for r in attempts)
    assert by_type == [
        ("exam.attempt.completed", True),
        ("exam.attempt.submitted", False),
        ("exam.attempt.submitted", True),
    ]
    assert all(r.headers["ce_specversion"] == b"1.0" for r in attempts)

    (registered,) = registrations
    assert registered.key == b"usr_5e0f2c19"
    assert registered.headers["ce_type"] == b"exam.registration.created"
    assert registered.headers["ce_subject"] == b"exm_acc201_s26"
    assert (
        json.loads(registered.value or b"")["exam"]["url"] == "https://learn.example.org/exams/exm_acc201_s26"
    )

    assert sorted(r.headers["ce_type"] for r in results) == [b"exam.result.passed", b"exam.xapi.statement"]
    (still_unrouted,) = unrouted
    assert still_unrouted.headers["unrouted-event-name"] == b"user.updated"


async def test_a_body_posted_to_another_events_url_is_routed_by_its_meta_event_name_and_counted(
    kafka_bootstrap: str, unique_name: Callable[[str], str], new_group_id: Callable[[], str]
) -> None:
    topics: ConsumerTopics = await make_consumer_topics(kafka_bootstrap, unique_name)
    async with running_ingress(kafka_bootstrap, topics.raw) as ingress:
        response = await ingress.client.post(
            "/webhooks/exam.completed", content=encode(results_released()), headers={**JSON, **basic_auth()}
        )
        assert response.status_code == 202

    app = create_app(consumer_settings(kafka_bootstrap, topics, new_group_id()))
    async with running(app):
        results = await read_derived(kafka_bootstrap, topics, count=2)

        async def counted() -> bool:
            return bool(
                app.metrics.registry.get_sample_value("exam_events_consumer_event_name_conflicts_total")
            )

        await wait_until(counted, timeout=30, what="the conflict to be counted")

    assert sorted(r.headers["ce_type"] for r in results) == [b"exam.result.passed", b"exam.xapi.statement"]
    assert await read_records(kafka_bootstrap, topics.attempts, idle=0.5, timeout=5) == []
