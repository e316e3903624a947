"""Pieces the benchmarks share: other checkouts to compare with, and reading a raw HTTP answer."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_checkouts(parser: argparse.ArgumentParser, items: list[str], package: str) -> dict[str, Path]:
    """This checkout as ".", then each `--checkout LABEL=DIR` (DIR a checkout with `package`)."""
    checkouts = {".": ROOT}
    for item in items:
        label, _, directory = item.partition("=")
        if not label or label in checkouts or not Path(directory, package, "__main__.py").is_file():
            parser.error(f"--checkout {item!r}: expected a new LABEL=DIR, DIR a checkout of this project")
        checkouts[label] = Path(directory).resolve()
    return checkouts


async def read_answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 answer (head and Content-Length body) off a keep-alive connection; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])
