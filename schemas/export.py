"""Write the JSON Schema of every derived event's data, for downstream teams.

python -m schemas.export [DIR]      (default: docs/schemas)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.derived import DERIVED_EVENT_MODELS

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def derived_event_schemas() -> dict[str, str]:
    """File name -> JSON Schema text (wire names) of each derived event type."""
    schemas = {}
    for model in DERIVED_EVENT_MODELS:
        schema = model.model_json_schema(by_alias=True, mode="serialization")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:exam-events:schema:{model.event_type}",
            "x-cloudevents-type": model.event_type,
            **schema,
        }
        schemas[f"{model.event_type}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return schemas


def main(argv: list[str]) -> int:
    """Write the schema files into the given directory."""
    out = Path(argv[0]) if argv else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, text in derived_event_schemas().items():
        (out / name).write_text(text)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
