"""The start-up check of topics: what makes the consumer refuse to start."""

from __future__ import annotations

import pytest
from aiokafka.errors import NodeNotReadyError, TopicAuthorizationFailedError

import consumer.topics as topics_module
from consumer.settings import ConsumerSettings
from consumer.topics import TopicsNotReady, check_topics, problems
from handlers import RulesSettings

SETTINGS = ConsumerSettings(rules=RulesSettings())
ALL = {
    "exam.webhooks.raw",
    "exam.results.passed",
    "exam.results.failed",
    "exam.resits",
    "exam.results.overrides",
    "exam.attempts",
    "exam.registrations",
    "exam.xapi.statements",
    "exam.webhooks.dlq",
    "exam.webhooks.unrouted",
    "exam.events.dedup",
}
TWO_MIB = 2 * 1024 * 1024


def sizes(raw: int = TWO_MIB, dlq: int = TWO_MIB, unrouted: int = TWO_MIB) -> dict[str, int]:
    return {"exam.webhooks.raw": raw, "exam.webhooks.dlq": dlq, "exam.webhooks.unrouted": unrouted}


def test_provisioned_topics_pass() -> None:
    assert problems(SETTINGS, ALL | {"other"}, sizes()) == []
    assert problems(SETTINGS, ALL, sizes(dlq=TWO_MIB + 1)) == []


def test_every_missing_topic_is_named_in_one_line() -> None:
    found = problems(SETTINGS, ALL - {"exam.webhooks.raw", "exam.resits"}, {})

    assert len(found) == 1
    assert "exam.webhooks.raw" in found[0]
    assert "exam.resits" in found[0]
    assert "\n" not in found[0]


def test_a_dlq_or_unrouted_topic_smaller_than_the_raw_topic_is_a_problem() -> None:
    found = problems(SETTINGS, ALL, sizes(dlq=1048588, unrouted=1048588))

    assert [line.split()[0] for line in found] == ["exam.webhooks.dlq", "exam.webhooks.unrouted"]
    assert all("max.message.bytes=1048588" in line for line in found)


def test_a_dedup_changelog_with_fewer_partitions_than_the_raw_topic_is_an_exactly_once_problem() -> None:
    counts = {"exam.webhooks.raw": 6, "exam.events.dedup": 3}

    found = problems(SETTINGS, ALL, sizes(), counts)
    at_least_once = ConsumerSettings(rules=RulesSettings(), processing_guarantee="at-least-once")

    assert len(found) == 1
    assert found[0].startswith("exam.events.dedup has 3 partitions, fewer than exam.webhooks.raw's 6")
    assert problems(SETTINGS, ALL, sizes(), {"exam.webhooks.raw": 6, "exam.events.dedup": 6}) == []
    assert problems(at_least_once, ALL - {"exam.events.dedup"}, sizes(), counts) == []


class FlakyCluster:
    """Answers the topic check after `failures` retriable errors (a node down), or fails with `error`."""

    def __init__(self, failures: int, found: list[str] | None = None, error: Exception | None = None) -> None:
        self.failures, self.found, self.error, self.calls = failures, found or [], error, 0

    async def __call__(
        self, _settings: ConsumerSettings, _timeout_ms: int
    ) -> tuple[list[str], dict[str, int]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.failures:
            raise NodeNotReadyError("node 2 is not ready")
        return self.found, {}


async def no_sleep(_seconds: float) -> None:
    return None


async def test_the_start_up_check_asks_again_while_a_node_cannot_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FlakyCluster(failures=3)
    monkeypatch.setattr(topics_module, "_problems_on_the_cluster", cluster)

    await check_topics(ConsumerSettings(rules=RulesSettings()), sleep=no_sleep)

    assert cluster.calls == 4


async def test_a_missing_topic_found_after_a_retry_still_refuses_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topics_module, "_problems_on_the_cluster", FlakyCluster(1, ["missing topics: x"]))

    with pytest.raises(TopicsNotReady, match="missing topics: x"):
        await check_topics(ConsumerSettings(rules=RulesSettings()), sleep=no_sleep)


async def test_the_retries_end_after_their_bound_with_the_clusters_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FlakyCluster(failures=10**6)
    monkeypatch.setattr(topics_module, "_problems_on_the_cluster", cluster)

    with pytest.raises(NodeNotReadyError):
        await check_topics(ConsumerSettings(rules=RulesSettings()), retry_for_seconds=0.0, sleep=no_sleep)
    assert cluster.calls == 1


async def test_an_error_no_retry_can_fix_ends_the_check_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FlakyCluster(0, error=TopicAuthorizationFailedError("not allowed"))
    monkeypatch.setattr(topics_module, "_problems_on_the_cluster", cluster)

    with pytest.raises(TopicAuthorizationFailedError):
        await check_topics(ConsumerSettings(rules=RulesSettings()), sleep=no_sleep)
    assert cluster.calls == 1
