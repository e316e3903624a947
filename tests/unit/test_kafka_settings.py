"""KAFKA_* settings: nothing is downgraded in silence, and no error echoes a secret."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.kafka import KafkaConnectionSettings
from common.settings import InvalidSettings, settings_or_error
from ingress.settings import IngressSettings

PASSWORD = "s3cret-kafka-password"  # a test value, looked for in messages


def refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        KafkaConnectionSettings(**values)
    return str(caught.value)


def test_a_ca_file_with_a_protocol_without_tls_is_refused_by_name() -> None:
    message = refusal(ssl_cafile="/etc/ca.pem")

    assert "KAFKA_SSL_CAFILE set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT would ignore it" in message


def test_sasl_credentials_with_a_protocol_without_sasl_are_refused_without_the_password() -> None:
    message = refusal(security_protocol="SSL", sasl_username="ingress", sasl_password=PASSWORD)

    assert "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set" in message
    assert PASSWORD not in message


def test_plain_over_sasl_plaintext_is_refused_unless_allowed_for_local_development() -> None:
    values: dict[str, Any] = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "ingress",
        "sasl_password": PASSWORD,
    }

    assert "sends the password in clear" in refusal(**values)
    assert KafkaConnectionSettings(**values, allow_plaintext_credentials=True).sasl_mechanism == "PLAIN"


@pytest.mark.parametrize(
    "values",
    [
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512"},  # no password in clear
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "ssl_cafile": "/etc/ca.pem"},
        {"security_protocol": "SSL", "ssl_cafile": "/etc/ca.pem", "ssl_certfile": "c", "ssl_keyfile": "k"},
    ],
)
def test_settings_the_protocol_uses_are_accepted(values: dict[str, Any]) -> None:
    if values["security_protocol"].startswith("SASL"):
        values = {**values, "sasl_username": "consumer", "sasl_password": PASSWORD}

    assert KafkaConnectionSettings(**values).security_protocol == values["security_protocol"]


def test_a_client_key_without_its_certificate_is_refused() -> None:
    assert "KAFKA_SSL_KEYFILE set without KAFKA_SSL_CERTFILE" in refusal(
        security_protocol="SSL", ssl_keyfile="k"
    )


def test_a_process_refuses_to_start_in_one_line_naming_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ingress")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)

    with pytest.raises(InvalidSettings) as caught:
        settings_or_error(IngressSettings)

    message = str(caught.value)
    assert "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in message
    assert "\n" not in message
    assert PASSWORD not in message
