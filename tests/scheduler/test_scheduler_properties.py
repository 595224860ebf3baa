"""Property tests: random clusters, existing instances and request batches, checked against an
independent, deliberately naive model of the rules (no budgets, no shared code).

For each request in order the model computes which nodes could take it given the snapshot
and the plan's earlier placements. A placed request must be on one of them with valid ports;
a failed request must have had none. At the end no node may be overcommitted. Placement rules
are part of "could take it": constraints (drawn from a fixed list, each with a hand-written
predicate), distinct_hosts, and for spread, the placed node's zone must have had the fewest
instances of the service among the nodes that could take it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.model.application import PlacementSpec, Resources
from corral.model.instance import TERMINAL_STATES, DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler import PlacementRequest, Plan, Snapshot, node_usage, schedule
from corral.testing.factories import MiB, make_instance, make_node

# Pinned ports drawn from a small pool so that conflicts are frequent; 20000-20003 fall inside
# the dynamic ranges drawn below.
STATIC_POOL = (80, 8080, 9000, 20000, 20001, 20003)
PORT_NAMES = ("http", "admin", "metrics", "grpc")
ZONES = ("a", "b", "c", None)  # None: no zone label
KERNELS = ("4.19.0-25-amd64", "5.10.0", "5.15.0-91-generic", "6.1-rc3", "6.1.2", None)
# Each constraint the batches draw, with what it means written out by hand.
CONSTRAINTS: dict[str, Callable[[Node], bool]] = {
    "zone != c": lambda n: n.labels.get("zone") != "c",
    "zone in a, b": lambda n: n.labels.get("zone") in ("a", "b"),
    "zone not_in a": lambda n: n.labels.get("zone") != "a",
    "attr.kernel version >= 5.10, < 6.1": lambda n: n.attributes.get("kernel") in (
        "5.10.0", "5.15.0-91-generic", "6.1-rc3"),
    "node.name regexp [02468]$": lambda n: int(n.name[-1]) % 2 == 0,
    "rack >= 3": lambda n: "rack" in n.labels and int(n.labels["rack"]) >= 3,
}


@dataclass
class ModelNode:
    node: Node
    cpu: int = 0  # millicores held
    memory: int = 0
    ports: list[int] = field(default_factory=list)  # a list, so a duplicate would show
    services: Counter[str] = field(default_factory=Counter)  # live instances per service

    @property
    def zone(self) -> str:
        return self.node.labels.get("zone", "")

    def free_range_ports(self) -> set[int]:
        lo, hi = self.node.port_range
        return set(range(lo, hi + 1)) - set(self.ports) - set(self.node.reserved_ports)


def usable(node: Node, driver: str | None) -> bool:
    name = driver or node.default_driver
    return name == "process" if not node.drivers else node.drivers.get(name) == ""


def fits(model: ModelNode, request: PlacementRequest) -> bool:
    node = model.node
    rules = request.placement
    if not all(CONSTRAINTS[text](node) for text in rules.constraints):
        return False
    if rules.distinct_hosts and model.services[request.service]:
        return False
    static = list(request.static_ports.values())
    dynamic = [n for n in request.port_names if n not in request.static_ports]
    taken = set(model.ports) | set(node.reserved_ports)
    return (node.state == NodeState.READY and usable(node, request.driver)
            and round(node.capacity.cpu * 1000) - model.cpu >= round(request.resources.cpu * 1000)
            and node.capacity.memory - model.memory >= request.resources.memory
            and len(set(static)) == len(static) and not taken & set(static)
            and len(model.free_range_ports() - set(static)) >= len(set(dynamic)))


def holds(instance: Instance) -> bool:
    return instance.node is not None and instance.state not in TERMINAL_STATES


def model_of(snapshot: Snapshot) -> dict[str, ModelNode]:
    model = {node.name: ModelNode(node) for node in snapshot.nodes}
    for instance in snapshot.instances:
        if holds(instance) and instance.node in model:
            held = model[instance.node]
            held.cpu += round(instance.resources.cpu * 1000)
            held.memory += instance.resources.memory
            held.ports.extend(set(instance.ports.values()) | set(instance.static_ports.values()))
            if (instance.desired == DesiredState.RUN and not instance.migrate
                    and instance.state != InstanceState.STOPPING):
                held.services[instance.service] += 1
    return model


def per_zone(model: dict[str, ModelNode], service: str) -> Counter[str]:
    zones: Counter[str] = Counter()
    for held in model.values():
        zones[held.zone] += held.services[service]
    return zones


@st.composite
def nodes(draw: st.DrawFn, index: int) -> Node:
    lo = draw(st.integers(20000, 20004))
    small = draw(st.booleans())
    hi = lo + (draw(st.integers(0, 5)) if small else draw(st.integers(20, 300)))
    return make_node(
        f"n{index:02d}",
        state=draw(st.sampled_from([NodeState.READY] * 5 + [NodeState.DOWN,
                                                           NodeState.DRAINING])),
        cpu=draw(st.integers(0, 16_000)) / 1000,
        memory=draw(st.integers(0, 64)) * 256 * MiB,
        port_range=(lo, hi),
        reserved_ports=tuple(draw(st.lists(st.integers(lo - 1, hi + 1)
                                           | st.sampled_from(STATIC_POOL), max_size=3))),
        drivers=draw(st.sampled_from([{}, {"process": ""}, {"process": "", "sandbox": ""},
                                      {"process": "", "sandbox": "bwrap missing"}])),
        default_driver=draw(st.sampled_from(["process", "process", "sandbox"])),
        labels=labels(draw),
        attributes={"kernel": kernel} if (kernel := draw(st.sampled_from(KERNELS))) else {},
    )


def labels(draw: st.DrawFn) -> dict[str, str]:
    zone = draw(st.sampled_from(ZONES))
    rack = draw(st.none() | st.integers(1, 12))
    return {**({"zone": zone} if zone else {}), **({"rack": str(rack)} if rack else {})}


def resources(draw: st.DrawFn) -> Resources:
    return Resources(cpu=draw(st.integers(1, 6000)) / 1000,
                     memory=draw(st.integers(1, 48)) * 256 * MiB)


def ports_for(draw: st.DrawFn) -> tuple[tuple[str, ...], dict[str, int]]:
    names = tuple(draw(st.lists(st.sampled_from(PORT_NAMES), max_size=3, unique=True)))
    static = {name: draw(st.sampled_from(STATIC_POOL)) for name in names if draw(st.booleans())
              and draw(st.booleans())}
    return names, static


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    cluster = tuple(draw(nodes(i)) for i in range(draw(st.integers(1, 20))))
    model = {node.name: ModelNode(node) for node in cluster}
    instances: list[Instance] = []
    for n in range(draw(st.integers(0, 30))):
        node = draw(st.sampled_from(cluster)).name
        held, res = model[node], resources(draw)
        state = draw(st.sampled_from([InstanceState.RUNNING, InstanceState.STOPPING,
                                      InstanceState.SCHEDULED, InstanceState.STOPPED,
                                      InstanceState.LOST]))
        free = sorted(held.free_range_ports())
        ports = {f"p{k}": port for k, port in enumerate(free[:draw(st.integers(0, 2))])}
        instance = make_instance(f"e{n}", node=node, state=state, cpu=res.cpu,
                                 memory=res.memory, ports=ports,
                                 service=draw(st.sampled_from(["web", "db"])),
                                 desired=draw(st.sampled_from([DesiredState.RUN] * 4
                                                              + [DesiredState.STOP])),
                                 migrate=draw(st.sampled_from([False] * 4 + [True])))
        if state in TERMINAL_STATES:
            instances.append(instance)  # may "overlap" anything: it holds nothing
            continue
        cpu, memory = round(res.cpu * 1000), res.memory
        if (held.cpu + cpu <= round(held.node.capacity.cpu * 1000)
                and held.memory + memory <= held.node.capacity.memory):
            held.cpu, held.memory = held.cpu + cpu, held.memory + memory
            held.ports.extend(ports.values())
            instances.append(instance)
    instances.append(make_instance("elsewhere", node="deregistered", cpu=100))
    order = draw(st.permutations(instances))
    return Snapshot(nodes=cluster, instances=tuple(order))


@st.composite
def batches(draw: st.DrawFn) -> list[PlacementRequest]:
    requests = []
    for n in range(draw(st.integers(0, 30))):
        names, static = ports_for(draw)
        requests.append(PlacementRequest(
            instance_id=f"r{n}", app="app", service=draw(st.sampled_from(["web", "db"])),
            resources=resources(draw), port_names=names, static_ports=static,
            driver=draw(st.sampled_from([None, None, "process", "sandbox"])),
            placement=draw(placements())))
    return requests


@st.composite
def placements(draw: st.DrawFn) -> PlacementSpec:
    if draw(st.booleans()):
        return PlacementSpec()
    return PlacementSpec(
        constraints=tuple(draw(st.lists(st.sampled_from(sorted(CONSTRAINTS)), max_size=2))),
        distinct_hosts=draw(st.booleans()),
        spread=draw(st.sampled_from([None, "zone"])))


def check(snapshot: Snapshot, requests: list[PlacementRequest], plan: Plan) -> None:
    placed = {p.instance_id: p for p in plan.placements}
    failed = {f.instance_id: f for f in plan.failures}
    assert len(placed) == len(plan.placements) and len(failed) == len(plan.failures)
    assert not placed.keys() & failed.keys()
    assert placed.keys() | failed.keys() == {r.instance_id for r in requests}

    model = model_of(snapshot)
    for request in requests:
        feasible = [name for name, held in model.items() if fits(held, request)]
        if request.instance_id in failed:
            assert not feasible, f"{request.instance_id} failed but fits on {feasible}"
            failure = failed[request.instance_id]
            assert failure.reason
            if failure.dimensions:  # each node rejected on exactly one dimension
                assert sum(failure.dimensions.values()) == len(snapshot.nodes)
            else:  # a malformed request: two names pinning one port
                static = list(request.static_ports.values())
                assert len(set(static)) < len(static)
            continue
        placement = placed[request.instance_id]
        assert placement.node in feasible
        held = model[placement.node]
        if request.placement.spread == "zone":  # the fewest of the service among the feasible
            zones = per_zone(model, request.service)
            assert zones[held.zone] == min(zones[model[name].zone] for name in feasible)
        assert placement.address == held.node.address
        assert placement.ports.keys() == set(request.port_names) | request.static_ports.keys()
        lo, hi = held.node.port_range
        for name, port in placement.ports.items():
            if name in request.static_ports:
                assert port == request.static_ports[name]
            else:
                assert lo <= port <= hi
            assert port not in held.node.reserved_ports
            assert port not in held.ports
        assert len(set(placement.ports.values())) == len(placement.ports)
        held.cpu += round(request.resources.cpu * 1000)
        held.memory += request.resources.memory
        held.ports.extend(placement.ports.values())
        held.services[request.service] += 1

    for held in model.values():
        assert held.cpu <= round(held.node.capacity.cpu * 1000)
        assert held.memory <= held.node.capacity.memory
        assert len(held.ports) == len(set(held.ports))


@settings(max_examples=200, deadline=None)
@given(snapshot=snapshots(), requests=batches())
def test_plans_obey_every_rule(snapshot: Snapshot, requests: list[PlacementRequest]) -> None:
    check(snapshot, requests, schedule(snapshot, requests))


@settings(max_examples=100, deadline=None)
@given(zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=12),
       count=st.integers(0, 40), distinct=st.booleans(), data=st.data())
def test_spread_with_room_everywhere_is_even(zones: list[str | None], count: int,
                                             distinct: bool, data: st.DataObject) -> None:
    cluster = tuple(make_node(f"n{i:02d}", cpu=64, labels={"zone": zone} if zone else {})
                    for i, zone in enumerate(zones))
    # Existing instances already even (each zone 0 or 1 more than the least), or none.
    values = sorted({zone or "" for zone in zones})
    extra = data.draw(st.sets(st.sampled_from(values)))
    first = {value: next(n.name for n in cluster if n.labels.get("zone", "") == value)
             for value in values}
    existing = tuple(make_instance(f"e-{value}", node=first[value]) for value in sorted(extra))
    if distinct:
        count = min(count, len(cluster) - len(existing))
    requests = [PlacementRequest(instance_id=f"r{n}", app="app", service="web",
                                 resources=Resources(cpu=0.1, memory=64 * MiB),
                                 placement=PlacementSpec(spread="zone", distinct_hosts=distinct))
                for n in range(count)]
    plan = schedule(Snapshot(nodes=cluster, instances=existing), requests)
    zone_of = {n.name: n.labels.get("zone", "") for n in cluster}
    counts = Counter({value: 0 for value in values})
    counts.update(zone_of[i.node or ""] for i in existing)
    counts.update(zone_of[p.node] for p in plan.placements)
    if not distinct:
        assert plan.failures == ()
        assert max(counts.values()) - min(counts.values()) <= 1
    else:  # a zone runs out of nodes: the others stay within one of each other
        assert len(plan.placements) == count
        nodes_in = Counter(zone_of.values())
        open_counts = [counts[v] for v in values if counts[v] < nodes_in[v]]
        assert not open_counts or max(open_counts) - min(open_counts) <= 1
        assert all(counts[v] <= min(open_counts, default=counts[v]) + 1 for v in values)


@settings(max_examples=50, deadline=None)
@given(snapshot=snapshots(), requests=batches(), data=st.data())
def test_plans_do_not_depend_on_snapshot_order(snapshot: Snapshot,
                                               requests: list[PlacementRequest],
                                               data: st.DataObject) -> None:
    reordered = Snapshot(nodes=tuple(data.draw(st.permutations(snapshot.nodes))),
                         instances=tuple(data.draw(st.permutations(snapshot.instances))))
    assert schedule(reordered, requests) == schedule(snapshot, requests)


@settings(max_examples=50, deadline=None)
@given(snapshot=snapshots())
def test_usage_matches_the_model(snapshot: Snapshot) -> None:
    usage = node_usage(snapshot)
    model = model_of(snapshot)
    assert usage.keys() == model.keys()
    for name, held in model.items():
        assert usage[name].cpu_milli == held.cpu
        assert usage[name].memory == held.memory
        assert usage[name].ports == tuple(sorted(set(held.ports)))
    counts = Counter(i.node for i in snapshot.instances if holds(i) and i.node in model)
    assert {name: u.instances for name, u in usage.items() if u.instances} == dict(counts)
