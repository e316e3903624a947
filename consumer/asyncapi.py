"""The consumer's AsyncAPI document, generated from the app itself.

    python -m consumer.asyncapi            # rewrites docs/asyncapi.json from the default settings

A unit test compares the committed file with what the code generates, so the two cannot drift.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from consumer.app import create_app
from consumer.settings import ConsumerSettings

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"
# Settings from the environment would leak a deployment's topics and brokers into the document.
ENVIRONMENT_PREFIXES = ("CONSUMER_", "KAFKA_", "RESULTS_RELEASED_EVENT_NAMES", "MAX_RESITS", "CE_SOURCE")


def asyncapi_document(settings: ConsumerSettings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the app built from `settings`."""
    document: dict[str, Any] = create_app(settings).schema.to_specification().to_jsonable()
    return document


def render(document: dict[str, Any]) -> str:
    """The document as committed: sorted keys, two-space indent, final newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def default_settings() -> ConsumerSettings:
    """Settings with every default, whatever the environment says."""
    for name in list(os.environ):
        if name.upper().startswith(ENVIRONMENT_PREFIXES):
            del os.environ[name]
    return ConsumerSettings()


def main() -> None:
    """Rewrite docs/asyncapi.json."""
    DOCUMENT.write_text(render(asyncapi_document(default_settings())))
    print(f"wrote {DOCUMENT}")


if __name__ == "__main__":
    main()
