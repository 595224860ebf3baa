"""`plan = schedule(snapshot, requests)`: decide a node and ports for each request.

No I/O, no clock, no randomness: the same snapshot and requests give the same plan, in any
process. The plan is only a proposal; the server's plan applier re-checks it against the
store at the current revision before committing, as Nomad's `plan_apply` does, because the
cluster may have changed since the snapshot was read.

Requests are placed in the order given. Each decision is committed into the per-node budgets
before the next request is considered, so a batch never overcommits a node, and a request is
failed only if no node can take it given the earlier decisions of the same batch.

The node and driver checks (`feasibility.node_reject`) cannot change during one call, so they
run once per distinct requested driver; each request then scans only the eligible nodes.

Neighbours: `snapshot.py` (input and budgets), `feasibility.py` (which nodes, why not),
`rank.py` (which of them), `ports.py` (which ports).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from corral.scheduler import rank
from corral.scheduler.feasibility import (
    Need,
    PlacementRequest,
    explain,
    node_reject,
    resource_reject,
)
from corral.scheduler.ports import pick_ports
from corral.scheduler.snapshot import NodeBudget, Snapshot, build_budgets

__all__ = ["Failure", "Placement", "Plan", "schedule"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    instance_id: str
    node: str
    address: str  # the node's IP, where the instance's ports are reached
    ports: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    instance_id: str
    reason: str  # one sentence for the user, e.g. "no node can fit 2 cpu: 3 nodes exhausted cpu"
    dimensions: dict[str, int]  # nodes rejected per dimension, most first


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    placements: tuple[Placement, ...] = ()
    failures: tuple[Failure, ...] = ()


@dataclass(slots=True)
class _Pool:
    """The ready nodes that can run one driver, and how many nodes were ruled out and why."""

    eligible: list[NodeBudget]
    rejected: Counter[str] = field(default_factory=Counter)


def _pool(budgets: list[NodeBudget], driver: str | None) -> _Pool:
    pool = _Pool(eligible=[])
    for budget in budgets:
        dimension = node_reject(budget, driver)
        if dimension is None:
            pool.eligible.append(budget)
        else:
            pool.rejected[dimension] += 1
    return pool


def _best(pool: _Pool, need: Need) -> NodeBudget | None:
    best: NodeBudget | None = None
    best_score = 0.0
    for budget in pool.eligible:
        if resource_reject(budget, need) is not None:
            continue
        score = rank.score(budget, need)
        # Strictly greater: budgets are sorted by name, so equal scores keep the first name.
        if best is None or score > best_score:
            best, best_score = budget, score
    return best


def _failure(request: PlacementRequest, need: Need, pool: _Pool) -> Failure:
    counts = Counter(pool.rejected)
    for budget in pool.eligible:
        dimension = resource_reject(budget, need)
        if dimension is not None:
            counts[dimension] += 1
    dimensions = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return Failure(instance_id=request.instance_id, reason=explain(need, dimensions),
                   dimensions=dimensions)


def schedule(snapshot: Snapshot, requests: Sequence[PlacementRequest]) -> Plan:
    """Place each request on the best feasible node, or say why none can take it.

    Every request ends up in exactly one of `plan.placements` or `plan.failures`, both in
    request order. A second request for an instance id already in the batch is failed rather
    than placed twice.
    """
    budgets = build_budgets(snapshot)
    pools: dict[str | None, _Pool] = {}
    seen: set[str] = set()
    placements: list[Placement] = []
    failures: list[Failure] = []
    for request in requests:
        if request.instance_id in seen:
            failures.append(Failure(instance_id=request.instance_id, dimensions={},
                                    reason="instance requested twice in one batch"))
            continue
        seen.add(request.instance_id)
        need = Need.of(request)
        if need.invalid:
            failures.append(Failure(instance_id=request.instance_id, reason=need.invalid,
                                    dimensions={}))
            continue
        pool = pools.get(need.driver)
        if pool is None:
            pool = pools[need.driver] = _pool(budgets, need.driver)
        best = _best(pool, need)
        if best is None:
            failures.append(_failure(request, need, pool))
            continue
        ports = pick_ports(best, request, need)
        best.take(cpu=need.cpu, memory=need.memory, ports=ports.values())
        placements.append(Placement(instance_id=request.instance_id, node=best.name,
                                    address=best.node.address, ports=ports))
    return Plan(placements=tuple(placements), failures=tuple(failures))
