"""Bin-packing: the most utilized node after placement wins; ties go to the first name."""

from __future__ import annotations

import pytest

from corral.model.application import Resources
from corral.scheduler import PlacementRequest, Snapshot, schedule
from corral.scheduler.feasibility import Need
from corral.scheduler.rank import binpack, score
from corral.scheduler.snapshot import build_budgets
from corral.testing.factories import GiB, make_instance, make_node


def req(instance_id: str = "r1", *, cpu: float = 1, memory: int = GiB) -> PlacementRequest:
    return PlacementRequest(instance_id=instance_id, app="app", service="web",
                            resources=Resources(cpu=cpu, memory=memory))


def test_prefers_the_busier_node() -> None:
    nodes = (make_node("a"), make_node("b"), make_node("c"))
    existing = (make_instance("x", node="b", cpu=2, memory=4 * GiB),
                make_instance("y", node="c", cpu=1, memory=1 * GiB))
    plan = schedule(Snapshot(nodes=nodes, instances=existing), [req()])
    assert [p.node for p in plan.placements] == ["b"]


def test_prefers_the_smaller_node_when_both_are_empty() -> None:
    nodes = (make_node("big", cpu=16, memory=64 * GiB), make_node("small", cpu=2, memory=4 * GiB))
    plan = schedule(Snapshot(nodes=nodes, instances=()), [req()])
    assert [p.node for p in plan.placements] == ["small"]


def test_fills_one_node_before_starting_the_next() -> None:
    nodes = (make_node("a", cpu=2, memory=2 * GiB), make_node("b", cpu=2, memory=2 * GiB))
    plan = schedule(Snapshot(nodes=nodes, instances=()), [req(f"r{n}") for n in range(4)])
    assert [p.node for p in plan.placements] == ["a", "a", "b", "b"]


def test_ties_are_broken_by_node_name_whatever_the_snapshot_order() -> None:
    names = ["n3", "n1", "n2"]
    for order in (names, sorted(names), sorted(names, reverse=True)):
        nodes = tuple(make_node(name) for name in order)
        plan = schedule(Snapshot(nodes=nodes, instances=()), [req()])
        assert [p.node for p in plan.placements] == ["n1"]


def test_a_node_that_does_not_fit_is_never_preferred() -> None:
    # b would be "more utilized" but has too little memory.
    nodes = (make_node("a", cpu=8, memory=8 * GiB), make_node("b", cpu=1, memory=GiB // 2))
    plan = schedule(Snapshot(nodes=nodes, instances=()), [req()])
    assert [p.node for p in plan.placements] == ["a"]


def test_binpack_is_the_mean_utilization_after_placement() -> None:
    snapshot = Snapshot(nodes=(make_node("a", cpu=4, memory=8 * GiB),),
                        instances=(make_instance(node="a", cpu=1, memory=2 * GiB),))
    (budget,) = build_budgets(snapshot)
    need = Need.of(req(cpu=1, memory=2 * GiB))
    assert binpack(budget, need) == pytest.approx((2 / 4 + 4 / 8) / 2)
    assert score(budget, need) == binpack(budget, need)


def test_zero_capacity_does_not_divide_by_zero() -> None:
    (budget,) = build_budgets(Snapshot(nodes=(make_node("a", cpu=0, memory=0),), instances=()))
    assert binpack(budget, Need.of(req(cpu=0.001, memory=1))) > 0
