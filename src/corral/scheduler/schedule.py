"""`plan = schedule(snapshot, requests)`: decide a node and ports for each request.

No I/O, no clock, no randomness: the same snapshot and requests give the same plan, in any
process. The plan is only a proposal; the server's plan applier re-checks it against the
store at the current revision before committing, as Nomad's `plan_apply` does, because the
cluster may have changed since the snapshot was read.

Requests are placed in the order given. Each decision is committed into the per-node budgets
before the next request is considered, so a batch never overcommits a node, and a request is
failed only if no node can take it given the earlier decisions of the same batch.

The node, driver and constraint checks (`feasibility.node_reject`, `constraint_reject`)
cannot change during one call, so they run once per distinct (driver, constraints) pair, and
each constraint is parsed once per distinct set; each request then scans only the eligible
nodes. `distinct_hosts` and `spread` depend on where the batch has put the service's other
instances, so they read counts that `Colocation` keeps current, never the instance list.
Requests without placement rules take the same path as before those rules existed.

Neighbours: `snapshot.py` (input and budgets), `feasibility.py` (which nodes, why not),
`colocation.py` (where each service's instances are), `rank.py` (which of the feasible
nodes), `ports.py` (which ports).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from corral.model.application import PlacementSpec
from corral.model.constraints import Constraint, parse_attribute
from corral.scheduler import rank
from corral.scheduler.colocation import Colocation, ServiceKey
from corral.scheduler.feasibility import (
    DISTINCT_HOSTS,
    Need,
    PlacementRequest,
    constraint_reject,
    explain,
    node_reject,
    parse_constraints,
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
    """The ready nodes that can run one driver and satisfy one set of constraints, and how
    many nodes were ruled out and why."""

    eligible: list[NodeBudget]
    names: list[str] = field(default_factory=list)  # of the eligible nodes, in the same order
    rejected: Counter[str] = field(default_factory=Counter)
    # Spread attribute -> each eligible node's value, in order: looked up once per pool.
    spread_values: dict[str, list[str]] = field(default_factory=dict)

    def values(self, colocation: Colocation, attribute: str) -> list[str]:
        values = self.spread_values.get(attribute)
        if values is None:
            by_name = colocation.values(attribute)
            values = self.spread_values[attribute] = [by_name[name] for name in self.names]
        return values


def _pool(budgets: list[NodeBudget], driver: str | None,
          constraints: tuple[Constraint, ...]) -> _Pool:
    pool = _Pool(eligible=[])
    for budget in budgets:
        dimension = node_reject(budget, driver) or constraint_reject(budget.node, constraints)
        if dimension is None:
            pool.eligible.append(budget)
            pool.names.append(budget.name)
        else:
            pool.rejected[dimension] += 1
    return pool


@dataclass(frozen=True, slots=True)
class _Rules:
    """A placement spec made ready to apply, once per distinct spec in the batch."""

    constraints: tuple[Constraint, ...] = ()
    invalid: str = ""  # why no node could ever take it: a constraint or spread that is no rule


def _rules(spec: PlacementSpec) -> _Rules:
    try:
        if spec.spread is not None:
            parse_attribute(spec.spread)
        return _Rules(constraints=parse_constraints(spec.constraints))
    except ValueError as exc:
        return _Rules(invalid=str(exc))


@dataclass(frozen=True, slots=True)
class _Occupancy:
    """What distinct_hosts and spread need for one request: where its service already is."""

    on_node: Mapping[str, int] | None  # distinct_hosts: node name -> instances of the service
    values: list[str] | None  # spread: each eligible node's value, in pool order
    per_value: Mapping[str, int]  # spread: value -> instances of the service


def _occupancy(colocation: Colocation, pool: _Pool, key: ServiceKey,
               spec: PlacementSpec) -> _Occupancy:
    spread = spec.spread
    return _Occupancy(
        on_node=colocation.on_node(key) if spec.distinct_hosts else None,
        values=pool.values(colocation, spread) if spread is not None else None,
        per_value=colocation.per_value(key, spread) if spread is not None else {},
    )


def _best(pool: _Pool, need: Need) -> NodeBudget | None:
    """The best eligible node for a request without distinct_hosts or spread. Kept apart from
    `_best_placed` so the common case pays nothing per node for rules it does not have."""
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


def _best_placed(pool: _Pool, need: Need, occupancy: _Occupancy) -> NodeBudget | None:
    """`_best` for a request with distinct_hosts, spread or both."""
    on_node, per_value = occupancy.on_node, occupancy.per_value
    values = occupancy.values if occupancy.values is not None else [""] * len(pool.names)
    best: NodeBudget | None = None
    best_score, best_count = 0.0, 0
    for budget, name, value in zip(pool.eligible, pool.names, values, strict=True):
        if on_node is not None and name in on_node:
            continue
        count = per_value.get(value, 0)
        # Spread outranks bin-packing (rank.py), so a node on a busier value than the best so
        # far can never win: skip it before the costlier resource check.
        if best is not None and count > best_count:
            continue
        if resource_reject(budget, need) is not None:
            continue
        score = rank.spread_score(budget, need, count)
        if best is None or score > best_score:  # ties: as in `_best`
            best, best_score, best_count = budget, score, count
    return best


def _failure(request: PlacementRequest, need: Need, pool: _Pool,
             occupancy: _Occupancy | None) -> Failure:
    counts = Counter(pool.rejected)
    on_node = occupancy.on_node if occupancy is not None else None
    for budget in pool.eligible:
        if on_node is not None and budget.name in on_node:
            counts[DISTINCT_HOSTS] += 1
            continue
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
    pools: dict[tuple[str | None, tuple[str, ...]], _Pool] = {}
    rules: dict[PlacementSpec, _Rules] = {}
    # Built only when some request has a rule that needs it: one pass over the instances.
    # Once built, every placement is recorded, with or without rules of its own, so a later
    # request of the same service counts it.
    colocation = (Colocation(snapshot) if any(
        r.placement.distinct_hosts or r.placement.spread is not None for r in requests) else None)
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
        spec = request.placement
        rule = rules.get(spec)
        if rule is None:
            rule = rules[spec] = _rules(spec)
        if need.invalid or rule.invalid:
            failures.append(Failure(instance_id=request.instance_id,
                                    reason=need.invalid or rule.invalid, dimensions={}))
            continue
        pool_key = (need.driver, spec.constraints)
        pool = pools.get(pool_key)
        if pool is None:
            pool = pools[pool_key] = _pool(budgets, need.driver, rule.constraints)
        key = (request.namespace, request.app, request.service)
        occupancy = None
        if colocation is not None and (spec.distinct_hosts or spec.spread is not None):
            occupancy = _occupancy(colocation, pool, key, spec)
        best = _best(pool, need) if occupancy is None else _best_placed(pool, need, occupancy)
        if best is None:
            failures.append(_failure(request, need, pool, occupancy))
            continue
        ports = pick_ports(best, request, need)
        best.take(cpu=need.cpu, memory=need.memory, ports=ports.values())
        if colocation is not None:
            colocation.record(key, best.node)
        placements.append(Placement(instance_id=request.instance_id, node=best.name,
                                    address=best.node.address, ports=ports))
    return Plan(placements=tuple(placements), failures=tuple(failures))
