"""The committed OpenAPI document is the one the code serves."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ingress.app import MAX_EVENT_NAME_CHARS, valid_path_event_name
from ingress.openapi import SERVER_RESPONSES, WEBHOOK_RESPONSES, openapi_document, render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "ingress-openapi.json"


def test_the_committed_openapi_document_matches_the_code() -> None:
    assert COMMITTED.read_text() == render(), (
        "docs/ingress-openapi.json drifted: regenerate it with "
        "`.venv/bin/python -m ingress.openapi > docs/ingress-openapi.json`"
    )


def test_the_webhook_operation_documents_every_status_and_both_auth_schemes() -> None:
    operation = openapi_document()["paths"]["/webhooks"]["post"]

    assert set(operation["responses"]) == {str(status) for status in [*WEBHOOK_RESPONSES, *SERVER_RESPONSES]}
    assert {"408", "431", "500"} <= set(operation["responses"])
    assert 'charset="UTF-8"' in operation["responses"]["401"]["headers"]["WWW-Authenticate"]["description"]
    assert operation["security"] == [{"basicAuth": []}, {"standardWebhooks": []}]
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


def test_the_document_is_plain_json() -> None:
    assert json.loads(render()) == openapi_document()


EVENT_NAME_SCHEMA = openapi_document()["paths"]["/webhooks/{eventName}"]["post"]["parameters"][0]["schema"]
# The documented pattern with ECMA-262's `$`, the end of the string (Python's `$` also matches
# before a final newline).
EVENT_NAME_PATTERN = re.compile(EVENT_NAME_SCHEMA["pattern"].removesuffix("$") + r"\Z")


def documented(name: str) -> bool:
    """What a client generated from the document accepts: its length bounds and its pattern."""
    length_ok = EVENT_NAME_SCHEMA["minLength"] <= len(name) <= EVENT_NAME_SCHEMA["maxLength"]
    return length_ok and EVENT_NAME_PATTERN.search(name) is not None


def test_the_documented_event_name_length_is_the_ingresss() -> None:
    assert EVENT_NAME_SCHEMA["maxLength"] == MAX_EVENT_NAME_CHARS
    assert EVENT_NAME_SCHEMA["minLength"] == 1


def test_the_documented_event_name_rule_and_the_ingress_agree_on_every_code_point() -> None:
    disagreements = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        for name in (chr(code), f"exam.{chr(code)}x")
        if documented(name) != valid_path_event_name(name)
    ]

    assert disagreements == []


def test_the_platforms_event_names_follow_the_documented_rule() -> None:
    for name in ("exam.resultsReleased", "attemptOverride.created", "user.registeredForExam"):
        assert documented(name)
        assert valid_path_event_name(name)


@given(
    st.text(st.characters(max_codepoint=0x7F), max_size=140)
    | st.text(max_size=140)
    | st.integers(0, 140).map(lambda n: "e" * n)
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=120, max_size=135)
)
def test_the_documented_event_name_rule_and_the_ingress_agree_on_any_name(name: str) -> None:
    assert documented(name) == valid_path_event_name(name)
