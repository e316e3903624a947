"""The whole system, as the platform and downstream services see it: a webhook posted to the
ingress comes out of the consumer as CloudEvents on the derived topics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.broker import free_port
from tests.support.consumer_harness import ConsumerProcess, make_consumer_topics
from tests.support.ingress_process import ingress_process
from tests.support.kafka_io import read_records
from tests.support.webhooks import SAMPLE, encode, results_released

CREDENTIALS = ("exam-platform", "e2e-secret")


async def test_posted_webhooks_come_out_as_derived_events_and_unknown_ones_as_unrouted(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
    tmp_path: Path,
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=2)
    consumer = ConsumerProcess(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "CONSUMER_GROUP_ID": new_group_id(),
            "CONSUMER_HTTP_PORT": str(free_port()),
            **topics.env(),
        },
        tmp_path / "consumer.log",
    )
    consumer.start()
    failed_with_resit = results_released(passed=False, resit_count=1, user_id="usr_a", attempt_id="att_a")
    passed = results_released(user_id="usr_b", attempt_id="att_b")
    unknown = {"meta": {"eventName": "user.registered"}, "user": {"id": "usr_c"}}
    try:
        await consumer.wait_ready()
        with ingress_process(
            kafka_bootstrap,
            topics.raw,
            tmp_path / "ingress.log",
            INGRESS_BASIC_AUTH_USERNAME=CREDENTIALS[0],
            INGRESS_BASIC_AUTH_PASSWORD=CREDENTIALS[1],
        ) as ingress:
            async with httpx.AsyncClient(base_url=ingress.url, auth=CREDENTIALS, timeout=10) as client:
                for body in (failed_with_resit, passed, unknown):
                    answer = await client.post(
                        "/webhooks", content=encode(body), headers={"content-type": "application/json"}
                    )
                    assert answer.status_code == 202, answer.text

            (failed,) = await read_records(kafka_bootstrap, topics.failed, count=1, timeout=60)
            (resit,) = await read_records(kafka_bootstrap, topics.resits, count=1, timeout=60)
            (passed_event,) = await read_records(kafka_bootstrap, topics.passed, count=1, timeout=60)
            (unrouted,) = await read_records(kafka_bootstrap, topics.unrouted, count=1, timeout=60)
            ingress_log = ingress.log()
    finally:
        consumer.kill()

    assert failed.key == resit.key == b"usr_a"
    assert failed.headers["ce_type"] == b"exam.result.failed"
    assert resit.headers["ce_type"] == b"exam.resit.available"
    assert failed.headers["ce_subject"] == b"att_a"
    assert failed.headers["ce_specversion"] == b"1.0"
    assert failed.headers["content-type"] == b"application/json"
    assert json.loads(resit.value or b"")["resitsRemaining"] == 1
    assert passed_event.key == b"usr_b"
    assert json.loads(passed_event.value or b"")["grade"]["label"] == "Merit"
    assert json.loads(unrouted.value or b"") == unknown
    # Neither process logs a learner's personal data on the way.
    logs = ingress_log + consumer.log_path.read_text()
    assert SAMPLE["user"]["email"] not in logs
    assert SAMPLE["user"]["name"] not in logs
