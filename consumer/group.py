"""The group member's side of Kafka, as the checkpoints see it: assignment, seeks, committed offsets.

FastStream creates the aiokafka consumer when the subscriber starts, so it is looked up at each
call. One workaround of aiokafka lives here: after an eviction (max_poll_interval) aiokafka keeps
the old assignment until it rejoins, with no public flag, but resets the coordinator's generation;
`owned()` reads that generation (`consumer._coordinator.generation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiokafka import TopicPartition

log = structlog.get_logger("consumer")

EXIT_CANNOT_REWIND = 70  # exit status when a rewind failed: committing on could skip records


class GroupMember:
    """The subscriber's aiokafka consumer, found at call time."""

    def __init__(self, consumer: Callable[[], Any], exit_process: Callable[[int], None]) -> None:
        self._consumer = consumer
        self._exit = exit_process

    def assignment(self) -> set[TopicPartition]:
        """Partitions assigned now (none before the subscriber started)."""
        consumer = self._consumer()
        return set(consumer.assignment()) if consumer is not None else set()

    def owned(self, partitions: set[TopicPartition]) -> set[TopicPartition]:
        """Those of `partitions` this member still owns: assigned, and the member still in the group."""
        consumer = self._consumer()
        if consumer is None or getattr(consumer._coordinator, "generation", -1) < 0:
            return set()
        return partitions & set(consumer.assignment())

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of `tp`, fetched from the coordinator now (None: no commit)."""
        offset = await self._consumer().committed(tp)
        return None if offset is None else int(offset)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit explicit offsets (at-least-once)."""
        await self._consumer().commit(dict(offsets))

    def seek_or_die(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Seek the partitions still assigned back to `offsets`, so those records are fetched again.

        If that fails, the next commit could pass over records nobody handled: stop the process at
        once instead (non-zero exit; the restart resumes from the committed offsets, losing nothing).
        """
        try:
            consumer = self._consumer()
            assigned = consumer.assignment()
            for tp, offset in offsets.items():
                if tp in assigned:
                    consumer.seek(tp, offset)
        except Exception:
            log.critical("rewind_failed", hint="exiting so that no record is skipped", exc_info=True)
            self._exit(EXIT_CANNOT_REWIND)
