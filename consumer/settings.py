"""Settings of the results consumer, read from `CONSUMER_*` (and `KAFKA_*`, rules) environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.kafka import KafkaConnectionSettings
from handlers import RulesSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
ProcessingGuarantee = Literal["exactly-once", "at-least-once"]


class ConsumerSettings(BaseSettings):
    """Topics, group, batching, retry and HTTP settings of the consumer (environment `CONSUMER_*`)."""

    model_config = SettingsConfigDict(env_prefix="CONSUMER_", extra="ignore")

    raw_topic: str = Field("exam.webhooks.raw", min_length=1, description="Topic of raw webhook bodies.")
    passed_topic: str = Field(
        "exam.results.passed", min_length=1, description="Topic of `exam.result.passed` events."
    )
    failed_topic: str = Field(
        "exam.results.failed", min_length=1, description="Topic of `exam.result.failed` events."
    )
    resits_topic: str = Field(
        "exam.resits", min_length=1, description="Topic of the `exam.resit.*` events (all three types)."
    )
    overrides_topic: str = Field(
        "exam.results.overrides", min_length=1, description="Topic of `exam.score.overridden` events."
    )
    attempts_topic: str = Field(
        "exam.attempts",
        min_length=1,
        description="Topic of `exam.attempt.submitted` and `exam.attempt.completed` events.",
    )
    registrations_topic: str = Field(
        "exam.registrations", min_length=1, description="Topic of `exam.registration.created` events."
    )
    xapi_topic: str = Field(
        "exam.xapi.statements",
        min_length=1,
        description="Topic of the xAPI 1.0.3 statements of exam results (one per exam.result.passed or "
        "exam.result.failed; value the statement, key user.id), which `exam-events lrs-forward` sends "
        "to an LRS.",
    )
    dlq_topic: str = Field(
        "exam.webhooks.dlq", min_length=1, description="Dead-letter topic: not JSON, or invalid known event."
    )
    unrouted_topic: str = Field(
        "exam.webhooks.unrouted", min_length=1, description="Topic of JSON bodies no handler answers to."
    )
    dedup_topic: str = Field(
        "exam.events.dedup",
        min_length=1,
        description="Exactly-once: compacted changelog of the ce_ids published per raw partition "
        "(as many partitions as the raw topic).",
    )
    group_id: str = Field("exam-events", min_length=1, description="Kafka consumer group id.")
    processing_guarantee: ProcessingGuarantee = Field(
        "exactly-once",
        description="`exactly-once`: outputs, dead-letter/unrouted records and input offsets of a batch "
        "commit in one Kafka transaction per raw partition, and redelivered webhooks are deduplicated; "
        "read the outputs with isolation.level=read_committed. `at-least-once`: outputs are "
        "acknowledged before the offsets are committed; a crash or rebalance can repeat events "
        "(same ce_id).",
    )
    transaction_timeout_ms: int = Field(
        40_000,
        ge=2000,
        description="Exactly-once: the broker aborts a transaction open longer than this "
        "(transaction.timeout.ms; at most the broker's transaction.max.timeout.ms). The consumer "
        "itself aborts a batch's transaction after half of it.",
    )
    dedup_window_hours: float = Field(
        168.0,
        gt=0,
        description="Exactly-once: how long a published ce_id is remembered, so that a webhook the "
        "platform posts again within this window publishes nothing twice.",
    )
    dedup_max_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024 * 1024,
        description="Exactly-once: the most memory the dedup stores of one member take together (about "
        "96 bytes per id: 512 MiB holds about 5.6 million). At the bound the oldest ids are forgotten "
        "first, before the window ends, and counted (exam_events_consumer_dedup_forgotten_early_total).",
    )
    http_host: str = Field("0.0.0.0", description="Address the HTTP port listens on.")  # noqa: S104  # a container's port
    http_port: int = Field(
        8081, ge=1, le=65535, description="Port of /healthz, /readyz, /metrics, /asyncapi."
    )
    batch_max_records: int = Field(500, ge=1, description="Most raw records handled (and committed) at once.")
    batch_timeout_ms: int = Field(
        20,
        ge=1,
        description="How long one poll waits for records when the topic is idle; after an empty poll "
        "FastStream sleeps as long again, so a webhook arriving at an idle consumer waits up to this "
        "long before it is read. Under load it changes nothing (a poll returns what was fetched at "
        "once). Lower: faster pick-up after idle; higher: fewer idle wake-ups (each costs microseconds, "
        "no broker request: the fetch long-poll runs on its own).",
    )
    retry_backoff_initial_seconds: float = Field(
        0.5, gt=0, description="First wait before re-publishing a batch after a broker error."
    )
    retry_backoff_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between re-publish attempts (the wait doubles up to this)."
    )
    graceful_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="On SIGTERM or a rebalance, how long the in-flight batch may take to finish and commit.",
    )
    max_poll_interval_ms: int = Field(
        300_000,
        ge=1000,
        description="Kafka evicts the member when one batch takes longer than this (e.g. retrying).",
    )
    session_timeout_ms: int = Field(
        10_000, ge=1000, description="Kafka group session timeout: a dead process is noticed after this."
    )
    producer_linger_ms: int = Field(
        0,
        ge=0,
        description="How long the producer waits to fill a request with more records. Every batch "
        "waits this long for its acknowledgements before it commits, and a webhook can wait for more "
        "than one batch, so it adds more than this to the end-to-end latency (5 ms: at-least-once p50 "
        "at 200/s 25 ms, against 3.1 ms with 0). 0 cost no measurable throughput: records still share "
        "a request while the previous one is in flight.",
    )
    producer_max_batch_bytes: int = Field(
        256 * 1024, ge=16 * 1024, description="Largest record batch per partition in one produce request."
    )
    producer_request_timeout_ms: int = Field(
        30_000,
        ge=1000,
        description="How long the producer waits for an acknowledgement before failing a send.",
    )
    log_level: LogLevel = Field("INFO", description="Log level of the process.")
    kafka: KafkaConnectionSettings = Field(
        default_factory=KafkaConnectionSettings, description="`KAFKA_*` connection settings."
    )
    rules: RulesSettings = Field(
        default_factory=RulesSettings, description="Rules settings (RESULTS_RELEASED_EVENT_NAMES, ...)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _topics_do_not_loop(self) -> ConsumerSettings:
        outputs = {
            self.passed_topic,
            self.failed_topic,
            self.resits_topic,
            self.overrides_topic,
            self.attempts_topic,
            self.registrations_topic,
            self.xapi_topic,
            self.dlq_topic,
            self.unrouted_topic,
        }
        # Writing back to the raw topic would feed the consumer its own output forever.
        if self.raw_topic in outputs:
            raise ValueError(f"CONSUMER_RAW_TOPIC {self.raw_topic!r} must differ from every output topic")
        if self.processing_guarantee == "exactly-once":
            if self.dedup_topic in outputs | {self.raw_topic}:
                raise ValueError(
                    f"CONSUMER_DEDUP_TOPIC {self.dedup_topic!r} must differ from every other topic"
                )
            # A rebalance waits up to the graceful timeout for the in-flight transactions; each is
            # aborted by the consumer after the batch deadline, so the wait must be longer.
            if self.transaction_deadline_seconds >= self.graceful_timeout_seconds:
                raise ValueError(
                    f"CONSUMER_TRANSACTION_TIMEOUT_MS/2 ({self.transaction_deadline_seconds:g} s) must be "
                    f"shorter than CONSUMER_GRACEFUL_TIMEOUT_SECONDS ({self.graceful_timeout_seconds:g} s), "
                    "so that a rebalance finds every transaction committed or aborted"
                )
            if self.transaction_deadline_seconds * 1000 >= self.max_poll_interval_ms:
                raise ValueError(
                    "CONSUMER_TRANSACTION_TIMEOUT_MS/2 must be shorter than CONSUMER_MAX_POLL_INTERVAL_MS"
                )
        if self.retry_backoff_initial_seconds > self.retry_backoff_max_seconds:
            raise ValueError(
                "CONSUMER_RETRY_BACKOFF_INITIAL_SECONDS exceeds CONSUMER_RETRY_BACKOFF_MAX_SECONDS"
            )
        return self

    @property
    def exactly_once(self) -> bool:
        """True in exactly-once mode."""
        return self.processing_guarantee == "exactly-once"

    @property
    def transaction_deadline_seconds(self) -> float:
        """Exactly-once: a batch's transaction not committed after this long is aborted (and retried)."""
        return self.transaction_timeout_ms / 2000

    @property
    def dedup_window_seconds(self) -> float:
        """The dedup window in seconds."""
        return self.dedup_window_hours * 3600

    def transactional_id(self, partition: int) -> str:
        """The stable transactional id of the producer for one raw partition: whoever owns the
        partition next starts a producer with the same id, which fences the previous owner's."""
        return f"{self.group_id}.{self.raw_topic}.{partition}"

    @property
    def stuck_batch_seconds(self) -> float:
        """A batch in flight longer than this is stuck (publishing keeps failing): /readyz fails."""
        return 5 * self.retry_backoff_max_seconds

    @property
    def body_topics(self) -> list[str]:
        """Topics that carry whole webhook bodies: the raw topic, then the dead-letter and unrouted ones."""
        return list(dict.fromkeys([self.raw_topic, self.dlq_topic, self.unrouted_topic]))

    @property
    def all_topics(self) -> list[str]:
        """Every topic the consumer reads or writes, each once."""
        topics = [self.raw_topic, *self.derived_topics.values(), *self.body_topics]
        if self.exactly_once:
            topics.append(self.dedup_topic)
        return list(dict.fromkeys(topics))

    @property
    def derived_topics(self) -> dict[str, str]:
        """Derived event type -> topic; the single place that decides where each type goes."""
        return {
            "exam.result.passed": self.passed_topic,
            "exam.result.failed": self.failed_topic,
            "exam.resit.available": self.resits_topic,
            "exam.resit.exhausted": self.resits_topic,
            "exam.resit.passed": self.resits_topic,
            "exam.score.overridden": self.overrides_topic,
            "exam.attempt.submitted": self.attempts_topic,
            "exam.attempt.completed": self.attempts_topic,
            "exam.registration.created": self.registrations_topic,
            "exam.xapi.statement": self.xapi_topic,
        }
