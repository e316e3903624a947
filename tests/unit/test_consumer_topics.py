"""The start-up check of topics: what makes the consumer refuse to start."""

from __future__ import annotations

from consumer.settings import ConsumerSettings
from consumer.topics import problems
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
