"""How a subcommand fails: one line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations


class CommandFailed(Exception):
    """The command cannot do what was asked; the message is the one-line reason."""

    def __init__(self, reason: str, status: int = 1) -> None:
        super().__init__(reason)
        self.status = status
