"""Exactly-once: the ce_ids published from one raw partition within the dedup window.

The platform posts a webhook again when it did not get our answer; both copies land on the raw
topic (same key, so the same partition) and give identical `ce_id`s. The store remembers the ids a
partition published, so the second copy publishes nothing.

It is backed by a changelog topic (`CONSUMER_DEDUP_TOPIC`, compacted, partition p for raw
partition p): each new id is written there in the same transaction as the event itself, and a
partition's store is rebuilt from its changelog partition when the partition is assigned. What the
store holds is therefore exactly what was committed, whoever committed it.

Memory: one dict entry per id, the 16 bytes of the UUID as the key and a shared int (the minute it
was published) as the value: about 100 bytes per entry (`bench/dedup.py` measures it). The stores
of one member together are bounded by CONSUMER_DEDUP_MAX_BYTES (`consumer.transactions`): at the
bound the oldest ids of every store are forgotten first, before the window ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from common.kafka import KafkaConnectionSettings

log = structlog.get_logger("consumer.dedup")

# What one id costs in a store, rounded up from what `bench/dedup.py` measures (docs/consumer.md).
ENTRY_BYTES = 96


def id_bytes(ce_id: str) -> bytes:
    """The 16 bytes of a `ce_id` (a UUID); any other string is kept as its UTF-8 bytes."""
    if len(ce_id) == 36 and ce_id[8] == ce_id[13] == ce_id[18] == ce_id[23] == "-":
        try:  # the canonical form, which all of ours have: five times cheaper than uuid.UUID
            packed = bytes.fromhex(ce_id.replace("-", ""))
        except ValueError:
            packed = b""
        if len(packed) == 16:
            return packed
    try:
        return uuid.UUID(ce_id).bytes
    except ValueError:
        return ce_id.encode()


class DedupStore:
    """The ids one raw partition published within the window, and how far its changelog was read."""

    __slots__ = ("_minutes", "_oldest", "_seen", "_window_minutes", "changelog_position")

    def __init__(self, window_seconds: float) -> None:
        self._window_minutes = max(1, int(window_seconds // 60))
        self._seen: dict[bytes, int] = {}
        self._minutes: dict[int, int] = {}  # interned minute values, so entries share int objects
        self._oldest: int | None = None
        # The changelog offset up to which this store was restored (read_committed); -1: not restored.
        self.changelog_position = -1

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def add(self, keys: Iterable[bytes], published_ms: int) -> None:
        """Remember ids published at `published_ms` (milliseconds since the epoch)."""
        minute = self._minute(published_ms // 60_000)
        seen = self._seen
        for key in keys:
            seen[key] = minute
        if self._oldest is None or minute < self._oldest:
            self._oldest = minute

    def expire(self, now_ms: int) -> int:
        """Forget ids published before the window; returns how many. Sweeps at most once per 1% of it."""
        cutoff = now_ms // 60_000 - self._window_minutes
        slack = max(1, self._window_minutes // 100)
        if self._oldest is None or self._oldest >= cutoff - slack:
            return 0
        return self.forget_before(cutoff)

    def forget_before(self, minute: int) -> int:
        """Forget ids published before `minute` (minutes since the epoch); returns how many."""
        if self._oldest is None or self._oldest >= minute:
            return 0
        before = len(self._seen)
        self._seen = {key: published for key, published in self._seen.items() if published >= minute}
        self._minutes = {m: m for m in self._minutes if m >= minute}
        self._oldest = min(self._minutes, default=None)
        return before - len(self._seen)

    def minute_counts(self) -> Counter[int]:
        """How many ids each minute holds (one pass over the store: only at its memory bound)."""
        return Counter(self._seen.values())

    def _minute(self, minute: int) -> int:
        return self._minutes.setdefault(minute, minute)


def forget_oldest(stores: Iterable[DedupStore], max_entries: int, keep: float = 0.9) -> int:
    """When the stores hold more than `max_entries` ids together, forget the oldest minutes of all of
    them until at most `keep` of the bound is left; returns how many ids were forgotten."""
    stores = list(stores)
    total = sum(len(store) for store in stores)
    if total <= max_entries:
        return 0
    counts: Counter[int] = Counter()
    for store in stores:
        counts.update(store.minute_counts())
    excess = total - int(max_entries * keep)
    cutoff = None
    for minute in sorted(counts):
        excess -= counts[minute]
        cutoff = minute + 1
        if excess <= 0:
            break
    if cutoff is None:
        return 0
    return sum(store.forget_before(cutoff) for store in stores)


async def restore(
    kafka: KafkaConnectionSettings,
    topic: str,
    stores: dict[int, DedupStore],
    *,
    now_ms: int | None = None,
    timeout_seconds: float = 60.0,
    on_loaded: Callable[[], None] | None = None,
) -> dict[int, int]:
    """Read each store's changelog partition from its position to the end (read_committed).

    Only committed transactions are read, so after this partition's producer fenced the previous
    owner, the store holds every id that was ever committed for it within the window. Returns
    partition -> entries read. Raises TimeoutError when the end is not reached in time.
    `on_loaded` runs after each fetched batch is loaded (the member's memory bound, while restoring).
    """
    if not stores:
        return {}
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_kwargs(),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    read = dict.fromkeys(stores, 0)
    try:
        async with asyncio.timeout(timeout_seconds):
            tps = {partition: TopicPartition(topic, partition) for partition in stores}
            consumer.assign(list(tps.values()))
            ends: dict[TopicPartition, int] = await consumer.end_offsets(list(tps.values()))
            pending = set()
            for partition, tp in tps.items():
                position = stores[partition].changelog_position
                if position >= 0:
                    consumer.seek(tp, position)
                else:
                    await consumer.seek_to_beginning(tp)
                if await consumer.position(tp) < ends[tp]:
                    pending.add(tp)
                else:
                    stores[partition].changelog_position = ends[tp]
            while pending:
                batch: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    *pending, timeout_ms=200, max_records=50_000
                )
                for tp, records in batch.items():
                    store = stores[tp.partition]
                    _load(store, records)
                    read[tp.partition] += len(records)
                if batch and on_loaded is not None:
                    on_loaded()
                for tp in list(pending):
                    position = await consumer.position(tp)
                    if position >= ends[tp]:
                        stores[tp.partition].changelog_position = position
                        pending.discard(tp)
    finally:
        await consumer.stop()
    for store in stores.values():
        store.expire(now_ms)
    return read


def _load(store: DedupStore, records: list[Any]) -> None:
    """Add changelog records (key: the ce_id, timestamp: when it was published) to the store."""
    by_minute: dict[int, list[bytes]] = {}
    for record in records:
        if record.key is None or record.value is None:  # a tombstone: nothing to remember
            continue
        by_minute.setdefault(record.timestamp // 60_000, []).append(id_bytes(record.key.decode()))
    for minute, keys in by_minute.items():
        store.add(keys, minute * 60_000)
