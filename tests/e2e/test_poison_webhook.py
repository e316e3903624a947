"""The issue's scenario, through the real ingress and consumer processes: one valid webhook whose
`user.id` is 540 KB cannot stop its partition.

Before, it was answered 202, every derived record of it was larger than the derived topics take,
and the consumer retried its batch without end: the 22 of 60 later webhooks that shared its
partition were never derived. Now the id fails the models' bound and the webhook is dead-lettered
with the field's name; every later webhook is derived, exactly once (the consumer's default).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.broker import free_port
from tests.support.consumer_harness import (
    ConsumerProcess,
    ce_ids,
    expected_outputs,
    make_consumer_topics,
    read_derived,
)
from tests.support.ingress_process import ingress_process
from tests.support.kafka_io import read_records
from tests.support.webhooks import encode, results_released

CREDENTIALS = ("exam-platform", "e2e-secret-poison")


async def test_a_webhook_with_a_540_kb_user_id_is_dead_lettered_and_the_60_after_it_are_derived(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    new_group_id: Callable[[], str],
    tmp_path: Path,
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name, raw_partitions=3)
    poison = encode(results_released(passed=False, user_id="u" * 540_000, attempt_id="att-poison"))
    ordinary = [
        encode(results_released(passed=i % 2 == 0, user_id=f"usr-{i}", attempt_id=f"att-{i}"))
        for i in range(60)
    ]
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
                for body in (poison, *ordinary):
                    answer = await client.post(
                        "/webhooks", content=body, headers={"content-type": "application/json"}
                    )
                    assert answer.status_code == 202, answer.text

        expected = Counter(
            dict.fromkeys((dict(r.headers)["ce_id"].decode() for r in expected_outputs(ordinary)), 1)
        )
        derived = await read_derived(kafka_bootstrap, topics, count=sum(expected.values()), timeout=90)
        (dead,) = await read_records(kafka_bootstrap, topics.dlq, count=1, timeout=30)
    finally:
        consumer.kill()

    assert ce_ids(derived) == expected
    assert dead.value == poison
    assert dead.key == b"att-poison"  # the ingress never keys a record by an oversized id
    assert dead.headers["dlq-error-type"] == b"ValidationError"
    assert b"user.id" in dead.headers["dlq-error-message"]
    assert b"uuuu" not in dead.headers["dlq-error-message"]  # the field's name, never its value
