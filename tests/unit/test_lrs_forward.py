"""The LRS forwarder's rules without a broker: settings, what each LRS answer means, splitting, dead letters.

The LRS here is an httpx MockTransport scripted per test; the real one (Ralph) is in tests/lrs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from cli.main import main as cli_main
from common.producer import ManagedProducer
from lrs_forward.forwarder import (
    DLQ_ERROR_TYPE,
    DLQ_LRS_RESPONSE,
    DLQ_LRS_STATUS,
    DLQ_SOURCE_OFFSET,
    DeadLetter,
    Forwarder,
    Statement,
    backoff_seconds,
    statements_of,
)
from lrs_forward.http import ProbeApp
from lrs_forward.lrs import LrsAnswer, LrsClient, Verdict
from lrs_forward.metrics import ForwarderMetrics
from lrs_forward.settings import LrsForwardSettings
from tests.support.xapi_statements import encoded, statement

TP = TopicPartition("exam.xapi.statements", 0)


@dataclass
class Rec:
    """The parts of a consumed record the forwarder reads."""

    value: bytes | None
    offset: int = 0
    key: bytes | None = b"learner-1"
    topic: str = TP.topic
    partition: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class StillAssigned:
    """A consumer whose partition stays assigned and which has nothing new to fetch."""

    paused_partitions: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_partitions |= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_partitions)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_partitions -= set(tps)

    async def getmany(self, *_: Any, **__: Any) -> dict[TopicPartition, list[Any]]:
        return {}


def settings(**overrides: Any) -> LrsForwardSettings:
    values = {"url": "http://lrs.example.com/", "username": "u", "password": "p", **overrides}
    return LrsForwardSettings.model_validate(values)


def forwarder_with(lrs: Callable[[list[dict[str, Any]]], httpx.Response]) -> tuple[Forwarder, list[int]]:
    """A forwarder whose LRS answers `lrs(statements)`; also the sizes of the POSTs it made."""
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sizes.append(len(body))
        assert request.headers["X-Experience-API-Version"] == "1.0.3"
        assert request.headers["authorization"].startswith("Basic ")
        return lrs(body)

    chosen = settings(retry_backoff_initial_seconds=0.01, retry_backoff_max_seconds=0.01)
    client = LrsClient(chosen, transport=httpx.MockTransport(handler))

    async def no_wait(_: float) -> None:
        return None

    forwarder = Forwarder(
        chosen,
        StillAssigned(),
        client,
        ManagedProducer({}, close_timeout_seconds=1),
        ForwarderMetrics.create(),
        sleep=no_wait,
    )
    return forwarder, sizes


def records(count: int, run: str = "unit") -> list[Statement]:
    found, dead = statements_of([Rec(encoded(statement(run, n)), offset=n) for n in range(count)])
    assert dead == []
    return found


def stored_all(body: list[dict[str, Any]]) -> httpx.Response:
    return httpx.Response(200, json=[s["id"] for s in body])


@pytest.fixture
def lrs_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The settings lrs-forward requires, in the environment; more can be set on what it returns."""
    monkeypatch.setenv("LRS_URL", "https://lrs.example.com/")
    monkeypatch.setenv("LRS_USERNAME", "forwarder")
    monkeypatch.setenv("LRS_PASSWORD", "secret")
    return monkeypatch


@pytest.mark.usefixtures("lrs_environment")
def test_the_settings_name_the_issue_s_variables_and_default_the_rest() -> None:
    chosen = LrsForwardSettings()  # the required ones come from the environment
    assert chosen.statements_url == "https://lrs.example.com/xAPI/statements"
    assert chosen.statements_topic == "exam.xapi.statements"
    assert chosen.group_id == "exam-events-lrs-forward"
    assert chosen.dlq_topic == "exam.xapi.statements.dlq"
    assert chosen.http_port == 8083
    assert "secret" not in repr(chosen)


def test_missing_lrs_settings_end_the_command_in_one_line_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("LRS_URL", "LRS_USERNAME", "LRS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LRS_HTTP_PORT", "70000")
    with pytest.raises(SystemExit) as ended:
        cli_main(["lrs-forward"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("exam-events lrs-forward: invalid settings: LRS_URL: Field required")
    assert "LRS_HTTP_PORT" in err
    assert err.count("\n") == 1


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="url"):
        settings(url="lrs.example.com")


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.ACCEPTED),
        (204, Verdict.ACCEPTED),
        (409, Verdict.CONFLICT),
        (400, Verdict.REFUSED),
        (413, Verdict.REFUSED),
        (422, Verdict.REFUSED),
        (401, Verdict.RETRY),
        (403, Verdict.RETRY),
        (404, Verdict.RETRY),
        (429, Verdict.RETRY),
        (302, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (None, Verdict.RETRY),
    ],
)
def test_each_answer_of_the_lrs_means_one_thing(status: int | None, verdict: Verdict) -> None:
    assert LrsAnswer(status, error=None if status else "timeout").verdict is verdict


def test_a_value_that_is_not_one_json_object_is_dead_lettered_without_asking_the_lrs() -> None:
    good = encoded(statement("unit", 1))
    found, dead = statements_of([Rec(good), Rec(b"{}{}"), Rec(b"[1, 2]"), Rec(None), Rec(b"\xff")])
    assert [s.record.value for s in found] == [good]
    assert [d.error_type for d in dead] == ["NotJsonObject"] * 4


