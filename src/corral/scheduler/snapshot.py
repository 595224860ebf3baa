"""The scheduler's input, and what each node still has free while one batch is decided.

A `Snapshot` is the cluster as the scheduler sees it: every node and every instance record,
read at one store revision. An instance holds cpu, memory and ports on its node while it is
placed there and not terminal (`stopping` still holds: its process may not have exited yet).

`build_budgets` turns a snapshot into one `NodeBudget` per node in a single pass over the
instances, so placing each request costs work in the number of nodes, never in the number of
instances. `node_usage` reports the same sums to the API (allocated next to capacity).

Cpu is counted in integer millicores and memory in bytes: summing floats in a different order
would give different free amounts, and two runs over the same snapshot must decide the same.

Neighbours: `feasibility.py` reads budgets, `ports.py` picks ports from them, `rank.py` scores
them, `schedule.py` builds them and commits each decision into them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from corral.model.instance import TERMINAL_STATES, Instance
from corral.model.node import Node, NodeState

__all__ = ["NodeBudget", "NodeUsage", "Snapshot", "build_budgets", "holds_resources",
           "millicores", "node_usage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    nodes: tuple[Node, ...]
    instances: tuple[Instance, ...]
    # What the instances hold per node, exactly `node_usage(nodes, instances)`, when the
    # caller keeps it current anyway (the server's index): budgets are then built in the
    # number of nodes, without a pass over every instance.
    usage: Mapping[str, NodeUsage] | None = None
    # Per service (namespace, app, service): node -> its instances there that count for
    # placement rules (`colocation.counts_for_placement`), for at least every service the
    # requests place, when the caller keeps them current (the server's index). With both
    # `usage` and `placed`, `instances` is never read: it may be left empty, and a pass
    # costs O(nodes + requests) however many instances the cluster runs.
    placed: Mapping[tuple[str, str, str], Mapping[str, int]] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUsage:
    """What the instances placed on one node hold (allocated, not measured usage)."""

    cpu_milli: int  # millicores
    memory: int  # bytes
    ports: tuple[int, ...]  # sorted; the node's reserved ports are on the node record
    instances: int

    @property
    def cpu(self) -> float:
        """Cores, like `NodeResources.cpu`."""
        return self.cpu_milli / 1000


def millicores(cpu: float) -> int:
    return round(cpu * 1000)


def holds_resources(instance: Instance) -> bool:
    return instance.node is not None and instance.state not in TERMINAL_STATES


def _held_ports(instance: Instance) -> Iterable[int]:
    # Static ports are normally in `ports` too; counting both guards against a record whose
    # dynamic ports have not been written yet.
    yield from instance.ports.values()
    yield from instance.static_ports.values()


@dataclass(slots=True)
class _Tally:
    cpu: int = 0
    memory: int = 0
    ports: set[int] = field(default_factory=set)
    instances: int = 0


def _tally(snapshot: Snapshot) -> dict[str, _Tally]:
    """Per node name, the sums over the instances that hold resources there. Instances on a
    node missing from the snapshot (deregistered) are left out: nothing can be placed there."""
    if snapshot.usage is not None:
        given = snapshot.usage
        empty = NodeUsage(cpu_milli=0, memory=0, ports=(), instances=0)
        return {node.name: _Tally(cpu=u.cpu_milli, memory=u.memory, ports=set(u.ports),
                                  instances=u.instances)
                for node in snapshot.nodes for u in (given.get(node.name, empty),)}
    tallies = {node.name: _Tally() for node in snapshot.nodes}
    for instance in snapshot.instances:
        if not holds_resources(instance):
            continue
        tally = tallies.get(instance.node or "")
        if tally is None:
            continue
        tally.cpu += millicores(instance.resources.cpu)
        tally.memory += instance.resources.memory
        tally.ports.update(_held_ports(instance))
        tally.instances += 1
    return tallies


def node_usage(snapshot: Snapshot) -> dict[str, NodeUsage]:
    """Allocated resources per node name, for every node in the snapshot."""
    return {
        name: NodeUsage(cpu_milli=tally.cpu, memory=tally.memory,
                        ports=tuple(sorted(tally.ports)), instances=tally.instances)
        for name, tally in _tally(snapshot).items()
    }


@dataclass(slots=True, kw_only=True)
class NodeBudget:
    """What one node still has free during one `schedule` call.

    Deliberately mutable, unlike every record: it is scratch state private to one call,
    updated after each placement so that a batch never overcommits a node. Free amounts can
    be negative when a node's capacity shrank below what its instances already hold.
    """

    node: Node
    ready: bool
    capacity_cpu: int  # millicores
    capacity_memory: int
    free_cpu: int  # millicores
    free_memory: int
    used_ports: set[int]  # held by instances, reserved on the host, or planned in this batch
    port_lo: int
    port_hi: int  # inclusive
    free_range_ports: int  # ports in [port_lo, port_hi] not in used_ports
    index: int = 0  # position in name order among the batch's budgets
    version: int = 0  # placements taken so far: tells `ranked.py` a score is stale

    @property
    def name(self) -> str:
        return self.node.name

    def in_range(self, port: int) -> bool:
        return self.port_lo <= port <= self.port_hi

    def take(self, *, cpu: int, memory: int, ports: Iterable[int]) -> None:
        """Commit one placement: its resources are no longer free for the rest of the batch."""
        self.version += 1
        self.free_cpu -= cpu
        self.free_memory -= memory
        for port in ports:
            if port not in self.used_ports:
                self.used_ports.add(port)
                if self.in_range(port):
                    self.free_range_ports -= 1


def _budget(node: Node, tally: _Tally, index: int) -> NodeBudget:
    lo, hi = node.port_range
    used = tally.ports | set(node.reserved_ports)
    range_size = max(0, hi - lo + 1)
    used_in_range = sum(1 for port in used if lo <= port <= hi)
    capacity_cpu = millicores(node.capacity.cpu)
    return NodeBudget(
        node=node,
        ready=node.state == NodeState.READY,
        capacity_cpu=capacity_cpu,
        capacity_memory=node.capacity.memory,
        free_cpu=capacity_cpu - tally.cpu,
        free_memory=node.capacity.memory - tally.memory,
        used_ports=used,
        port_lo=lo,
        port_hi=hi,
        free_range_ports=range_size - used_in_range,
        index=index,
    )


def build_budgets(snapshot: Snapshot) -> list[NodeBudget]:
    """One budget per node, sorted by node name: the order in which ties are broken, so the
    order of `snapshot.nodes` never changes a plan. A name listed twice keeps its last record."""
    tallies = _tally(snapshot)
    nodes = {node.name: node for node in snapshot.nodes}
    return [_budget(nodes[name], tallies[name], index)
            for index, name in enumerate(sorted(nodes))]
