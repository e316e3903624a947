"""Consumer settings: defaults from the issue, environment overrides, and refused combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from consumer.settings import ConsumerSettings
from schemas.derived import DERIVED_EVENT_MODELS

CONSUMER_VARIABLES = [
    "CONSUMER_RAW_TOPIC",
    "CONSUMER_GROUP_ID",
    "CONSUMER_HTTP_PORT",
    "CONSUMER_BATCH_MAX_RECORDS",
    "CONSUMER_LOG_LEVEL",
    "CONSUMER_PASSED_TOPIC",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONSUMER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_issue() -> None:
    settings = ConsumerSettings()

    assert settings.raw_topic == "exam.webhooks.raw"
    assert settings.dlq_topic == "exam.webhooks.dlq"
    assert settings.unrouted_topic == "exam.webhooks.unrouted"
    assert settings.group_id == "exam-events"
    assert settings.http_port == 8081
    assert settings.derived_topics == {
        "exam.result.passed": "exam.results.passed",
        "exam.result.failed": "exam.results.failed",
        "exam.resit.available": "exam.resits",
        "exam.resit.exhausted": "exam.resits",
        "exam.resit.passed": "exam.resits",
        "exam.score.overridden": "exam.results.overrides",
        "exam.attempt.submitted": "exam.attempts",
        "exam.attempt.completed": "exam.attempts",
        "exam.registration.created": "exam.registrations",
        "exam.xapi.statement": "exam.xapi.statements",
    }


def test_every_derived_event_type_has_a_topic() -> None:
    mapped = ConsumerSettings().derived_topics

    assert {model.event_type for model in DERIVED_EVENT_MODELS} == set(mapped)


def test_environment_variables_override_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUMER_GROUP_ID", "results-v2")
    monkeypatch.setenv("CONSUMER_HTTP_PORT", "9100")
    monkeypatch.setenv("CONSUMER_BATCH_MAX_RECORDS", "100")
    monkeypatch.setenv("CONSUMER_LOG_LEVEL", "debug")
    monkeypatch.setenv("CONSUMER_PASSED_TOPIC", "passed.v2")
    monkeypatch.setenv("MAX_RESITS", "3")

    settings = ConsumerSettings()

    assert (settings.group_id, settings.http_port, settings.batch_max_records) == ("results-v2", 9100, 100)
    assert settings.log_level == "DEBUG"
    assert settings.derived_topics["exam.result.passed"] == "passed.v2"
    assert settings.rules.max_resits == 3


def test_an_output_topic_equal_to_the_raw_topic_is_refused() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        ConsumerSettings(dlq_topic="exam.webhooks.raw")


def test_an_initial_backoff_above_the_maximum_is_refused() -> None:
    with pytest.raises(ValidationError, match="BACKOFF"):
        ConsumerSettings(retry_backoff_initial_seconds=10, retry_backoff_max_seconds=1)


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_an_invalid_port_is_refused(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv("CONSUMER_HTTP_PORT", port)

    with pytest.raises(ValidationError):
        ConsumerSettings()


def test_every_consumer_setting_is_documented_in_docs_consumer_md() -> None:
    from pathlib import Path

    documented = (Path(__file__).resolve().parents[2] / "docs" / "consumer.md").read_text()

    for name in ConsumerSettings.model_fields:
        if name not in {"kafka", "rules"}:
            assert f"`CONSUMER_{name.upper()}`" in documented, f"CONSUMER_{name.upper()} is not documented"
