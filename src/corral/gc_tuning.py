"""The cyclic garbage collector's thresholds for processes that keep millions of objects
alive: the server (its index holds every instance and node decoded) and the hollow nodes.

CPython's defaults (700, 10, 10) start a young collection every 700 net allocations and
let a full collection (one that walks every tracked object) follow whenever the objects
that survived young ones grew by a quarter. A server whose heap grows to millions of
records then spends its time walking them: measured with `gc.callbacks` at 100,000
instances on 2,000 hollow nodes, 51 full collections took 19.8 s of a 56 s run, the
server's busiest single cost (docs/benchmarks.md, Scale, third round).

`tune_for_large_heaps` makes young collections start every 50,000 allocations and lets a
full one run after at least 100 middle-generation ones (about 10^8 allocations). Almost
all of the server's garbage has no cycles and is freed by reference counting the moment
it is dropped; what does form cycles (exceptions with their tracebacks, mostly) is young
and is still found by the young collections. Full collections still run, only rarely.
Instagram's servers tune the collector for the same reason.

Neighbours: `cli/server.py`, `cli/sim.py` and `testing/hollow.py` call it once, at start.
"""

from __future__ import annotations

import gc

__all__ = ["LARGE_HEAP_THRESHOLDS", "tune_for_large_heaps"]

LARGE_HEAP_THRESHOLDS = (50_000, 20, 100)


def tune_for_large_heaps() -> None:
    gc.set_threshold(*LARGE_HEAP_THRESHOLDS)
