"""Settings of the webhook ingress, read from `INGRESS_*` (and `KAFKA_*`) environment variables."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.kafka import KafkaConnectionSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
MIN_STRONG_PASSWORD_CHARS = 16
SECRET_PREFIX = "whsec_"  # noqa: S105  # a format marker, not a secret


class IngressSettings(BaseSettings):
    """How the ingress listens, authenticates and produces (environment variables `INGRESS_*`)."""

    # Errors never echo their input: it may be a password or a signing secret.
    model_config = SettingsConfigDict(env_prefix="INGRESS_", extra="ignore", hide_input_in_errors=True)

    host: str = Field(
        "0.0.0.0",  # noqa: S104  # a container's port
        description="Address of the public port (the webhook routes and /openapi.json).",
    )
    port: int = Field(8080, ge=1, le=65535, description="Public TCP port: `POST /webhooks`, `/openapi.json`.")
    admin_host: str | None = Field(
        None, description="Address of the admin port (/healthz, /readyz, /metrics); default: INGRESS_HOST."
    )
    admin_port: int = Field(
        8082,
        ge=1,
        le=65535,
        description="Admin TCP port: /healthz, /readyz, /metrics; keep it off the internet. (The "
        "consumer's is 8081.)",
    )
    basic_auth_username: str | None = Field(
        None, min_length=1, description="HTTP Basic user name the sender uses (no `:`, RFC 7617)."
    )
    basic_auth_password: SecretStr | None = Field(
        None,
        min_length=1,
        description="HTTP Basic password (never logged); a warning at start when shorter than 16 characters.",
    )
    signing_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="Standard Webhooks secrets `whsec_<base64>`, comma separated; several allow rotation.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Accept requests without any authentication. Local development only."
    )
    signature_tolerance_seconds: int = Field(
        300, ge=1, description="How far `webhook-timestamp` may be from now, either way."
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1, description="Largest body accepted; larger gets 413.")
    raw_topic: str = Field("exam.webhooks.raw", min_length=1, description="Topic the bodies go to.")
    produce_timeout_seconds: float = Field(
        5.0, gt=0, description="How long to wait for Kafka's acknowledgement before answering 503."
    )
    body_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a client may take to send its body; slower gets 408 and the connection "
        "closed. Part of the graceful shutdown period (this plus the produce timeout plus 2 s).",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Largest request line plus headers (the bytes received until the blank line that "
        "ends them); larger gets 431 and the connection closed.",
    )
    limit_concurrency: int = Field(
        256,
        ge=1,
        description="Most requests in progress at once on the public port (from the end of a request's "
        "head to its answer; idle connections do not count). Beyond it a request gets 503 with "
        "Retry-After at once. Each may hold up to INGRESS_MAX_BODY_BYTES of body in memory.",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="Most open connections per port. At the bound, the connection idle the longest is "
        "closed to make room; with none idle, the new connection gets 503 and is closed.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a request head (request line and headers) may take to arrive, from the "
        "connection's opening or the previous answer, however its bytes trickle in; slower gets 408 "
        "and the connection closed.",
    )
    keep_alive_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a connection may stay open without sending a byte of a request (after "
        "opening or after an answer); then it is closed without an answer.",
    )
    http_impl: Literal["one-write", "httptools"] = Field(
        "one-write",
        description="`one-write`: uvicorn's httptools protocol, each answer in one socket write "
        "(ingress/transport.py); `httptools`: uvicorn's own writes, if joining them misbehaves. Both keep "
        "the head limit and the lingering close; both use public APIs only.",
    )
    retry_after_seconds: int = Field(10, ge=0, description="`Retry-After` sent with a 503.")
    linger_ms: int = Field(
        0,
        ge=0,
        description="Extra wait before sending a batch. 0 is best measured: records of concurrent "
        "requests batch up anyway while the previous produce request is in flight.",
    )
    log_level: LogLevel = Field("INFO", description="Log level of the process.")
    kafka: KafkaConnectionSettings = Field(
        default_factory=KafkaConnectionSettings, description="`KAFKA_*` connection settings."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("basic_auth_username")
    @classmethod
    def _username_without_colon(cls, value: str | None) -> str | None:
        if value is not None and ":" in value:
            raise ValueError(
                "INGRESS_BASIC_AUTH_USERNAME must not contain ':' (HTTP Basic could never match)"
            )
        return value

    @field_validator("signing_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("signing_secrets")
    @classmethod
    def _secrets_are_whsec_base64(cls, secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for position, secret in enumerate(secrets, start=1):
            signing_key(secret, position)
        return secrets

    @model_validator(mode="after")
    def _admin_port_of_its_own(self) -> IngressSettings:
        if self.admin_port == self.port:
            raise ValueError(
                f"INGRESS_ADMIN_PORT must differ from INGRESS_PORT (both {self.port}): the admin routes "
                "must not be served on the public port"
            )
        if self.admin_host is None:
            self.admin_host = self.host
        return self

    @model_validator(mode="after")
    def _some_authentication_is_configured(self) -> IngressSettings:
        if (self.basic_auth_username is None) != (self.basic_auth_password is None):
            raise ValueError(
                "set both INGRESS_BASIC_AUTH_USERNAME and INGRESS_BASIC_AUTH_PASSWORD, or neither"
            )
        if not (self.basic_auth_configured or self.signing_secrets or self.allow_unauthenticated):
            raise ValueError(
                "no authentication configured: set INGRESS_BASIC_AUTH_USERNAME and "
                "INGRESS_BASIC_AUTH_PASSWORD, or INGRESS_SIGNING_SECRETS "
                "(or INGRESS_ALLOW_UNAUTHENTICATED=true for local development only)"
            )
        return self

    @property
    def basic_auth_configured(self) -> bool:
        """True when HTTP Basic credentials are set."""
        return self.basic_auth_username is not None and self.basic_auth_password is not None

    @property
    def weak_basic_password(self) -> bool:
        """True when the Basic password is shorter than 16 characters (logged as a warning at start)."""
        password = self.basic_auth_password
        return password is not None and len(password.get_secret_value()) < MIN_STRONG_PASSWORD_CHARS

    @property
    def signing_keys(self) -> tuple[bytes, ...]:
        """The decoded HMAC keys of the signing secrets, in the configured order."""
        return tuple(signing_key(s, i) for i, s in enumerate(self.signing_secrets, start=1))

    @property
    def unauthenticated(self) -> bool:
        """True when no scheme is configured and requests are let in as they come."""
        return not (self.basic_auth_configured or self.signing_secrets)


def signing_key(secret: SecretStr, position: int = 1) -> bytes:
    """The HMAC key inside a `whsec_<base64>` secret; the error names the position, never the value."""
    raw = secret.get_secret_value()
    encoded = raw.removeprefix(SECRET_PREFIX)
    if raw == encoded:
        raise ValueError(f"signing secret #{position} does not start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"signing secret #{position} is not {SECRET_PREFIX} followed by base64") from None
    if not key:
        raise ValueError(f"signing secret #{position} is empty")
    return key
