"""Identifiers are bounded in every webhook model: each id becomes a key, a CloudEvents subject,
part of an event id or a derived field, so none may be longer than MAX_ID_CHARS."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from handlers import Invalid, RulesSettings, SourceRecord, build_routing_table, route_webhook
from schemas.platform import AttemptOverrideCreated, AttemptReported, UserRegisteredForExam
from schemas.webhook import MAX_ID_CHARS, ExamResultsReleased
from tests.support.webhooks import encode, platform_body

WEBHOOK_MODELS: list[type[BaseModel]] = [
    ExamResultsReleased,
    AttemptOverrideCreated,
    AttemptReported,
    UserRegisteredForExam,
]


def is_id(wire_name: str) -> bool:
    return wire_name == "id" or wire_name.endswith(("Id", "-id", "_id"))


def unbounded_ids(schema: dict[str, Any]) -> list[str]:
    """`Model.property` of every id-named string property of a JSON Schema without a maxLength of at
    most MAX_ID_CHARS."""
    found = []
    for model_name, model in {"": schema, **schema.get("$defs", {})}.items():
        for name, prop in model.get("properties", {}).items():
            strings = [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") == "string"]
            if is_id(name) and (
                not strings or any(s.get("maxLength", 10**9) > MAX_ID_CHARS for s in strings)
            ):
                found.append(f"{model_name or schema['title']}.{name}")
    return found


@pytest.mark.parametrize("model", WEBHOOK_MODELS, ids=lambda model: model.__name__)
def test_every_id_of_every_webhook_model_is_bounded(model: type[BaseModel]) -> None:
    assert unbounded_ids(model.model_json_schema(by_alias=True)) == []


def test_the_check_finds_unbounded_ids_and_only_those() -> None:
    class Loose(BaseModel):
        id: str
        group_id: str | None
        bounded_id: str = Field(max_length=MAX_ID_CHARS)
        name: str

    assert unbounded_ids(Loose.model_json_schema()) == ["Loose.id", "Loose.group_id"]


TABLE = build_routing_table(RulesSettings())
SOURCE = SourceRecord("exam.webhooks.raw", 0, 0)
LONG_ID = "u" * 540_000


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("attempt-override-created", ("attempt", "user")),
        ("attempt-override-created", ("exam", "id")),
        ("exam-completed", ("attempt", "id")),
        ("exam-submitted", ("portal", "id")),
    ],
)
def test_a_platform_webhook_with_a_540_kb_id_is_invalid_and_the_reason_names_the_field(
    name: str, path: tuple[str, str]
) -> None:
    body = platform_body(name)
    body[path[0]][path[1]] = LONG_ID

    result = route_webhook(encode(body), SOURCE, TABLE)

    assert isinstance(result, Invalid)
    assert result.error_type == "ValidationError"
    assert ".".join(path) in result.message
    assert "uuuu" not in result.message
