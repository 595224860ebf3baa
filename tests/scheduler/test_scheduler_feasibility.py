"""Feasibility rules, one at a time, and the failure sentences a user reads."""

from __future__ import annotations

import pytest

from corral.model.application import PlacementSpec, Resources
from corral.model.instance import Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler import Failure, PlacementRequest, Plan, Snapshot, request_for, schedule
from corral.scheduler.feasibility import Need, explain
from corral.testing.factories import GiB, MiB, make_instance, make_node


def req(instance_id: str = "r1", *, cpu: float = 0.1, memory: int = 128 * MiB,
        ports: tuple[str, ...] = (), static: dict[str, int] | None = None,
        driver: str | None = None) -> PlacementRequest:
    return PlacementRequest(instance_id=instance_id, app="app", service="web",
                            resources=Resources(cpu=cpu, memory=memory), port_names=ports,
                            static_ports=static or {}, driver=driver)


def run(nodes: tuple[Node, ...], *requests: PlacementRequest,
        instances: tuple[Instance, ...] = ()) -> Plan:
    return schedule(Snapshot(nodes=nodes, instances=instances), requests)


def only_failure(plan: Plan) -> Failure:
    assert plan.placements == ()
    (failure,) = plan.failures
    return failure


def test_fits_cpu_and_memory_exactly() -> None:
    plan = run((make_node("a", cpu=1, memory=GiB),), req(cpu=1, memory=GiB))
    assert [p.node for p in plan.placements] == ["a"]
    assert plan.failures == ()


def test_cpu_does_not_fit() -> None:
    failure = only_failure(run((make_node("a", cpu=1), make_node("b", cpu=1.5)), req(cpu=2)))
    assert failure.instance_id == "r1"
    assert failure.dimensions == {"cpu": 2}
    assert failure.reason == "no node can fit 2 cpu: 2 nodes exhausted cpu"


def test_memory_does_not_fit_counting_existing_instances() -> None:
    nodes = (make_node("a", memory=4 * GiB), make_node("b", memory=4 * GiB))
    existing = (make_instance("x", node="a", memory=3 * GiB),)
    plan = run(nodes, req("r1", memory=2 * GiB), req("r2", memory=3 * GiB), instances=existing)
    assert [(p.instance_id, p.node) for p in plan.placements] == [("r1", "b")]
    (failure,) = plan.failures
    assert failure.dimensions == {"memory": 2}
    assert failure.reason == "no node can fit 3GiB memory: 2 nodes exhausted memory"


@pytest.mark.parametrize("state", [NodeState.DOWN, NodeState.DRAINING, NodeState.INELIGIBLE])
def test_node_not_ready_is_not_used(state: NodeState) -> None:
    failure = only_failure(run((make_node("a", state=state),), req()))
    assert failure.dimensions == {"not ready": 1}
    assert failure.reason == "no node is ready: 1 node not ready"


def test_reason_names_the_resource_before_nodes_that_are_not_ready() -> None:
    nodes = (make_node("a", memory=32 * GiB), make_node("b", memory=32 * GiB),
             make_node("c", memory=32 * GiB), make_node("d", state=NodeState.DOWN))
    failure = only_failure(run(nodes, req(memory=64 * GiB)))
    assert failure.reason == (
        "no node can fit 64GiB memory: 3 nodes exhausted memory, 1 node not ready")
    assert failure.dimensions == {"memory": 3, "not ready": 1}
    assert list(failure.dimensions) == ["memory", "not ready"]  # most first


def test_no_nodes_registered() -> None:
    failure = only_failure(run((), req()))
    assert failure.reason == "no nodes registered"
    assert failure.dimensions == {}


def test_requested_driver_must_be_usable() -> None:
    nodes = (make_node("a", drivers={"process": "", "sandbox": "bwrap not found"}),
             make_node("b", drivers={"process": "", "sandbox": ""}))
    plan = run(nodes, req("r1", driver="sandbox"))
    assert [p.node for p in plan.placements] == ["b"]
    failure = only_failure(run(nodes[:1], req("r1", driver="sandbox")))
    assert failure.dimensions == {"driver sandbox": 1}
    assert failure.reason == "no node can run driver sandbox: 1 node cannot run driver sandbox"


def test_default_driver_is_used_when_none_is_requested() -> None:
    nodes = (make_node("a", drivers={"sandbox": "not root"}, default_driver="sandbox"),
             make_node("b", drivers={"sandbox": ""}, default_driver="sandbox"))
    assert [p.node for p in run(nodes, req()).placements] == ["b"]


def test_node_without_driver_map_runs_only_process() -> None:
    nodes = (make_node("a", drivers={}),)
    assert [p.node for p in run(nodes, req()).placements] == ["a"]
    assert [p.node for p in run(nodes, req(driver="process")).placements] == ["a"]
    assert only_failure(run(nodes, req(driver="oci"))).dimensions == {"driver oci": 1}
    sandbox_default = (make_node("a", drivers={}, default_driver="sandbox"),)
    assert only_failure(run(sandbox_default, req())).dimensions == {"driver sandbox": 1}


