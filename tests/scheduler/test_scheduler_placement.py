"""Placement rules in `schedule`: constraints, distinct_hosts, spread, and their failures."""

from __future__ import annotations

from collections import Counter

from corral.model.application import PlacementSpec, Resources
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler import PlacementRequest, Plan, Snapshot, request_for, schedule
from corral.scheduler.colocation import Colocation
from corral.testing.factories import GiB, MiB, make_instance, make_node


def req(instance_id: str, *, service: str = "web", app: str = "app",
        namespace: str = "default", cpu: float = 0.5, memory: int = 256 * MiB,
        constraints: tuple[str, ...] = (), distinct_hosts: bool = False,
        spread: str | None = None) -> PlacementRequest:
    return PlacementRequest(
        instance_id=instance_id, namespace=namespace, app=app, service=service,
        resources=Resources(cpu=cpu, memory=memory),
        placement=PlacementSpec(constraints=constraints, distinct_hosts=distinct_hosts,
                                spread=spread))


def run(nodes: tuple[Node, ...], requests: list[PlacementRequest],
        instances: tuple[Instance, ...] = ()) -> Plan:
    return schedule(Snapshot(nodes=nodes, instances=instances), requests)


def where(plan: Plan) -> dict[str, str]:
    return {p.instance_id: p.node for p in plan.placements}


def zoned(*zones: str, cpu: float = 4, memory: int = 8 * GiB) -> tuple[Node, ...]:
    """One node per zone letter, named `<zone><n>`: zoned("a", "a", "b") -> a1, a2, b1."""
    seen: Counter[str] = Counter()
    nodes = []
    for zone in zones:
        seen[zone] += 1
        nodes.append(make_node(f"{zone}{seen[zone]}", cpu=cpu, memory=memory,
                               labels={"zone": zone} if zone != "-" else {}))
    return tuple(nodes)


# --- constraints ----------------------------------------------------------------------------

def test_constraints_filter_nodes() -> None:
    nodes = zoned("a", "b", "c")
    plan = run(nodes, [req(f"r{n}", constraints=("zone != c", "zone in a,c")) for n in range(3)])
    assert set(where(plan).values()) == {"a1"}


def test_constraint_failure_names_the_first_failing_constraint_per_node() -> None:
    nodes = (*zoned("a", "b", "c"), make_node("d1", state=NodeState.DOWN))
    plan = run(nodes, [req("r1", constraints=("zone != c", "zone == z"))])
    (failure,) = plan.failures
    assert failure.dimensions == {'constraint "zone == z"': 2, 'constraint "zone != c"': 1,
                                  "not ready": 1}
    assert failure.reason == (
        'no node satisfies constraint "zone == z": 2 nodes failed constraint "zone == z", '
        '1 node failed constraint "zone != c", 1 node not ready')


def test_a_malformed_constraint_fails_the_request_without_blocking_others() -> None:
    plan = run(zoned("a"), [req("bad", constraints=("zone ~ a",)), req("good")])
    assert where(plan) == {"good": "a1"}
    (failure,) = plan.failures
    assert failure.instance_id == "bad" and failure.dimensions == {}
    assert failure.reason.startswith("invalid constraint 'zone ~ a': expected")


def test_a_malformed_spread_fails_the_request() -> None:
    (failure,) = run(zoned("a"), [req("bad", spread="two words")]).failures
    assert "expected an attribute name" in failure.reason


def test_constraints_on_attributes_and_node_fields() -> None:
    nodes = (make_node("old", attributes={"kernel": "4.19.0-25-amd64"}),
             make_node("new", attributes={"kernel": "6.1.0-18-amd64"}),
             make_node("none"))
    assert set(where(run(nodes, [req("r", constraints=("attr.kernel version >= 5.10",))]))
               .values()) == {"new"}
    assert where(run(nodes, [req("r", constraints=("node.name regexp ^no",))])) == {"r": "none"}


# --- distinct_hosts -------------------------------------------------------------------------

def test_distinct_hosts_counts_placements_of_the_same_batch() -> None:
    nodes = zoned("a", "a", "a")
    plan = run(nodes, [req(f"r{n}", distinct_hosts=True) for n in range(4)])
    assert sorted(where(plan).values()) == ["a1", "a2", "a3"]
    (failure,) = plan.failures
    assert failure.instance_id == "r3"
    assert failure.dimensions == {"distinct_hosts": 3}
    assert failure.reason == ("no node satisfies distinct_hosts: 3 nodes already run web "
                              "(distinct_hosts)")


def test_distinct_hosts_counts_existing_live_instances_only() -> None:
    nodes = zoned("a", "a", "a", "a", "a")
    existing = (
        make_instance("x1", node="a1", state=InstanceState.RUNNING),
        make_instance("x2", node="a2", state=InstanceState.STOPPED),  # ended
        make_instance("x3", node="a3", desired=DesiredState.STOP,
                      state=InstanceState.STOPPING),  # being stopped
        make_instance("x4", node="a4", migrate=True),  # its replacement is what we place
        make_instance("x5", node="a5", service="db"),  # another service
    )
    plan = run(nodes, [req(f"r{n}", distinct_hosts=True) for n in range(5)], existing)
    assert sorted(where(plan).values()) == ["a2", "a3", "a4", "a5"]
    assert [(f.instance_id, f.dimensions) for f in plan.failures] == [
        ("r4", {"distinct_hosts": 5})]


