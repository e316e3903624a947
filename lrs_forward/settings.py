"""Settings of the LRS forwarder, read from `LRS_*` (and `KAFKA_*`) environment variables."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.kafka import KafkaConnectionSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class LrsForwardSettings(BaseSettings):
    """Where the statements come from, which LRS they go to, batching, retries, probes (`LRS_*`)."""

    model_config = SettingsConfigDict(env_prefix="LRS_", extra="ignore")

    url: str = Field(
        min_length=1,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Base URL of the LRS; statements go to `{LRS_URL}/xAPI/statements`.",
    )
    username: str = Field(min_length=1, description="HTTP Basic user name at the LRS.")
    password: SecretStr = Field(description="HTTP Basic password at the LRS (never logged).")
    statements_topic: str = Field(
        # The consumer's CONSUMER_XAPI_TOPIC when this is unset: one setting names the topic for both.
        default_factory=lambda: os.environ.get("CONSUMER_XAPI_TOPIC") or "exam.xapi.statements",
        min_length=1,
        description="Topic of the xAPI statements to forward (default: CONSUMER_XAPI_TOPIC when that is "
        "set, else exam.xapi.statements).",
    )
    group_id: str = Field("exam-events-lrs-forward", min_length=1, description="Kafka consumer group id.")
    dlq_topic: str = Field(
        "exam.xapi.statements.dlq",
        min_length=1,
        description="Dead-letter topic: statements the LRS refused (a 4xx about the statement: not 409, "
        "nor 401, 403, 404, 407, 408, 425, 429, which are retried), with its answer.",
    )
    batch_max_statements: int = Field(
        100, ge=1, le=10_000, description="Most statements per POST (and per commit)."
    )
    batch_timeout_ms: int = Field(
        500, ge=1, description="How long one fetch waits for statements when the topic is idle."
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="How long one POST to the LRS may take before it counts as failed (retried)."
    )
    retry_backoff_initial_seconds: float = Field(
        0.5,
        gt=0,
        description="First wait before sending a batch again after a 5xx, timeout or refused connection.",
    )
    retry_backoff_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between attempts (the wait doubles up to this)."
    )
    response_excerpt_bytes: int = Field(
        1024, ge=0, le=16_384, description="Most bytes of the LRS's answer kept in a dead letter's header."
    )
    dlq_timeout_seconds: float = Field(
        30.0, gt=0, description="How long one dead-letter produce may wait for Kafka's acknowledgement."
    )
    shutdown_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, how long a batch the LRS keeps failing may still be retried before it is "
        "given up uncommitted (read again by the next owner).",
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="Kafka evicts a member that does not poll for this long."
    )
    session_timeout_ms: int = Field(
        10_000, ge=1000, description="Kafka group session timeout: a dead process is noticed after this."
    )
    http_host: str = Field("0.0.0.0", description="Address the probe port listens on.")  # noqa: S104  # a container's port
    http_port: int = Field(8083, ge=1, le=65535, description="Port of /healthz, /readyz and /metrics.")
    log_level: LogLevel = Field("INFO", description="Log level of the process.")
    kafka: KafkaConnectionSettings = Field(
        default_factory=KafkaConnectionSettings, description="`KAFKA_*` connection settings."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _without_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_in_order(self) -> LrsForwardSettings:
        if self.retry_backoff_initial_seconds > self.retry_backoff_max_seconds:
            raise ValueError(
                "LRS_RETRY_BACKOFF_INITIAL_SECONDS must not exceed LRS_RETRY_BACKOFF_MAX_SECONDS"
            )
        if self.statements_topic == self.dlq_topic:
            raise ValueError("LRS_DLQ_TOPIC must differ from LRS_STATEMENTS_TOPIC")
        return self

    @property
    def statements_url(self) -> str:
        """The xAPI Statements resource."""
        return f"{self.url}/xAPI/statements"
