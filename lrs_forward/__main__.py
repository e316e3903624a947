"""`python -m lrs_forward` (also `exam-events lrs-forward`): forward xAPI statements until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from common.logging import configure_logging
from common.settings import load_settings
from lrs_forward.app import ForwarderApp, StartFailed
from lrs_forward.settings import LrsForwardSettings

PROG = "exam-events lrs-forward"


def main() -> int:
    """Run the forwarder the environment describes: 0 after a graceful stop, 1 when it cannot start,
    2 on invalid settings."""
    settings = load_settings(LrsForwardSettings, PROG)
    configure_logging("lrs-forward", settings.log_level)
    try:
        asyncio.run(_run(settings))
    except StartFailed as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run(settings: LrsForwardSettings) -> None:
    # aiokafka's clients bind to the running loop when they are built.
    await ForwarderApp(settings).run(handle_signals=True)


if __name__ == "__main__":
    sys.exit(main())
