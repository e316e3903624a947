"""`python -m consumer`: run the results consumer until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from consumer.app import create_app


def main() -> None:
    """Build the app from the environment and serve it (uvicorn handles the signals)."""
    asyncio.run(create_app().run())


if __name__ == "__main__":
    main()
