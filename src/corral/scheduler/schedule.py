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
each constraint is parsed once per distinct set. Requests that are alike (same need, pool
and rules: a service's instances) share one `Ranked` index of the feasible nodes, best
first (`ranked.py`), so each placement costs O(log N) rather than a scan of every node, and
gives the node that scan would have given. `distinct_hosts` and `spread` depend on where
the batch has put the service's other instances, so they read counts that `Colocation`
keeps current, never the instance list.

Neighbours: `snapshot.py` (input and budgets), `feasibility.py` (which nodes, why not),
`colocation.py` (where each service's instances are), `rank.py` (which of the feasible
nodes), `ports.py` (which ports).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from corral.model.application import PlacementSpec
from corral.model.constraints import Constraint, parse_attribute
from corral.scheduler.colocation import Colocation
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
from corral.scheduler.ranked import Ranked
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


def _failure(request: PlacementRequest, need: Need, pool: _Pool,
             on_node: Mapping[str, int] | None) -> Failure:
    counts = Counter(pool.rejected)
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
    classes: dict[tuple[object, ...], Ranked] = {}
    log: list[int] = []  # budget index of every placement so far, in order (ranked.py)
    # class -> (len(log) when it was computed, the failure): a class with no node left
    # fails alike until something is placed somewhere.
    exhausted: dict[tuple[object, ...], tuple[int, Failure]] = {}
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
        placed_by_rules = colocation is not None and (spec.distinct_hosts
                                                      or spec.spread is not None)
        class_key: tuple[object, ...] = (need, pool_key, spec.distinct_hosts, spec.spread,
                                         key if placed_by_rules else None)
        on_node: Mapping[str, int] | None = None
        per_value: Mapping[str, int] = {}
        if placed_by_rules:
            assert colocation is not None
            on_node = colocation.on_node(key) if spec.distinct_hosts else None
            if spec.spread is not None:
                per_value = colocation.per_value(key, spec.spread)
        ranked = classes.get(class_key)
        if ranked is None:
            values = (pool.values(colocation, spec.spread)
                      if colocation is not None and spec.spread is not None else None)
            ranked = classes[class_key] = Ranked(eligible=pool.eligible, need=need,
                                                 values=values, log_length=len(log))
        best = ranked.best(budgets, log, on_node, per_value)
        if best is None:
            known = exhausted.get(class_key)
            if known is None or known[0] != len(log):
                known = exhausted[class_key] = (len(log), _failure(request, need, pool,
                                                                   on_node))
            failures.append(replace(known[1], instance_id=request.instance_id))
            continue
        ports = pick_ports(best, request, need)
        best.take(cpu=need.cpu, memory=need.memory, ports=ports.values())
        log.append(best.index)
        if colocation is not None:
            colocation.record(key, best.node)
        placements.append(Placement(instance_id=request.instance_id, node=best.name,
                                    address=best.node.address, ports=ports))
    return Plan(placements=tuple(placements), failures=tuple(failures))
