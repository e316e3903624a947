"""The consumer's lag on /metrics, refreshed in the background (never per scrape).

Every `interval` seconds, for each raw partition assigned to this process: the group's committed
offset (from the coordinator) against the partition's log end (the last stable offset, as the
consumer reads with read_committed), computed as `exam-events lag` does (`common.lag`). Gauges:
`exam_events_consumer_partition_lag{topic,partition}` and `exam_events_consumer_group_lag` (their
sum: this process's share of the group's lag; sum it over instances for the group's). A partition
revoked from this process loses its series, so a scrape never shows another member's lag twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import TopicPartition
from prometheus_client import Gauge

from common.lag import partition_lag

log = structlog.get_logger("consumer.lag")

DEFAULT_INTERVAL_SECONDS = 5.0


class LagMonitor:
    """Refreshes the lag gauges from the subscriber's own aiokafka consumer."""

    def __init__(
        self,
        consumer: Callable[[], Any],
        partition_gauge: Gauge,
        total_gauge: Gauge,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self._consumer = consumer
        self._partition = partition_gauge
        self._total = total_gauge
        self._interval = interval_seconds
        self._shown: set[TopicPartition] = set()
        self._task: asyncio.Task[None] | None = None
        self.refreshed = 0  # completed refreshes (tests wait on it)

    async def refresh(self) -> None:
        """Read committed and end offsets of the assigned partitions once and set the gauges."""
        consumer = self._consumer()
        assigned = sorted(consumer.assignment()) if consumer is not None else []
        lags: dict[TopicPartition, int] = {}
        if assigned:
            ends = await consumer.end_offsets(assigned)
            committed = {tp: await consumer.committed(tp) for tp in assigned}
            without = [tp for tp in assigned if committed[tp] is None]
            earliest = await consumer.beginning_offsets(without) if without else {}
            for tp in assigned:
                lags[tp] = partition_lag(committed[tp], ends[tp], earliest.get(tp, 0))
        for tp in self._shown - lags.keys():
            with contextlib.suppress(KeyError):
                self._partition.remove(tp.topic, str(tp.partition))
        for tp, lag in lags.items():
            self._partition.labels(tp.topic, str(tp.partition)).set(lag)
        self._shown = set(lags)
        self._total.set(sum(lags.values()))
        self.refreshed += 1

    async def start(self) -> None:
        """Refresh every interval until `stop()` (a start-up hook: returns at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="consumer-lag")

    async def stop(self) -> None:
        """End the background refreshes."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                # Kafka away or a rebalance under way: the gauges keep their last values until the
                # next refresh works; the library's own errors say more.
                log.debug("lag_refresh_failed", error=type(exc).__name__)
            await asyncio.sleep(self._interval)
