"""The ingress refuses to start without authentication and reads every INGRESS_* variable."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from ingress.bootstrap import main
from ingress.settings import IngressSettings
from tests.support.ingress_harness import SIGNING_KEY, SIGNING_SECRET


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No INGRESS_* variable of the machine leaks into these tests."""
    for name in [
        "INGRESS_HOST",
        "INGRESS_PORT",
        "INGRESS_ADMIN_HOST",
        "INGRESS_ADMIN_PORT",
        "INGRESS_BASIC_AUTH_USERNAME",
        "INGRESS_BASIC_AUTH_PASSWORD",
        "INGRESS_SIGNING_SECRETS",
        "INGRESS_ALLOW_UNAUTHENTICATED",
    ]:
        monkeypatch.delenv(name, raising=False)


def test_settings_without_any_authentication_are_refused() -> None:
    with pytest.raises(ValidationError, match="no authentication configured"):
        IngressSettings()


def test_allow_unauthenticated_lets_the_ingress_start_without_authentication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGRESS_ALLOW_UNAUTHENTICATED", "true")

    settings = IngressSettings()

    assert settings.unauthenticated


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_BASIC_AUTH_USERNAME", "u")
    monkeypatch.setenv("INGRESS_BASIC_AUTH_PASSWORD", "p")

    settings = IngressSettings()

    assert settings.port == 8080
    assert settings.admin_port == 8082  # the consumer's admin port is 8081
    assert settings.admin_host == settings.host == "0.0.0.0"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.raw_topic == "exam.webhooks.raw"
    assert settings.produce_timeout_seconds == 5.0
    assert settings.signature_tolerance_seconds == 300
    assert not settings.unauthenticated


def test_a_username_without_a_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_BASIC_AUTH_USERNAME", "u")
    monkeypatch.setenv("INGRESS_ALLOW_UNAUTHENTICATED", "true")

    with pytest.raises(ValidationError, match="or neither"):
        IngressSettings()


def test_signing_secrets_are_read_comma_separated_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    second = "whsec_" + base64.b64encode(b"second key").decode()
    monkeypatch.setenv("INGRESS_SIGNING_SECRETS", f"{SIGNING_SECRET}, {second}")

    settings = IngressSettings()

    assert settings.signing_keys == (SIGNING_KEY, b"second key")


@pytest.mark.parametrize(
    ("secret", "complaint"),
    [
        ("not-a-whsec", "does not start with whsec_"),
        ("whsec_***not base64***", "followed by base64"),
        ("whsec_", "is empty"),
    ],
)
def test_malformed_signing_secrets_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, secret: str, complaint: str
) -> None:
    monkeypatch.setenv("INGRESS_SIGNING_SECRETS", secret)

    with pytest.raises(ValidationError, match=complaint) as caught:
        IngressSettings()

    assert secret not in str(caught.value)


def test_secrets_never_appear_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_BASIC_AUTH_USERNAME", "u")
    monkeypatch.setenv("INGRESS_BASIC_AUTH_PASSWORD", "hunter2-password")
    monkeypatch.setenv("INGRESS_SIGNING_SECRETS", SIGNING_SECRET)

    shown = repr(IngressSettings())

    assert "hunter2-password" not in shown
    assert SIGNING_SECRET not in shown


def test_kafka_connection_comes_from_the_shared_kafka_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")

    settings = IngressSettings()

    assert settings.kafka.bootstrap_list == ["kafka-1:9092", "kafka-2:9092"]


@pytest.mark.parametrize(
    ("username", "password", "problem"),
    [
        ("", "long enough password", "at least 1"),
        ("u", "", "at least 1"),
        ("a:b", "long enough password", "':'"),
    ],
)
def test_an_empty_basic_credential_or_a_username_with_a_colon_is_refused(
    monkeypatch: pytest.MonkeyPatch, username: str, password: str, problem: str
) -> None:
    monkeypatch.setenv("INGRESS_BASIC_AUTH_USERNAME", username)
    monkeypatch.setenv("INGRESS_BASIC_AUTH_PASSWORD", password)

    with pytest.raises(ValidationError, match=problem):
        IngressSettings()


def test_the_admin_host_defaults_to_the_host_and_can_be_set_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("INGRESS_HOST", "10.0.0.5")

    assert IngressSettings().admin_host == "10.0.0.5"
    monkeypatch.setenv("INGRESS_ADMIN_HOST", "127.0.0.1")
    monkeypatch.setenv("INGRESS_ADMIN_PORT", "9100")
    settings = IngressSettings()
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 9100)


def test_an_admin_port_equal_to_the_public_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGRESS_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("INGRESS_PORT", "9000")
    monkeypatch.setenv("INGRESS_ADMIN_PORT", "9000")

    with pytest.raises(ValidationError, match="INGRESS_ADMIN_PORT must differ from INGRESS_PORT"):
        IngressSettings()


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"INGRESS_ALLOW_UNAUTHENTICATED": "true", "INGRESS_ADMIN_PORT": "8080"},
            "ingress: invalid settings: INGRESS_ADMIN_PORT must differ from INGRESS_PORT (both 8080)",
        ),
        (
            {"INGRESS_ALLOW_UNAUTHENTICATED": "true", "INGRESS_ADMIN_PORT": "70000"},
            "ingress: invalid settings: INGRESS_ADMIN_PORT: Input should be less than or equal to 65535",
        ),
        ({}, "ingress: invalid settings: no authentication configured"),
    ],
)
def test_python_m_ingress_with_invalid_settings_prints_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variables: dict[str, str], line: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SystemExit) as exited:
        main()

    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(line)
    assert stderr.count("\n") == 1
