"""Logs are JSON lines or console text, and never carry personal data, credentials or locals."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from common.logging import REDACTED, configure_logging


def crash_with_secret_locals() -> None:
    authorization = "Basic c2VjcmV0LXBhc3N3b3Jk"  # noqa: F841  # a local that must not be printed
    raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


def test_personal_data_and_credentials_are_masked_in_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", json=True)
    structlog.get_logger().info("hello", email="amara@example.org", password="pw", attempt_id="att_1")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["email"] == line["password"] == REDACTED
    assert line["attempt_id"] == "att_1"
    assert line["service"] == "test"


@pytest.mark.parametrize("as_json", [True, False])
def test_tracebacks_are_logged_without_local_variables(
    as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("test", json=as_json)
    for log in (structlog.get_logger(), logging.getLogger("library")):
        try:
            crash_with_secret_locals()
        except RuntimeError:
            log.exception("crashed")
    out = capsys.readouterr().out
    assert out.count("RuntimeError: boom") == 2  # both tracebacks are there...
    assert "c2VjcmV0" not in out  # ...without the locals of their frames
    assert "traceback object at" not in out