def test_the_wait_between_attempts_doubles_up_to_its_cap() -> None:
    assert [backoff_seconds(n, 0.5, 4.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_seconds(10_000, 0.5, 30.0) == 30.0


async def test_an_accepted_batch_goes_in_one_post_and_counts_what_was_stored_before() -> None:
    batch = records(4)
    already = batch[0].id

    def lrs(body: list[dict[str, Any]]) -> httpx.Response:
        return httpx.Response(200, json=[s["id"] for s in body if s["id"] != already])

    forwarder, sizes = forwarder_with(lrs)
    delivery = await forwarder.deliver(batch, {TP})
    assert sizes == [4]
    assert (delivery.forwarded, delivery.identical, delivery.dead_letters) == (3, 1, [])


async def test_a_refused_batch_is_split_until_the_statement_at_fault_stands_alone() -> None:
    batch = records(8)
    bad = batch[5].id

    def lrs(body: list[dict[str, Any]]) -> httpx.Response:
        if any(s["id"] == bad for s in body):
            return httpx.Response(
                422, json={"detail": [{"msg": "Field required", "loc": ["body", 0, "verb"]}]}
            )
        return stored_all(body)

    forwarder, sizes = forwarder_with(lrs)
    delivery = await forwarder.deliver(batch, {TP})
    assert delivery.forwarded == 7
    assert [letter.record.offset for letter in delivery.dead_letters] == [5]
    assert delivery.dead_letters[0].status == 422
    assert sizes == [8, 4, 4, 2, 1, 1, 2]  # halves, in order, the good halves at once


async def test_a_conflict_fails_a_batch_but_alone_counts_as_already_stored() -> None:
    batch = records(3)
    differing = batch[1].id

    def lrs(body: list[dict[str, Any]]) -> httpx.Response:
        if any(s["id"] == differing for s in body):
            return httpx.Response(409, json={"detail": "Differing statements already exist with the same ID"})
        return stored_all(body)

    forwarder, _ = forwarder_with(lrs)
    delivery = await forwarder.deliver(batch, {TP})
    assert (delivery.forwarded, delivery.conflicts, delivery.dead_letters) == (2, 1, [])


async def test_two_records_of_one_statement_in_a_batch_are_sent_apart_and_both_delivered() -> None:
    one = encoded(statement("unit", 1))
    batch, _ = statements_of([Rec(one, offset=0), Rec(one, offset=1)])
    seen: set[str] = set()

    def lrs(body: list[dict[str, Any]]) -> httpx.Response:
        ids = [s["id"] for s in body]
        if len(set(ids)) < len(ids):
            return httpx.Response(400, json={"detail": "Duplicate statement IDs in the list of statements"})
        if seen.issuperset(ids):
            return httpx.Response(204)
        seen.update(ids)
        return stored_all(body)

    forwarder, sizes = forwarder_with(lrs)
    delivery = await forwarder.deliver(batch, {TP})
    assert (delivery.forwarded, delivery.identical, delivery.dead_letters) == (1, 1, [])
    assert sizes == [2, 1, 1]


async def test_a_wrong_password_is_retried_not_dead_lettered() -> None:
    answers = iter([httpx.Response(401), httpx.Response(503), httpx.Response(401)])

    def lrs(body: list[dict[str, Any]]) -> httpx.Response:
        return next(answers, None) or stored_all(body)

    forwarder, sizes = forwarder_with(lrs)
    delivery = await forwarder.deliver(records(2), {TP})
    assert (delivery.forwarded, delivery.dead_letters) == (2, [])
    assert sizes == [2, 2, 2, 2]
    registry = forwarder._metrics.registry
    assert registry.get_sample_value("exam_events_lrs_forward_retries_total", {"reason": "http_401"}) == 2
    assert registry.get_sample_value("exam_events_lrs_forward_retries_total", {"reason": "http_503"}) == 1


def test_a_dead_letter_keeps_the_record_s_headers_and_adds_the_answer_bounded() -> None:
    record = Rec(b"{}", offset=7, headers=(("traceparent", b"00-abc-def-01"),))
    answer = LrsAnswer(422, body="é".encode() * 600)
    letter = DeadLetter(record, "LrsRefused", "the LRS answered 422", answer.reason, 422, answer.excerpt(101))
    headers = dict(letter.headers())
    assert letter.headers()[0] == ("traceparent", b"00-abc-def-01")
    assert headers[DLQ_ERROR_TYPE] == b"LrsRefused"
    assert headers[DLQ_LRS_STATUS] == b"422"
    assert headers[DLQ_SOURCE_OFFSET] == b"7"
    assert headers[DLQ_LRS_RESPONSE] == "é".encode() * 50  # 100 bytes: never half a character


async def test_the_probe_port_answers_health_readiness_and_metrics_in_the_shared_shape() -> None:
    metrics = ForwarderMetrics.create()

    async def ready() -> tuple[bool, dict[str, Any]]:
        return False, {"kafka_reachable": True, "lrs_reachable": False}

    transport = httpx.ASGITransport(app=ProbeApp(ready, metrics.registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://forwarder") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        readiness = await client.get("/readyz")
        assert readiness.status_code == 503
        assert readiness.json() == {
            "status": "not ready",
            "checks": {"kafka_reachable": True, "lrs_reachable": False},
        }
        scrape = await client.get("/metrics")
        assert "exam_events_lrs_forward_statements_forwarded_total 0.0" in scrape.text
        assert (await client.get("/other")).status_code == 404
        assert (await client.post("/readyz")).status_code == 405


def test_the_statements_topic_follows_the_consumers_xapi_topic_unless_set_itself(
    lrs_environment: pytest.MonkeyPatch,
) -> None:
    lrs_environment.setenv("CONSUMER_XAPI_TOPIC", "tenant-a.xapi")
    assert LrsForwardSettings().statements_topic == "tenant-a.xapi"
    lrs_environment.setenv("LRS_STATEMENTS_TOPIC", "forwarded.xapi")
    assert LrsForwardSettings().statements_topic == "forwarded.xapi"