def test_static_port_held_by_another_instance_conflicts() -> None:
    nodes = (make_node("a"), make_node("b"))
    existing: tuple[Instance, ...] = (make_instance("x", node="a", ports={"http": 8080}),)
    plan = run(nodes, req(ports=("http",), static={"http": 8080}), instances=existing)
    assert [(p.node, p.ports) for p in plan.placements] == [("b", {"http": 8080})]
    existing += (make_instance("y", node="b", ports={"web": 8080}),)
    failure = only_failure(run(nodes, req(ports=("http",), static={"http": 8080}),
                               instances=existing))
    assert failure.dimensions == {"port 8080": 2}
    assert failure.reason == "no node has port 8080 free: 2 nodes have port 8080 in use"


def test_static_port_reserved_on_the_host_conflicts() -> None:
    failure = only_failure(run((make_node("a", reserved_ports=(22, 8080)),),
                               req(ports=("http",), static={"http": 8080})))
    assert failure.reason == "no node has port 8080 free: 1 node has port 8080 in use"


def test_static_port_of_a_stopped_instance_is_free_again() -> None:
    existing = (make_instance("x", node="a", ports={"http": 8080},
                              state=InstanceState.STOPPED),)
    plan = run((make_node("a"),), req(ports=("http",), static={"http": 8080}),
               instances=existing)
    assert [p.ports for p in plan.placements] == [{"http": 8080}]


def test_static_port_conflicts_within_one_batch() -> None:
    plan = run((make_node("a"),), req("r1", ports=("http",), static={"http": 8080}),
               req("r2", ports=("http",), static={"http": 8080}))
    assert [p.instance_id for p in plan.placements] == ["r1"]
    assert [f.dimensions for f in plan.failures] == [{"port 8080": 1}]


def test_stopping_instances_still_hold_resources() -> None:
    existing = (make_instance("x", node="a", cpu=3, state=InstanceState.STOPPING),)
    failure = only_failure(run((make_node("a", cpu=4),), req(cpu=2), instances=existing))
    assert failure.dimensions == {"cpu": 1}


@pytest.mark.parametrize("state", [InstanceState.STOPPED, InstanceState.LOST])
def test_stopped_and_lost_instances_free_their_resources(state: InstanceState) -> None:
    existing = (make_instance("x", node="a", cpu=3, state=state),)
    plan = run((make_node("a", cpu=4),), req(cpu=2), instances=existing)
    assert [p.node for p in plan.placements] == ["a"]


def test_first_failing_dimension_is_counted_once_per_node() -> None:
    # Node a lacks both cpu and memory: counted under cpu only, so counts sum to the nodes.
    nodes = (make_node("a", cpu=1, memory=GiB), make_node("b", cpu=8, memory=GiB),
             make_node("c", state=NodeState.DOWN), make_node("d", drivers={"oci": "no runc"},
                                                             default_driver="oci"))
    failure = only_failure(run(nodes, req(cpu=2, memory=2 * GiB)))
    assert failure.dimensions == {"cpu": 1, "driver oci": 1, "memory": 1, "not ready": 1}
    assert sum(failure.dimensions.values()) == len(nodes)
    assert failure.reason.startswith("no node can fit 2 cpu: ")


def test_dynamic_port_exhaustion_is_explained() -> None:
    failure = only_failure(run((make_node("a", port_range=(30000, 30001),
                                          reserved_ports=(30000,)),),
                               req(ports=("http", "admin"))))
    assert failure.dimensions == {"ports": 1}
    assert failure.reason == "no node has 2 free dynamic ports: 1 node exhausted dynamic ports"


def test_two_names_pinning_one_port_never_place() -> None:
    failure = only_failure(run((make_node("a"),), req(ports=("a", "b"),
                                                        static={"a": 9000, "b": 9000})))
    assert "port 9000" in failure.reason
    assert failure.dimensions == {}


def test_need_is_in_integer_units() -> None:
    need = Need.of(req(cpu=0.25, memory=MiB, ports=("http", "admin", "metrics"),
                       static={"metrics": 9100}))
    assert (need.cpu, need.memory) == (250, MiB)
    assert need.static_ports == (9100,)
    assert need.dynamic == ("http", "admin")


def test_explain_breaks_ties_by_dimension_name() -> None:
    need = Need.of(req(cpu=2, memory=GiB))
    assert explain(need, {"memory": 1, "cpu": 1}) == (
        "no node can fit 2 cpu: 1 node exhausted cpu, 1 node exhausted memory")
    assert explain(need, {}) == "no nodes registered"


def test_request_for_copies_the_instance_fields() -> None:
    instance = make_instance("i9", app="shop", service="cache", cpu=0.5, memory=GiB,
                             port_names=("main",), static_ports={"main": 6379},
                             driver="sandbox")
    placement = PlacementSpec(distinct_hosts=True)
    request = request_for(instance, placement)
    assert request == PlacementRequest(
        instance_id="i9", app="shop", service="cache", resources=Resources(cpu=0.5, memory=GiB),
        port_names=("main",), static_ports={"main": 6379}, driver="sandbox",
        placement=placement)
    assert request.static_ports is not instance.static_ports
    assert request_for(instance).placement == PlacementSpec()
