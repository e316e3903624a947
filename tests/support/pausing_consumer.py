"""`python -m tests.support.pausing_consumer`: the real consumer, which stops itself mid-transaction.

Right before its `PAUSE_AT_COMMIT`-th transaction commit (its records produced, its offsets added),
it writes its pid to the file `PAUSE_MARKER` and sends itself SIGSTOP: a member stalled past its
session timeout (a zombie once continued with SIGCONT), or one to SIGKILL mid-transaction.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from aiokafka import AIOKafkaProducer

from consumer.__main__ import main

_real_commit = AIOKafkaProducer.commit_transaction
_commits = 0


async def _pausing_commit(self: Any) -> None:
    global _commits
    _commits += 1
    if _commits == int(os.environ.get("PAUSE_AT_COMMIT", "1")):
        with open(os.environ["PAUSE_MARKER"], "w") as marker:  # noqa: ASYNC230  # stopping anyway
            marker.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
    await _real_commit(self)


AIOKafkaProducer.commit_transaction = _pausing_commit

if __name__ == "__main__":
    main()
