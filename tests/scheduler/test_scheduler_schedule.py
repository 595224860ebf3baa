"""The batch loop: order, determinism, no overcommit within a batch, one outcome per request."""

from __future__ import annotations

import dataclasses

from corral.model.application import Resources
from corral.model.instance import InstanceState
from corral.model.node import NodeState
from corral.scheduler import Placement, PlacementRequest, Plan, Snapshot, schedule
from corral.testing.factories import GiB, MiB, make_instance, make_node


def req(instance_id: str, *, cpu: float = 0.5, memory: int = 512 * MiB,
        ports: tuple[str, ...] = ("http",)) -> PlacementRequest:
    return PlacementRequest(instance_id=instance_id, app="app", service="web",
                            resources=Resources(cpu=cpu, memory=memory), port_names=ports)


def cluster() -> Snapshot:
    nodes = (make_node("a", cpu=2, memory=2 * GiB, port_range=(30000, 30099)),
             make_node("b", cpu=4, memory=8 * GiB, port_range=(30000, 30099)),
             make_node("c", state=NodeState.DOWN))
    instances = (make_instance("x", node="a", cpu=1, memory=GiB, ports={"http": 30050}),
                 make_instance("y", node="b", cpu=1, state=InstanceState.STOPPING),
                 make_instance("z", node="b", cpu=3, state=InstanceState.STOPPED))
    return Snapshot(nodes=nodes, instances=instances)


def test_placement_carries_node_address_and_ports() -> None:
    node = make_node("a", address="192.168.1.10", port_range=(30000, 30000))
    plan = schedule(Snapshot(nodes=(node,), instances=()), [req("r1")])
    assert plan == Plan(placements=(Placement(instance_id="r1", node="a",
                                              address="192.168.1.10",
                                              ports={"http": 30000}),))


def test_same_input_gives_the_same_plan() -> None:
    requests = [req(f"r{n}", cpu=0.25 * (n % 3 + 1)) for n in range(20)]
    first = schedule(cluster(), requests)
    assert first == schedule(cluster(), requests)
    shuffled = dataclasses.replace(cluster(), nodes=cluster().nodes[::-1],
                                   instances=cluster().instances[::-1])
    assert schedule(shuffled, requests) == first


def test_schedule_does_not_change_its_input() -> None:
    snapshot = cluster()
    schedule(snapshot, [req(f"r{n}") for n in range(5)])
    assert snapshot == cluster()


def test_a_batch_never_overcommits_a_node() -> None:
    # a: 1 core free; b: 3 cores free (the stopping instance still holds one).
    requests = [req(f"r{n}", cpu=1, memory=256 * MiB) for n in range(6)]
    plan = schedule(cluster(), requests)
    placed = [p.node for p in plan.placements]
    assert sorted(placed) == ["a", "b", "b", "b"]
    assert [f.instance_id for f in plan.failures] == ["r4", "r5"]
    assert plan.failures[0].dimensions == {"cpu": 2, "not ready": 1}


def test_every_request_has_exactly_one_outcome_in_request_order() -> None:
    requests = [req(f"r{n}", cpu=0.5 + (n % 2) * 3) for n in range(10)]
    plan = schedule(cluster(), requests)
    placed = [p.instance_id for p in plan.placements]
    failed = [f.instance_id for f in plan.failures]
    assert sorted(placed + failed) == sorted(r.instance_id for r in requests)
    assert placed == [r.instance_id for r in requests if r.instance_id in placed]
    assert failed == [r.instance_id for r in requests if r.instance_id in failed]


def test_a_repeated_instance_id_is_placed_once() -> None:
    plan = schedule(cluster(), [req("r1"), req("r1")])
    assert [p.instance_id for p in plan.placements] == ["r1"]
    assert [(f.instance_id, f.reason) for f in plan.failures] == [
        ("r1", "instance requested twice in one batch")]


def test_a_failed_request_does_not_block_later_ones() -> None:
    plan = schedule(cluster(), [req("big", cpu=64), req("small")])
    assert [p.instance_id for p in plan.placements] == ["small"]
    assert [f.instance_id for f in plan.failures] == ["big"]


def test_empty_batch_gives_an_empty_plan() -> None:
    assert schedule(cluster(), []) == Plan()
