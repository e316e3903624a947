"""Consumer lag, computed one way by `exam-events lag` and by the consumer's /metrics.

Lag of a partition = its log-end offset (the last stable offset, as the group reads with
read_committed) minus the group's committed offset. A partition the group never committed counts
from its earliest offset: everything still in it is waiting (as KEDA's `offsetResetPolicy:
earliest`, and as the consumer itself starts there).
"""

from __future__ import annotations


def partition_lag(committed: int | None, end: int, earliest: int) -> int:
    """Records of the partition the group has not committed yet (never negative)."""
    position = committed if committed is not None and committed >= 0 else earliest
    return max(0, end - max(position, earliest))
