"""The collector's tuning for large heaps still frees cyclic garbage, without an
explicit `gc.collect()`. Run in a child process: the thresholds are process-wide."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, weakref
from corral.gc_tuning import LARGE_HEAP_THRESHOLDS, tune_for_large_heaps
tune_for_large_heaps()
assert gc.get_threshold() == LARGE_HEAP_THRESHOLDS, gc.get_threshold()

class Node:
    pass

alive = []
for i in range(300_000):
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    if i % 1000 == 0:
        alive.append(weakref.ref(a))
    del a, b
kept = sum(1 for ref in alive if ref() is not None)
# the young collections (every 50,000 allocations) found all but the newest cycles
assert kept <= len(alive) // 4, (kept, len(alive))
print(kept, len(alive))
"""


def test_cyclic_garbage_is_still_collected_with_the_large_heap_thresholds() -> None:
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    kept, made = (int(x) for x in result.stdout.split())
    assert made == 300 and kept < made
