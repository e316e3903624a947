"""Exactly-once: one transactional producer per assigned raw partition, and where each continues.

aiokafka has no KIP-447 (its TxnOffsetCommit carries no group generation), so the broker cannot
refuse a late commit from a member that lost its partitions. The fence is the transactional id:
the producer for raw partition p has the stable id `{group}.{raw topic}.{p}`
(`ConsumerSettings.transactional_id`), and whoever starts it next (`InitProducerId`) bumps its
epoch, which makes the broker refuse every later request of the previous one (ProducerFenced) and
aborts, or completes, its open transaction first.

Acquiring a partition therefore means, in this order:
1. start the partition's producer: this fences every earlier owner (zombies included);
2. read the group's committed offset of the partition: after step 1 nobody else can move it, so
   it is where the partition truly continues (`next_offset`);
3. bring the partition's dedup store up to date from its changelog (read_committed).
A partition is acquired on assignment, and again after any failure of its transaction (a fenced or
timed-out producer, a broker error, an ambiguous commit): the state is then re-read rather than
guessed. Records before `next_offset` were committed already, by us or by an earlier owner, and are
skipped; a batch starting after it is rewound (see `consumer.checkpoint`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from common.producer import ManagedProducer, reliable_producer_kwargs
from consumer.dedup import ENTRY_BYTES, DedupStore, forget_oldest, restore
from consumer.group import GroupMember
from consumer.metrics import ConsumerMetrics
from consumer.settings import ConsumerSettings

log = structlog.get_logger("consumer")

Restore = Callable[..., Awaitable[dict[int, int]]]


@dataclass(eq=False)
class PartitionState:
    """One raw partition in exactly-once mode: its producer, its dedup store, where it continues."""

    tp: TopicPartition
    producer: ManagedProducer
    store: DedupStore
    acquired: bool = False
    next_offset: int | None = None  # None: no committed offset; continue wherever the fetch starts
    rewound_to: int | None = None  # the offset of the last gap rewind (a gap seen twice is real)
    failures: int = 0  # failed transactions or acquisitions in a row
    # After the broker refused records for good: records up to this offset are handled at most
    # `isolate_size` per transaction (halved at each refusal), to find the webhook it refused.
    isolate_through: int | None = None
    isolate_size: int = 1
    # Offset -> why the broker refused its outputs: planned again as a dead letter (OutputRejected).
    rejected: dict[tuple[int, int], str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PartitionTransactions:
    """The partitions this member owns in exactly-once mode, each with its own transactional producer."""

    def __init__(
        self,
        settings: ConsumerSettings,
        member: GroupMember,
        metrics: ConsumerMetrics,
        *,
        factory: Callable[..., Any] = AIOKafkaProducer,
        restore_stores: Restore = restore,
    ) -> None:
        self._settings = settings
        self._member = member
        self._metrics = metrics
        self._factory = factory
        self._restore = restore_stores
        self._states: dict[TopicPartition, PartitionState] = {}
        self._timeout = settings.producer_request_timeout_ms / 1000

    def entries(self) -> int:
        """Ids held by every dedup store of this member."""
        return sum(len(state.store) for state in self._states.values())

    def bound_stores(self) -> None:
        """Keep the dedup stores within CONSUMER_DEDUP_MAX_BYTES together: at the bound the oldest ids
        are forgotten first (a re-post of one of them would be published again); updates the metrics."""
        max_entries = self._settings.dedup_max_bytes // ENTRY_BYTES
        forgotten = forget_oldest((state.store for state in self._states.values()), max_entries)
        entries = self.entries()
        if forgotten:
            self._metrics.dedup_forgotten_early.inc(forgotten)
            log.warning(
                "dedup_stores_at_their_bound",
                hint="the oldest ids were forgotten before the window ended: re-posts of those webhooks "
                "would be published again; raise CONSUMER_DEDUP_MAX_BYTES or shorten the window",
                forgotten=forgotten,
                entries=entries,
                max_bytes=self._settings.dedup_max_bytes,
            )
        self._metrics.dedup_entries.set(entries)
        self._metrics.dedup_bytes.set(entries * ENTRY_BYTES)

    def failures(self, tp: TopicPartition) -> int:
        """Failed transactions or acquisitions of the partition in a row."""
        state = self._states.get(tp)
        return state.failures if state is not None else 0

    def held(self) -> set[TopicPartition]:
        """Partitions that have a state (assigned now, or until the next assignment)."""
        return set(self._states)

    def _state(self, tp: TopicPartition) -> PartitionState:
        state = self._states.get(tp)
        if state is None:
            settings = self._settings
            kwargs = reliable_producer_kwargs(
                settings.kafka,
                transactional_id=settings.transactional_id(tp.partition),
                transaction_timeout_ms=settings.transaction_timeout_ms,
                linger_ms=settings.producer_linger_ms,
                max_batch_size=settings.producer_max_batch_bytes,
                request_timeout_ms=settings.producer_request_timeout_ms,
            )
            state = self._states[tp] = PartitionState(
                tp,
                ManagedProducer(
                    kwargs,
                    close_timeout_seconds=self._timeout,
                    start_timeout_seconds=self._timeout,
                    factory=self._factory,
                ),
                DedupStore(settings.dedup_window_seconds),
            )
        return state

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: acquire every assigned partition (concurrently); forget the others."""
        for tp in set(self._states) - assigned:
            state = self._states.pop(tp)
            await state.producer.stop()
        started = time.perf_counter()
        await asyncio.gather(*(self._acquire_locked(self._state(tp)) for tp in assigned))
        log.info(
            "partitions_acquired",
            partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned),
            seconds=round(time.perf_counter() - started, 3),
            dedup_entries=self.entries(),
        )

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Before a rebalance (in-flight transactions have ended): close the producers, keep the stores.

        The next owner fences these transactional ids anyway; closing them now frees their
        connections. A store is kept until the next assignment: if the partition comes back, only
        what was committed meanwhile is read from the changelog.
        """
        states = [self._states[tp] for tp in revoked if tp in self._states]
        for state in states:
            state.acquired = False
        await asyncio.gather(*(state.producer.stop() for state in states))

    async def ready(self, tp: TopicPartition) -> PartitionState | None:
        """The partition's state, acquired now if needed; None when this member does not own it or
        acquiring failed (the caller rewinds and retries)."""
        if not self._member.owned({tp}):
            return None
        state = self._state(tp)
        if not state.acquired:
            await self._acquire_locked(state)
        return state if state.acquired else None

    def lost(self, state: PartitionState, reason: str) -> None:
        """The partition's producer cannot commit (fenced, failed, ambiguous): drop it, acquire again."""
        state.acquired = False
        state.producer.discard(reason)

    async def _acquire_locked(self, state: PartitionState) -> None:
        async with state.lock:
            if not state.acquired:
                await self._acquire(state)

    async def _acquire(self, state: PartitionState) -> None:
        tp = state.tp
        started = time.perf_counter()
        try:
            await state.producer.stop()  # a previous producer of ours: its epoch is fenced below anyway
            async with asyncio.timeout(self._timeout):
                await state.producer.start()  # InitProducerId: fences every earlier owner of tp
                state.next_offset = await self._member.committed(tp)
            restore_started = time.perf_counter()
            read = await self._restore(
                self._settings.kafka,
                self._settings.dedup_topic,
                {tp.partition: state.store},
                timeout_seconds=max(60.0, self._timeout),
                on_loaded=self.bound_stores,  # the bound holds while restoring, not only after
            )
        except Exception as exc:  # the broker away, a timeout: nothing is acquired, the batch path retries
            state.failures += 1
            self._metrics.acquire_failures.inc()
            log.warning(
                "partition_acquire_failed",
                hint="its records are read again later",
                partition=f"{tp.topic}/{tp.partition}",
                error=repr(exc)[:500],
                failures=state.failures,
            )
            await state.producer.stop()
            return
        restore_seconds = time.perf_counter() - restore_started
        self._metrics.dedup_restore_seconds.observe(restore_seconds)
        state.acquired = True
        state.rewound_to = None
        self.bound_stores()
        log.info(
            "partition_acquired",
            partition=f"{tp.topic}/{tp.partition}",
            transactional_id=self._settings.transactional_id(tp.partition),
            next_offset=state.next_offset,
            dedup_entries=len(state.store),
            dedup_read=read.get(tp.partition, 0),
            dedup_restore_seconds=round(restore_seconds, 3),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def ping(self, timeout: float) -> bool:
        """True when an acquired partition's producer gets cluster metadata within `timeout` s."""
        for state in self._states.values():
            if state.acquired and state.producer.usable():
                try:
                    async with asyncio.timeout(timeout):
                        await state.producer.current.client.fetch_all_metadata()
                except Exception:  # any failure means "not reachable" to a readiness probe
                    return False
                return True
        return False

    async def stop(self) -> None:
        """Close every producer (bounded)."""
        states, self._states = list(self._states.values()), {}
        await asyncio.gather(*(state.producer.stop() for state in states))