def test_distinct_hosts_is_per_service_app_and_namespace() -> None:
    nodes = zoned("a")
    requests = [req("r1", distinct_hosts=True), req("r2", distinct_hosts=True, service="db"),
                req("r3", distinct_hosts=True, app="other"),
                req("r4", distinct_hosts=True, namespace="team-b"),
                req("r5", distinct_hosts=True)]
    plan = run(nodes, requests)
    assert sorted(where(plan)) == ["r1", "r2", "r3", "r4"]
    assert [f.instance_id for f in plan.failures] == ["r5"]


def test_an_earlier_placement_without_the_rule_still_counts() -> None:
    # Two versions of one service in a batch: the old spec without distinct_hosts.
    plan = run(zoned("a", "a"), [req("old"), req("new", distinct_hosts=True)])
    assert where(plan) == {"old": "a1", "new": "a2"}


def test_request_for_carries_the_namespace() -> None:
    instance = make_instance("i", namespace="team-b")
    assert request_for(instance, PlacementSpec(distinct_hosts=True)).namespace == "team-b"


# --- spread ---------------------------------------------------------------------------------

def test_spread_evens_instances_over_zones() -> None:
    nodes = zoned("a", "a", "b", "b", "c", "c")
    plan = run(nodes, [req(f"r{n}", spread="zone") for n in range(6)])
    zones = Counter(node[0] for node in where(plan).values())
    assert zones == {"a": 2, "b": 2, "c": 2}


def test_bin_packing_decides_within_a_zone() -> None:
    # Inside each zone both instances go to the first node: spread is over zones, not nodes.
    nodes = zoned("a", "a", "b", "b", "c", "c")
    plan = run(nodes, [req(f"r{n}", spread="zone") for n in range(6)])
    assert sorted(where(plan).values()) == ["a1", "a1", "b1", "b1", "c1", "c1"]


def test_spread_counts_existing_instances() -> None:
    nodes = zoned("a", "b", "c")
    existing = tuple(make_instance(f"x{n}", node="a1", state=InstanceState.HEALTHY)
                     for n in range(3))
    plan = run(nodes, [req(f"r{n}", spread="zone") for n in range(5)], existing)
    zones = Counter(where(plan).values())
    assert zones == {"b1": 3, "c1": 2}  # a then has 3, b 3, c 2: within one


def test_a_full_zone_leaves_the_rest_to_the_others() -> None:
    nodes = (*zoned("a", "b"), *zoned("c", cpu=1))  # c fits two instances of 0.5 cpu
    plan = run(nodes, [req(f"r{n}", spread="zone") for n in range(9)])
    assert plan.failures == ()
    assert Counter(where(plan).values()) == {"a1": 4, "b1": 3, "c1": 2}


def test_nodes_without_the_label_share_one_value() -> None:
    nodes = zoned("a", "-", "-")  # a1 labelled, then two unlabelled nodes named -1 and -2
    plan = run(nodes, [req(f"r{n}", spread="zone") for n in range(4)])
    placed = Counter(where(plan).values())
    assert placed["a1"] == 2 and placed["-1"] + placed["-2"] == 2


def test_spread_over_an_attribute() -> None:
    nodes = (make_node("x1", attributes={"arch": "x86_64"}),
             make_node("x2", attributes={"arch": "x86_64"}),
             make_node("y1", attributes={"arch": "aarch64"}))
    plan = run(nodes, [req(f"r{n}", spread="attr.arch") for n in range(4)])
    assert sorted(where(plan).values()) == ["x1", "x1", "y1", "y1"]


def test_spread_with_distinct_hosts_and_constraints() -> None:
    nodes = zoned("a", "a", "a", "b", "b", "c", "c", "c")
    plan = run(nodes, [req(f"r{n}", spread="zone", distinct_hosts=True,
                           constraints=("zone != c",)) for n in range(6)])
    assert sorted(where(plan).values()) == ["a1", "a2", "a3", "b1", "b2"]
    (failure,) = plan.failures
    assert failure.dimensions == {'constraint "zone != c"': 3, "distinct_hosts": 5}


def test_spread_is_per_service() -> None:
    nodes = zoned("a", "b")
    plan = run(nodes, [req("w1", spread="zone"), req("d1", service="db", spread="zone"),
                       req("w2", spread="zone")])
    assert where(plan) == {"w1": "a1", "d1": "a1", "w2": "b1"}


# --- the working state ----------------------------------------------------------------------

def test_colocation_counts_per_node_and_per_value() -> None:
    nodes = zoned("a", "a", "b", "-")
    instances = (make_instance("x1", node="a1"), make_instance("x2", node="a2"),
                 make_instance("x3", node="a2"), make_instance("x4", node="gone"),
                 make_instance("x5", node="-1", service="db"))
    colocation = Colocation(Snapshot(nodes=nodes, instances=instances))
    key = ("default", "app", "web")
    assert colocation.on_node(key) == {"a1": 1, "a2": 2}
    assert colocation.per_value(key, "zone") == {"a": 3}
    colocation.record(key, nodes[2])
    colocation.record(key, nodes[3])
    assert colocation.on_node(key) == {"a1": 1, "a2": 2, "b1": 1, "-1": 1}
    assert colocation.per_value(key, "zone") == {"a": 3, "b": 1, "": 1}
    # Built after the records: derived from the per-node counts, so they agree.
    assert colocation.per_value(key, "label.zone") == {"a": 3, "b": 1, "": 1}
    assert colocation.on_node(("default", "app", "db")) == {"-1": 1}
