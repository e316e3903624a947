"""The pure parts of `exam-events`: replay ids, filters and headers; masking; lag arithmetic;
topic configs and the refusals made before any broker is asked."""

from __future__ import annotations

import argparse

import pytest

from cli.main import build_parser, main
from cli.replay import ReplayRequest, parse_time, replay_headers
from cli.tail import mask_personal_data
from cli.topics import topic_configs
from common.kafka import KafkaConnectionSettings
from common.lag import partition_lag
from consumer.settings import ConsumerSettings
from handlers import RulesSettings


def test_the_same_source_target_and_filters_give_the_same_replay_id() -> None:
    one = ReplayRequest("dlq", "raw", event_name="x", limit=5, rate=10)
    again = ReplayRequest("dlq", "raw", event_name="x")
    other = ReplayRequest("dlq", "raw", event_name="y")

    assert one.replay_id == again.replay_id
    assert one.replay_id != other.replay_id
    assert one.group_id == f"exam-events.replay.{one.replay_id}"


def test_replay_filters_match_event_names_and_error_types_from_any_of_their_headers() -> None:
    request = ReplayRequest("unrouted", "raw", event_name="exam.new", error_type="no handler")

    assert request.matches(
        [("unrouted-event-name", b"exam.new"), ("unrouted-reason", b"no handler for x")], 0
    )
    assert not request.matches([("event-name", b"exam.new"), ("unrouted-reason", b"other")], 0)
    assert not request.matches([("event-name", b"exam.old"), ("unrouted-reason", b"no handler")], 0)


def test_replay_headers_keep_the_originals_and_replace_an_earlier_replays() -> None:
    original = [("webhook-id", b"w1"), ("replay-id", b"old"), ("replay-source-offset", b"1")]

    headers = replay_headers(original, "new", "dlq", 2, 40)

    assert headers == [
        ("webhook-id", b"w1"),
        ("replay-id", b"new"),
        ("replay-source-topic", b"dlq"),
        ("replay-source-partition", b"2"),
        ("replay-source-offset", b"40"),
    ]


def test_times_without_a_zone_are_utc_and_junk_is_refused() -> None:
    assert parse_time("2026-12-01T10:00:00").isoformat() == "2026-12-01T10:00:00+00:00"
    assert parse_time("2026-12-01T10:00:00Z") == parse_time("2026-12-01T11:00:00+01:00")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")


def test_masking_hides_learners_names_emails_and_ids_but_not_exam_names() -> None:
    masked = mask_personal_data(
        {
            "learner": {"id": "u1", "name": "Ada Lovelace", "email": "ada@example.org"},
            "user": {"firstName": "Ada", "last_name": "Lovelace"},
            "exam": {"name": "Maths"},
            "note": "contact ada@example.org",
        }
    )

    assert masked == {
        "learner": {"id": "***", "name": "***", "email": "***"},
        "user": {"firstName": "***", "last_name": "***"},
        "exam": {"name": "Maths"},
        "note": "contact ***",
    }


@pytest.mark.parametrize(
    ("committed", "end", "earliest", "lag"),
    [(2, 5, 0, 3), (None, 5, 1, 4), (-1, 5, 0, 5), (0, 5, 3, 2), (7, 5, 0, 0)],
)
def test_lag_counts_from_the_committed_offset_else_the_earliest(
    committed: int | None, end: int, earliest: int, lag: int
) -> None:
    assert partition_lag(committed, end, earliest) == lag


def test_replay_refuses_a_zero_limit_or_rate() -> None:
    parser = build_parser()
    for flags in (["--limit", "0"], ["--rate", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["replay", "--from", "dlq", *flags])


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known body topics and a port nothing listens on: a refusal must come before any connection."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("CONSUMER_RAW_TOPIC", "t.raw")
    monkeypatch.setenv("CONSUMER_DLQ_TOPIC", "t.dlq")
    monkeypatch.setenv("CONSUMER_UNROUTED_TOPIC", "t.unrouted")
    monkeypatch.setenv("CONSUMER_XAPI_TOPIC", "t.xapi")


@pytest.mark.usefixtures("no_broker")
@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (
            ["--from", "t.passed"],
            "--from t.passed does not hold raw webhook bodies (those are t.raw, t.dlq, t.unrouted)",
        ),
        (["--from", "t.dlq", "--to", "t.xapi"], "--to t.xapi is not the raw topic t.raw"),
        (
            ["--from", "t.raw", "--to", "t.unrouted", "--dry-run"],
            "--to t.unrouted is not the raw topic t.raw",
        ),
        (
            ["--from", "t.passed", "--to", "t.xapi"],
            "--from t.passed does not hold raw webhook bodies (those are t.raw, t.dlq, t.unrouted); "
            "--to t.xapi is not the raw topic t.raw",
        ),
    ],
)
def test_replay_refuses_in_one_line_when_from_holds_no_raw_bodies_or_to_is_not_the_raw_topic(
    flags: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["replay", *flags])

    assert status == 1
    assert capsys.readouterr().err == f"exam-events replay: refused: {reason}; --force copies anyway\n"


@pytest.mark.usefixtures("no_broker")
@pytest.mark.parametrize("flags", [["--from", "t.passed"], ["--from", "t.dlq", "--to", "t.xapi"]])
def test_replay_with_force_goes_past_the_refusal_to_the_broker(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["replay", *flags, "--force"])

    assert status == 1
    assert (
        capsys.readouterr().err
        == "exam-events replay: cannot reach Kafka at 127.0.0.1:1: KafkaConnectionError\n"
    )


@pytest.mark.usefixtures("no_broker")
@pytest.mark.parametrize("source", ["t.dlq", "t.unrouted"])
def test_replay_from_the_dead_letter_or_unrouted_topic_to_the_raw_topic_needs_no_force(
    source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["replay", "--from", source])

    assert status == 1
    assert "cannot reach Kafka" in capsys.readouterr().err


@pytest.mark.parametrize("factor", ["0", "-1"])
def test_topics_create_refuses_a_replication_factor_below_1_in_one_line_before_asking_a_broker(
    factor: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port nothing listens on: the refusal must come before any connection is tried.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")

    status = main(["topics", "create", "--replication-factor", factor])

    assert status == 1
    assert capsys.readouterr().err == (
        f"exam-events topics: replication factor {factor} is not possible: a topic needs at least 1\n"
    )


@pytest.mark.parametrize(("factor", "min_insync"), [(1, None), (2, "1"), (3, "2"), (5, "2")])
def test_min_insync_replicas_is_2_at_factor_3_or_more_1_at_factor_2_and_left_alone_at_1(
    factor: int, min_insync: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOPIC_MIN_INSYNC_REPLICAS", raising=False)
    settings = ConsumerSettings(kafka=KafkaConnectionSettings(), rules=RulesSettings())

    configs = topic_configs(settings, settings.passed_topic, factor)

    assert configs.get("min.insync.replicas") == min_insync
