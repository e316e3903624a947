"""Loading a process's settings: a mistake ends the process with one line, not a traceback.

    ingress: invalid settings: INGRESS_PORT: Input should be less than or equal to 65535

Every command (`exam-events ...`, `python -m ingress`, `python -m consumer`) loads its settings
through `load_settings`, so the same mistake reads the same everywhere. Values are never echoed:
they may be passwords or signing secrets.
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

EXIT_INVALID_SETTINGS = 2

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class InvalidSettings(Exception):
    """The environment does not describe a valid configuration; the message is one line."""


def describe(exc: ValidationError, env_prefix: str = "") -> str:
    """Each problem as `VARIABLE: message`, joined by `; ` (no input values)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = "_".join(str(part) for part in error["loc"]).upper()
        name = f"{env_prefix}{location}" if location else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "; ".join(problems)


def settings_or_error(cls: type[SettingsT]) -> SettingsT:
    """`cls()` from the environment, or `InvalidSettings` with a one-line reason."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix") or "")
        raise InvalidSettings(describe(exc, prefix)) from None


def load_settings(cls: type[SettingsT], service: str) -> SettingsT:
    """`cls()` from the environment; on a mistake, print `service: invalid settings: ...` and exit 2."""
    try:
        return settings_or_error(cls)
    except InvalidSettings as exc:
        print(f"{service}: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTINGS) from None
