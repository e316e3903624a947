"""The whole way: exam results posted to the ingress come out of the consumer as xAPI statements,
and `lrs-forward` stores each in a real LRS (Ralph) exactly once, a redelivered webhook and a second
forward notwithstanding."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from consumer.app import create_app
from handlers import RulesSettings
from tests.lrs.test_lrs_forward import eventually, forwarding, metric, settings_for, stored
from tests.support.consumer_harness import consumer_settings, make_consumer_topics, running
from tests.support.ingress_harness import JSON, basic_auth, running_ingress
from tests.support.kafka_io import read_records
from tests.support.ralph import RalphServer
from tests.support.webhooks import encode, results_released

HOME = "https://exams.example.org"
PASSED = "http://adlnet.gov/expapi/verbs/passed"
FAILED = "http://adlnet.gov/expapi/verbs/failed"


async def test_results_posted_to_the_ingress_land_in_the_lrs_once_as_xapi_statements(
    kafka_bootstrap: str,
    ralph: RalphServer,
    unique_name: Callable[[str], str],
    new_topic: Callable[..., Awaitable[str]],
    new_group_id: Callable[[], str],
) -> None:
    topics = await make_consumer_topics(kafka_bootstrap, unique_name)
    suffix = unique_name("run").rsplit(".", 1)[-1]  # ids of this run only: the LRS is shared
    passed = encode(results_released(passed=True, user_id=f"u1-{suffix}", attempt_id=f"a1-{suffix}"))
    failed = encode(results_released(passed=False, user_id=f"u2-{suffix}", attempt_id=f"a2-{suffix}"))
    withheld = encode(
        results_released(publish_grade=False, user_id=f"u3-{suffix}", attempt_id=f"a3-{suffix}")
    )
    async with running_ingress(kafka_bootstrap, topics.raw) as ingress:
        # The platform posts the passed result twice (a lost answer): one statement all the same.
        for body in (passed, failed, withheld, passed):
            answer = await ingress.client.post("/webhooks", content=body, headers={**JSON, **basic_auth()})
            assert answer.status_code == 202

    settings = consumer_settings(
        kafka_bootstrap,
        topics,
        new_group_id(),
        processing_guarantee="exactly-once",
        rules=RulesSettings(xapi_account_home_page=HOME),
    )
    async with running(create_app(settings)):
        on_topic = await read_records(kafka_bootstrap, topics.xapi, count=3, timeout=60)
    assert len(on_topic) == 3
    ids = {record.headers["ce_id"].decode() for record in on_topic}

    dlq = await new_topic("xapi-dlq")
    async with forwarding(settings_for(kafka_bootstrap, ralph, topics.xapi, dlq, new_group_id())) as app:
        await eventually(lambda: metric(app, "statements_forwarded_total") == 3, "3 statements forwarded")

    found = {s["actor"]["account"]["name"]: s for s in stored(ralph, ids)}
    assert sorted(found) == [f"u1-{suffix}", f"u2-{suffix}", f"u3-{suffix}"]
    assert found[f"u1-{suffix}"]["verb"]["id"] == PASSED
    assert found[f"u1-{suffix}"]["result"]["score"]["scaled"] == 0.725
    assert found[f"u2-{suffix}"]["verb"]["id"] == FAILED
    assert found[f"u2-{suffix}"]["result"]["success"] is False
    assert "score" not in found[f"u3-{suffix}"]["result"]  # the exam withholds grades
    for statement in found.values():
        assert statement["actor"]["account"]["homePage"] == HOME
        assert statement["object"]["id"] == f"{HOME}/exams/exm_acc201_s26"
        assert "completion" not in statement["result"]

    # Forwarded again from the start (a new group): the LRS keeps one of each.
    async with forwarding(settings_for(kafka_bootstrap, ralph, topics.xapi, dlq, new_group_id())) as again:
        await eventually(
            lambda: metric(again, "statements_already_stored_total", kind="identical") == 3,
            "3 statements answered as already stored",
        )
    assert len(stored(ralph, ids)) == 3
