"""The committed OpenAPI document is the one the code serves."""

from __future__ import annotations

import json
from pathlib import Path

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
