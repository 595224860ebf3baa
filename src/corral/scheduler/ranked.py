"""The feasible nodes of one pool for one kind of request, best first: what lets a batch of
identical requests (one service's instances, Borg's equivalence classes) be placed in
O(log N) each instead of scoring all N nodes for every one of them.

A `Ranked` is built once per batch and *class*: requests with the same `Need`, the same
pool (driver and constraints) and the same placement rules (and, with rules, the same
service). It keeps one heap per spread value (one heap, value "", without spread) of
`(-binpack score, node index, node version)`. The best node is the heap top with the
fewest instances of the service on its value (spread), then the highest score, then the
first name (the index is the node's position in name order): exactly the node an
exhaustive scan over the pool would pick (`rank.py`).

Why the heaps stay exact while the batch places instances:

- within one batch a node's free resources only shrink, so a node that cannot fit the
  class's need now never will: it is dropped for good;
- a placement (of this class or any other) changes one node: `NodeBudget.take` bumps its
  `version`, and the batch appends its index to a shared log. Before answering, a class
  pushes a fresh entry for every node in the log since it last looked; entries whose
  version is not the node's current one are discarded when they reach the top. So every
  feasible node has exactly one current entry, with its current score;
- distinct_hosts only ever excludes more nodes during a batch, so an excluded node at the
  top is dropped for good too; spread counts are read live from `Colocation` per value.

Rejected: Nomad's and Sparrow's power-of-two-choices sampling. It is fast without any
index, but bin-packing over two random nodes packs far worse than the best node, and a
plan that depends on a random draw is harder to test and to explain; with the heaps the
exhaustive answer costs O(log N) per placement anyway.

Neighbours: `schedule.py` builds one per class and commits placements; `rank.py` defines
the score; `feasibility.py` says whether a node fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from heapq import heapify, heappop, heappush

from corral.scheduler import rank
from corral.scheduler.feasibility import Need, resource_reject
from corral.scheduler.snapshot import NodeBudget

__all__ = ["Ranked"]

_Entry = tuple[float, int, int]  # -score, budget index, budget version when scored
_NO_COUNTS: Mapping[str, int] = {}


class Ranked:
    """Scratch state private to one `schedule` call (see the module docstring)."""

    __slots__ = ("_heaps", "_need", "_seen", "_value_of")

    def __init__(self, *, eligible: Sequence[NodeBudget], need: Need,
                 values: Sequence[str] | None, log_length: int) -> None:
        self._need = need
        self._heaps: dict[str, list[_Entry]] = {}
        # budget index -> its spread value ("" without spread), for every node of the pool
        self._value_of: dict[int, str] = {}
        score = rank.score
        for position, budget in enumerate(eligible):
            value = values[position] if values is not None else ""
            self._value_of[budget.index] = value
            if resource_reject(budget, need) is None:
                self._heaps.setdefault(value, []).append(
                    (-score(budget, need), budget.index, budget.version))
        for heap in self._heaps.values():
            heapify(heap)
        self._seen = log_length

    def best(self, budgets: Sequence[NodeBudget], log: Sequence[int],
             on_node: Mapping[str, int] | None,
             per_value: Mapping[str, int] = _NO_COUNTS) -> NodeBudget | None:
        """The best node for one more request of this class, or None if none fits.
        `log`: indexes of the nodes placed on so far in this batch, in order; `on_node`:
        for distinct_hosts, the nodes that already run the service; `per_value`: for
        spread, the service's instances per value."""
        if self._seen < len(log):
            self._refresh(budgets, log)
        best: tuple[int, float, int] | None = None
        for value, heap in self._heaps.items():
            entry = _top(heap, budgets, on_node)
            if entry is None:
                continue
            key = (per_value.get(value, 0), entry[0], entry[1])
            if best is None or key < best:
                best = key
        return budgets[best[2]] if best is not None else None

    def _refresh(self, budgets: Sequence[NodeBudget], log: Sequence[int]) -> None:
        need, score = self._need, rank.score
        for index in set(log[self._seen:]):
            value = self._value_of.get(index)
            if value is None:  # not in this class's pool
                continue
            budget = budgets[index]
            if resource_reject(budget, need) is None:
                heappush(self._heaps.setdefault(value, []),
                         (-score(budget, need), index, budget.version))
        self._seen = len(log)


def _top(heap: list[_Entry], budgets: Sequence[NodeBudget],
         on_node: Mapping[str, int] | None) -> _Entry | None:
    """The heap's best current entry, dropping stale and excluded ones on the way."""
    while heap:
        entry = heap[0]
        budget = budgets[entry[1]]
        if entry[2] != budget.version or (on_node is not None and budget.name in on_node):
            heappop(heap)
            continue
        return entry
    return None
