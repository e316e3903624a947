"""`python -m consumer` (also `exam-events consumer`): run the results consumer until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from common.settings import load_settings
from consumer.app import create_app
from consumer.settings import ConsumerSettings


def main() -> None:
    """Serve the app the environment describes (uvicorn handles the signals); exit 2 on bad settings."""
    settings = load_settings(ConsumerSettings, "consumer")
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
