"""`python -m consumer` (also `exam-events consumer`): run the results consumer until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from common.settings import EXIT_INVALID_SETTINGS, InvalidSettings, load_settings
from consumer.app import create_app
from consumer.settings import ConsumerSettings


def main() -> None:
    """Serve the app the environment describes (uvicorn handles the signals); exit 2 on bad settings."""
    settings = load_settings(ConsumerSettings, "consumer")
    try:
        app = create_app(settings)
    except InvalidSettings as exc:  # OTEL_* (tracing) is read while the app is built
        print(f"consumer: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTINGS) from None
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
