"""The garbage collector, tuned for a long-lived worker whose per-record objects die young.

Profiled under load (docs/performance.md), the collector took 10-13 % of each process's CPU, and
two thirds of that went to full collections of 50-70 ms each: they walked every module, class and
function object that start-up created, over and over, and freed next to nothing (the records,
futures and dicts of a batch die by reference counting). Two measures, both public `gc` API:

- `gc.freeze()` once start-up is done moves everything alive then into a permanent generation that
  collections skip, so a full collection walks only what was created since.
- A larger generation-0 threshold: a batch of a few hundred records allocates thousands of
  container objects, and the default (700) starts a young collection several times per batch,
  which finds nothing to free and promotes the in-flight objects to older generations, from where
  they trigger the full collections.

Cycles are still collected, only less often: at most 50,000 container objects (a few MB to about
20 MB of small objects) wait for a young collection, and cyclic garbage promoted while in use waits
for a full one. What a batch allocates dies by reference counting (measured: no unreachable objects
per record), so in the profiled runs no collection was needed at all. Objects alive at the freeze
(start-up's, and at most one batch already fetched) stay for the life of the process.
"""

from __future__ import annotations

import gc

# Allocations minus deallocations of container objects between two young collections. Python's
# default is 700; measured in bench/pipeline.py and bench/ingress.py (docs/performance.md).
GEN0_THRESHOLD = 50_000
# Young collections per generation-1 collection, and generation-1 per full one (Python's defaults).
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 10


def tune_after_startup() -> int:
    """Collect once, freeze what start-up created, and raise the young generation's threshold.

    Call when the process is up (modules imported, clients started), before the first record or
    request. Returns how many objects were frozen, for the start-up log line.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    return gc.get_freeze_count()
