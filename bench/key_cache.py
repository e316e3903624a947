#!/usr/bin/env python3
"""The partitioner's key-hash cache (`consumer.sender.KeyPartitioner`): memory per learner id.

    .venv/bin/python bench/key_cache.py -n 1000000 --key-bytes 12

Fills an unbounded cache with N distinct keys of `--key-bytes` bytes (learner ids such as
`usr_8f2c1a7e` are 12), measures the allocated bytes with tracemalloc, and prints them per entry,
per million entries, and next to what the cache counts against its bound (key length plus
`KEY_ENTRY_OVERHEAD_BYTES`), so the bound can be read as memory. No broker is needed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consumer.sender import KEY_ENTRY_OVERHEAD_BYTES, KeyPartitioner  # noqa: E402


def measure(count: int, key_bytes: int) -> tuple[int, int]:
    """(allocated bytes, bytes the cache counts) for `count` keys of `key_bytes` bytes.

    Each key is made inside the measured window and kept only by the cache, as a record's key is.
    """
    partitions = list(range(12))
    partitioner = KeyPartitioner(max_bytes=1 << 62)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(count):
        partitioner(f"{n:0{key_bytes}d}".encode()[-key_bytes:], partitions, partitions)
    allocated = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return allocated, partitioner.cached_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--entries", type=int, default=1_000_000, help="distinct keys cached")
    parser.add_argument("--key-bytes", type=int, default=12, help="bytes per key (a learner id)")
    args = parser.parse_args()
    allocated, counted = measure(args.entries, args.key_bytes)
    per_entry = allocated / args.entries
    print(f"entries: {args.entries:,}, key bytes: {args.key_bytes}")
    print(f"allocated: {per_entry:.0f} bytes per entry, {per_entry * 1e6 / 2**20:.0f} MiB per million")
    print(
        f"counted against the bound: {counted / args.entries:.0f} bytes per entry "
        f"(key + {KEY_ENTRY_OVERHEAD_BYTES}); counted / allocated = {counted / allocated:.2f}"
    )


if __name__ == "__main__":
    main()
