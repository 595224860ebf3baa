"""How good a feasible node is for a request: higher is better.

Today the only component is bin-packing, Nomad's default: prefer the node that would be the
most utilized after the placement, so that load fills few nodes and whole nodes stay free for
large instances (and can be drained or scaled away). Spread and affinities will be further
components of `score`, each normalised to [0, 1] and averaged, as Nomad combines its scorers;
they will need more context than one budget (counts per label value of the same service), so
`score` is the one place callers go through and its signature may grow.

Rejected: Nomad's `20 - (10^free_cpu + 10^free_mem)` fit score, which also rewards nodes
whose cpu and memory fill evenly. The mean is simpler to reason about and explain, and good
enough until there is a workload that shows the difference.

Ties are broken by node name in `schedule.py` (budgets come sorted by name and only a
strictly better score replaces the best so far), so equal nodes give the same plan every run.

Neighbours: `feasibility.py` decides which nodes are scored; `schedule.py` picks the best.
"""

from __future__ import annotations

from corral.scheduler.feasibility import Need
from corral.scheduler.snapshot import NodeBudget

__all__ = ["binpack", "score"]


def binpack(budget: NodeBudget, need: Need) -> float:
    """Mean of the cpu and memory fractions the node would have allocated after placing
    `need`: in [0, 1] for a node that fits it."""
    # A node reporting zero capacity divides by 1 rather than raising ZeroDivisionError.
    # Conditionals rather than max(): this runs for every eligible node of every request.
    capacity_cpu, capacity_memory = budget.capacity_cpu, budget.capacity_memory
    cpu = (capacity_cpu - budget.free_cpu + need.cpu) / (capacity_cpu if capacity_cpu > 0 else 1)
    memory = ((capacity_memory - budget.free_memory + need.memory)
              / (capacity_memory if capacity_memory > 0 else 1))
    return (cpu + memory) / 2


# The entry point `schedule.py` calls; an alias while bin-packing is the only component.
score = binpack
