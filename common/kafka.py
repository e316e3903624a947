"""Kafka connection settings shared by the ingress and the consumer.

Every process reads the same `KAFKA_*` variables, so one cluster's credentials are configured once.
Security settings are passed through untouched for real clusters (SASL and/or TLS), and never
downgraded in silence: a TLS or SASL setting the protocol would ignore, or a SASL/PLAIN password
that would cross the network in clear, stops the start with one line naming the settings.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaConnectionSettings(BaseSettings):
    """How to reach the Kafka cluster (environment variables `KAFKA_*`)."""

    # Errors never echo their input: it may be a password.
    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of the cluster's brokers."
    )
    client_id: str = Field("exam-events", description="Client id reported to the brokers.")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Transport security.")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism when SASL is on.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: str | None = Field(None, description="CA bundle to verify the brokers (TLS).")
    ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="Client key for mutual TLS.")
    allow_plaintext_credentials: bool = Field(
        False,
        description="Allow KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT, which "
        "sends the password in clear. Local development only.",
    )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaConnectionSettings:
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    "KAFKA_SECURITY_PROTOCOL=SASL_* needs KAFKA_SASL_MECHANISM, "
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
        return self

    @model_validator(mode="after")
    def _no_silent_downgrade(self) -> KafkaConnectionSettings:
        protocol = self.security_protocol
        ignored: list[str] = []
        if not protocol.endswith("SSL"):
            ignored += [
                f"KAFKA_{name.upper()}"
                for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                if getattr(self, name)
            ]
        if not protocol.startswith("SASL"):
            ignored += [
                f"KAFKA_{name.upper()}"
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name)
            ]
        if ignored:
            noun = "it" if len(ignored) == 1 else "them"
            raise ValueError(
                f"{', '.join(ignored)} set, but KAFKA_SECURITY_PROTOCOL={protocol} would ignore {noun}: "
                f"set the protocol that uses {noun} (SSL, SASL_PLAINTEXT or SASL_SSL), or unset {noun}"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("KAFKA_SSL_KEYFILE set without KAFKA_SSL_CERTFILE: set both for mutual TLS")
        if (
            protocol == "SASL_PLAINTEXT"
            and self.sasl_mechanism == "PLAIN"
            and not self.allow_plaintext_credentials
        ):
            raise ValueError(
                "KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT sends the password "
                "in clear: use SASL_SSL (or SCRAM), or set KAFKA_ALLOW_PLAINTEXT_CREDENTIALS=true for "
                "local development"
            )
        return self

    @property
    def bootstrap_list(self) -> list[str]:
        """The bootstrap servers as a list."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context when the protocol uses TLS, else None."""
        if not self.security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def faststream_security(self) -> BaseSecurity | None:
        """The FastStream security object for `KafkaBroker(security=...)`."""
        use_ssl = self.security_protocol.endswith("SSL")
        context = self.ssl_context()
        if not self.security_protocol.startswith("SASL"):
            return BaseSecurity(ssl_context=context, use_ssl=True) if use_ssl else None
        assert self.sasl_username is not None
        assert self.sasl_password is not None
        kinds: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
            "PLAIN": SASLPlaintext,
            "SCRAM-SHA-256": SASLScram256,
            "SCRAM-SHA-512": SASLScram512,
        }
        kind = kinds[self.sasl_mechanism or "PLAIN"]
        return kind(
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value(),
            ssl_context=context,
            use_ssl=use_ssl,
        )

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients, derived from the same settings as FastStream's."""
        return {
            "bootstrap_servers": self.bootstrap_list,
            "client_id": self.client_id,
            **parse_security(self.faststream_security()),
        }
