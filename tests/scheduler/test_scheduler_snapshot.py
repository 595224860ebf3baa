"""What instances hold on their nodes: `node_usage` and the budgets `schedule` starts from."""

from __future__ import annotations

import pytest

from corral.model.instance import InstanceState
from corral.model.node import NodeState
from corral.scheduler import NodeUsage, Snapshot, node_usage
from corral.scheduler.snapshot import build_budgets, holds_resources, millicores
from corral.testing.factories import GiB, MiB, make_instance, make_node


def test_usage_sums_cpu_memory_and_ports_per_node() -> None:
    snapshot = Snapshot(
        nodes=(make_node("a"), make_node("b")),
        instances=(
            make_instance("i1", node="a", cpu=0.1, memory=100 * MiB, ports={"http": 20005}),
            make_instance("i2", node="a", cpu=0.2, memory=200 * MiB, ports={"http": 20001},
                          state=InstanceState.HEALTHY),
            make_instance("i3", node=None),  # pending: holds nothing anywhere
        ),
    )
    usage = node_usage(snapshot)
    assert usage["a"] == NodeUsage(cpu_milli=300, memory=300 * MiB, ports=(20001, 20005),
                                   instances=2)
    assert usage["a"].cpu == pytest.approx(0.3)
    assert usage["b"] == NodeUsage(cpu_milli=0, memory=0, ports=(), instances=0)


def test_cpu_is_summed_in_integer_millicores() -> None:
    # 0.1 + 0.2 != 0.3 in floats; in millicores the sum is exact whatever the order.
    assert millicores(0.1) + millicores(0.2) == millicores(0.3) == 300
    instances = tuple(make_instance(f"i{n}", node="a", cpu=0.1) for n in range(3))
    usage = node_usage(Snapshot(nodes=(make_node("a"),), instances=instances))
    assert usage["a"].cpu_milli == 300


@pytest.mark.parametrize("state", [InstanceState.STOPPING, InstanceState.SCHEDULED,
                                   InstanceState.FAILED, InstanceState.EXITED])
def test_placed_non_terminal_instances_hold_resources(state: InstanceState) -> None:
    instance = make_instance(node="a", state=state, cpu=1, ports={"http": 20000})
    assert holds_resources(instance)
    usage = node_usage(Snapshot(nodes=(make_node("a"),), instances=(instance,)))
    assert usage["a"].cpu_milli == 1000
    assert usage["a"].ports == (20000,)


@pytest.mark.parametrize("state", [InstanceState.STOPPED, InstanceState.LOST])
def test_terminal_instances_hold_nothing(state: InstanceState) -> None:
    instance = make_instance(node="a", state=state, cpu=1, ports={"http": 20000})
    assert not holds_resources(instance)
    usage = node_usage(Snapshot(nodes=(make_node("a"),), instances=(instance,)))
    assert usage["a"] == NodeUsage(cpu_milli=0, memory=0, ports=(), instances=0)


def test_instances_on_unknown_nodes_are_ignored() -> None:
    snapshot = Snapshot(nodes=(make_node("a"),), instances=(make_instance(node="gone"),))
    assert set(node_usage(snapshot)) == {"a"}
    assert build_budgets(snapshot)[0].free_cpu == 4000


def test_static_ports_count_as_held_even_before_ports_are_written() -> None:
    instance = make_instance(node="a", static_ports={"http": 8080})
    assert node_usage(Snapshot(nodes=(make_node("a"),), instances=(instance,)))["a"].ports == (
        8080,)


def test_budgets_are_sorted_by_name_and_count_free_resources() -> None:
    snapshot = Snapshot(
        nodes=(make_node("b", cpu=2, memory=4 * GiB, port_range=(100, 109),
                         reserved_ports=(100, 5000)),
               make_node("a", state=NodeState.DRAINING)),
        instances=(make_instance(node="b", cpu=0.5, memory=1 * GiB,
                                 ports={"x": 101, "y": 9000}),),
    )
    a, b = build_budgets(snapshot)
    assert (a.name, b.name) == ("a", "b")
    assert not a.ready and b.ready
    assert (b.free_cpu, b.free_memory) == (1500, 3 * GiB)
    assert b.used_ports == {100, 101, 5000, 9000}
    # 10 ports in range, 100 reserved and 101 held; 5000 and 9000 are outside it.
    assert b.free_range_ports == 8


def test_overcommitted_node_has_negative_free_resources() -> None:
    # A node re-registering with less capacity than its instances hold: nothing more fits.
    snapshot = Snapshot(nodes=(make_node("a", cpu=1),),
                        instances=(make_instance(node="a", cpu=2),))
    assert build_budgets(snapshot)[0].free_cpu == -1000


def test_take_commits_resources_and_ports() -> None:
    (budget,) = build_budgets(Snapshot(nodes=(make_node("a", port_range=(10, 19)),),
                                       instances=()))
    budget.take(cpu=250, memory=MiB, ports=[10, 11, 8080])
    assert (budget.free_cpu, budget.free_memory) == (3750, 8 * GiB - MiB)
    assert budget.used_ports == {10, 11, 8080}
    assert budget.free_range_ports == 8
