"""The committed JSON Schemas of derived events are the ones the code produces."""

from __future__ import annotations

import json

import pytest

from schemas.derived import DERIVED_EVENT_MODELS
from schemas.export import DEFAULT_DIR, derived_event_schemas


@pytest.mark.parametrize(("name", "text"), sorted(derived_event_schemas().items()))
def test_the_committed_schema_matches_the_code(name: str, text: str) -> None:
    committed = DEFAULT_DIR / name
    assert committed.exists(), f"missing {committed}: run python -m schemas.export"
    assert committed.read_text() == text, f"{committed} is stale: run python -m schemas.export"


def test_there_is_one_schema_per_derived_event_type_and_no_other() -> None:
    assert sorted(p.name for p in DEFAULT_DIR.glob("*.json")) == sorted(
        f"{m.event_type}.json" for m in DERIVED_EVENT_MODELS
    )


def test_every_field_of_every_schema_is_described() -> None:
    for text in derived_event_schemas().values():
        schema = json.loads(text)
        for definition in [schema, *schema.get("$defs", {}).values()]:
            for field, spec in definition.get("properties", {}).items():
                assert "description" in spec, f"{definition['title']}.{field} has no description"
