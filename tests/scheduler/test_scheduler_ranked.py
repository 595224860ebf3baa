"""The indexed scheduler (`ranked.py`: per-class heaps of feasible nodes) picks exactly the
node an exhaustive scan of every node would pick, for every request of random batches.

The reference below is the scheduler as it was before the index: for each request, score
every feasible node and keep the best (fewest of the service on its spread value, then the
highest bin-packing score, then the first name), committing each placement into the budgets.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.model.application import PlacementSpec, Resources
from corral.scheduler import PlacementRequest, Snapshot, node_usage, schedule
from corral.scheduler.colocation import Colocation
from corral.scheduler.feasibility import (
    Need,
    constraint_reject,
    node_reject,
    parse_constraints,
    resource_reject,
)
from corral.scheduler.ports import pick_ports
from corral.scheduler.rank import binpack
from corral.scheduler.snapshot import build_budgets
from corral.testing.factories import MiB, make_node
from tests.scheduler.test_scheduler_properties import batches, snapshots


def exhaustive(snapshot: Snapshot, requests: list[PlacementRequest]) -> dict[str, str | None]:
    """Request id -> node name (None: failed), scanning every node for every request."""
    budgets = build_budgets(snapshot)
    colocation = Colocation(snapshot)
    out: dict[str, str | None] = {}
    for request in requests:
        if request.instance_id in out:
            continue
        need, spec = Need.of(request), request.placement
        try:
            constraints = parse_constraints(spec.constraints)
        except ValueError:
            out[request.instance_id] = None
            continue
        if need.invalid:
            out[request.instance_id] = None
            continue
        key = (request.namespace, request.app, request.service)
        on_node = colocation.on_node(key)
        values = colocation.values(spec.spread) if spec.spread else {}
        per_value = colocation.per_value(key, spec.spread) if spec.spread else {}
        best, best_key = None, None
        for budget in budgets:
            if node_reject(budget, need.driver) or constraint_reject(budget.node, constraints):
                continue
            if spec.distinct_hosts and budget.name in on_node:
                continue
            if resource_reject(budget, need) is not None:
                continue
            count = per_value.get(values[budget.name], 0) if spec.spread else 0
            rank_key = (count, -binpack(budget, need), budget.index)
            if best_key is None or rank_key < best_key:
                best, best_key = budget, rank_key
        if best is None:
            out[request.instance_id] = None
            continue
        ports = pick_ports(best, request, need)
        best.take(cpu=need.cpu, memory=need.memory, ports=ports.values())
        colocation.record(key, best.node)
        out[request.instance_id] = best.name
    return out


def outcome(snapshot: Snapshot, requests: list[PlacementRequest]) -> dict[str, str | None]:
    plan = schedule(snapshot, requests)
    out: dict[str, str | None] = {f.instance_id: None for f in plan.failures}
    out.update({p.instance_id: p.node for p in plan.placements})
    return out


@settings(max_examples=300, deadline=None)
@given(snapshot=snapshots(), requests=batches())
def test_the_index_picks_what_an_exhaustive_scan_picks(
        snapshot: Snapshot, requests: list[PlacementRequest]) -> None:
    assert outcome(snapshot, requests) == exhaustive(snapshot, requests)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 16)), min_size=1,
                      max_size=12),
       services=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 2000),
                                   st.integers(1, 4), st.booleans(), st.booleans()),
                         min_size=1, max_size=40))
def test_runs_of_alike_requests_interleaved_with_others(
        sizes: list[tuple[int, int]],
        services: list[tuple[str, int, int, bool, bool]]) -> None:
    """Long runs of identical requests (what the heaps are for), several classes taking
    turns on the same nodes, with and without spread and distinct_hosts."""
    nodes = tuple(make_node(f"n{i:02d}", cpu=cpu, memory=mem * 512 * MiB,
                            labels={"zone": "xyz"[i % 3]})
                  for i, (cpu, mem) in enumerate(sizes))
    requests = []
    for run, (service, milli, count, spread, distinct) in enumerate(services):
        for n in range(count):
            requests.append(PlacementRequest(
                instance_id=f"r{run}-{n}", app="app", service=service,
                resources=Resources(cpu=milli / 1000, memory=milli * MiB),
                port_names=("http",),
                placement=PlacementSpec(spread="zone" if spread else None,
                                        distinct_hosts=distinct)))
    snapshot = Snapshot(nodes=nodes, instances=())
    assert outcome(snapshot, requests) == exhaustive(snapshot, requests)


@settings(max_examples=200, deadline=None)
@given(snapshot=snapshots(), requests=batches())
def test_counts_kept_by_the_caller_stand_in_for_the_instances(
        snapshot: Snapshot, requests: list[PlacementRequest]) -> None:
    """The server's index keeps usage per node and per-service counts per node; a snapshot
    with those and no instance records gives the very plan the full snapshot gives."""
    counted = Colocation(snapshot)
    services = {(r.namespace, r.app, r.service) for r in requests}
    lean = Snapshot(nodes=snapshot.nodes, instances=(), usage=node_usage(snapshot),
                    placed={key: dict(counted.on_node(key)) for key in services})
    assert schedule(lean, requests) == schedule(snapshot, requests)
