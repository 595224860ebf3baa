"""Which nodes can take a request, and why the others cannot.

A request is reduced once to a `Need` (integer millicores, bytes, port counts); each node is
then checked against its `NodeBudget`. A node that cannot take the request is rejected on one
*dimension*, the first failing check in this order:

    not ready -> driver -> constraints (in spec order) -> distinct_hosts
              -> static port -> cpu -> memory -> dynamic ports

The first three depend only on the node, the request's driver and its constraints, so
`schedule.py` filters on them once per batch and distinct (driver, constraints) pair
(`node_reject`, `constraint_reject`); the rest depend on what the batch has placed so far
(`schedule.py` checks distinct_hosts, `resource_reject` the rest). Like Nomad's `AllocMetric`,
the rejections of one failed request are counted per dimension over all nodes, and `explain`
turns the counts into a sentence a user can act on:

    no node can fit 64GiB memory: 3 nodes exhausted memory, 1 node not ready
    no node satisfies constraint "zone != c": 3 nodes failed constraint "zone != c",
        1 node already runs web (distinct_hosts)

Neighbours: `snapshot.py` (budgets), `schedule.py` (the loop), `ports.py` (which ports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.model.application import PlacementSpec, Resources
from corral.model.constraints import Constraint, parse_constraint
from corral.model.instance import Instance
from corral.model.node import Node
from corral.model.units import format_size
from corral.scheduler.snapshot import NodeBudget, millicores

__all__ = [
    "CPU", "DISTINCT_HOSTS", "MEMORY", "NOT_READY", "PORTS", "Need", "PlacementRequest",
    "constraint_dimension", "constraint_reject", "driver_dimension", "effective_driver",
    "explain", "node_reject", "parse_constraints", "port_dimension", "request_for",
    "resource_reject",
]

NOT_READY = "not ready"
CPU = "cpu"
MEMORY = "memory"
PORTS = "ports"  # not enough free ports left in the node's dynamic range
DISTINCT_HOSTS = "distinct_hosts"  # the node already runs an instance of the service
# Per-port, per-driver and per-constraint dimensions carry the name, so the message can say
# which one.
_DRIVER_PREFIX = "driver "
_PORT_PREFIX = "port "
_CONSTRAINT_PREFIX = "constraint "

# The driver every Linux host can run; assumed usable on a node that reported no drivers.
_FALLBACK_DRIVER = "process"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementRequest:
    """One instance to place. `namespace`, `app` and `service` name the service whose other
    instances `placement.distinct_hosts` and `placement.spread` count."""

    instance_id: str
    namespace: str = "default"
    app: str
    service: str
    resources: Resources
    port_names: tuple[str, ...] = ()
    static_ports: dict[str, int] = field(default_factory=dict)
    driver: str | None = None  # None: each node's default driver
    placement: PlacementSpec = field(default_factory=PlacementSpec)


def request_for(instance: Instance, placement: PlacementSpec = PlacementSpec()) -> PlacementRequest:
    """The request to place an instance record (normally one still `pending`)."""
    return PlacementRequest(
        instance_id=instance.id, namespace=instance.namespace, app=instance.app,
        service=instance.service,
        resources=instance.resources, port_names=instance.port_names,
        static_ports=dict(instance.static_ports), driver=instance.driver,
        placement=placement,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Need:
    """A request in the units budgets are kept in, computed once per request."""

    cpu: int  # millicores
    memory: int
    static_ports: tuple[int, ...]  # sorted, distinct
    dynamic: tuple[str, ...]  # names of the ports to pick from the node's range, in order
    driver: str | None
    service: str = ""  # for messages
    invalid: str = ""  # why no node could ever take it, for a malformed request

    @classmethod
    def of(cls, request: PlacementRequest) -> Need:
        static = sorted(request.static_ports.values())
        invalid = ""
        duplicates = sorted({p for p in static if static.count(p) > 1})
        if duplicates:
            invalid = f"port {duplicates[0]} is pinned by two of the instance's ports"
        return cls(
            cpu=millicores(request.resources.cpu),
            memory=request.resources.memory,
            static_ports=tuple(sorted(set(static))),
            dynamic=tuple(dict.fromkeys(
                name for name in request.port_names if name not in request.static_ports)),
            driver=request.driver,
            service=request.service,
            invalid=invalid,
        )


def parse_constraints(texts: tuple[str, ...]) -> tuple[Constraint, ...]:
    """The request's constraints, parsed; raises ValueError naming the bad one. The spec was
    checked with the same parser, so this fails only for records written some other way."""
    parsed = []
    for text in texts:
        try:
            parsed.append(parse_constraint(text))
        except ValueError as exc:
            raise ValueError(f"invalid constraint {text!r}: {exc}") from None
    return tuple(parsed)


def constraint_dimension(constraint: Constraint) -> str:
    return f'{_CONSTRAINT_PREFIX}"{constraint.text}"'


def constraint_reject(node: Node, constraints: tuple[Constraint, ...]) -> str | None:
    """The first constraint the node fails, as a dimension, or None."""
    for constraint in constraints:
        if not constraint.matches(node):
            return constraint_dimension(constraint)
    return None


def driver_dimension(driver: str) -> str:
    return _DRIVER_PREFIX + driver


def port_dimension(port: int) -> str:
    return f"{_PORT_PREFIX}{port}"


def effective_driver(node: Node, driver: str | None) -> str:
    return driver if driver is not None else node.default_driver


def _driver_usable(node: Node, driver: str) -> bool:
    if not node.drivers:
        return driver == _FALLBACK_DRIVER
    return node.driver_usable(driver)


def node_reject(budget: NodeBudget, driver: str | None) -> str | None:
    """The dimension on which the node itself rules the request out, or None."""
    if not budget.ready:
        return NOT_READY
    name = effective_driver(budget.node, driver)
    if not _driver_usable(budget.node, name):
        return driver_dimension(name)
    return None


def resource_reject(budget: NodeBudget, need: Need) -> str | None:
    """The dimension on which what is still free on the node falls short, or None."""
    used = budget.used_ports
    in_range = 0
    for port in need.static_ports:
        if port in used:
            return port_dimension(port)
        if budget.port_lo <= port <= budget.port_hi:
            in_range += 1
    if budget.free_cpu < need.cpu:
        return CPU
    if budget.free_memory < need.memory:
        return MEMORY
    # A static port inside the dynamic range takes one of the free range ports as well.
    if len(need.dynamic) + in_range > budget.free_range_ports:
        return PORTS
    return None


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def _phrase(dimension: str, count: int, service: str) -> str:
    """How one dimension's count reads in the list after the colon."""
    if dimension == NOT_READY:
        return f"{_nodes(count)} not ready"
    if dimension in (CPU, MEMORY):
        return f"{_nodes(count)} exhausted {dimension}"
    if dimension == PORTS:
        return f"{_nodes(count)} exhausted dynamic ports"
    if dimension.startswith(_DRIVER_PREFIX):
        return f"{_nodes(count)} cannot run {dimension}"
    if dimension.startswith(_CONSTRAINT_PREFIX):
        return f"{_nodes(count)} failed {dimension}"
    if dimension == DISTINCT_HOSTS:
        verb = "runs" if count == 1 else "run"
        return f"{_nodes(count)} already {verb} {service or 'the service'} ({DISTINCT_HOSTS})"
    verb = "has" if count == 1 else "have"
    return f"{_nodes(count)} {verb} {dimension} in use"


def _headline(dimension: str, need: Need) -> str:
    """What the request asked for that no node could give, named by its blocking dimension."""
    if dimension == CPU:
        return f"no node can fit {need.cpu / 1000:g} cpu"
    if dimension == MEMORY:
        return f"no node can fit {format_size(need.memory)} memory"
    if dimension == PORTS:
        count = len(need.dynamic)
        return f"no node has {count} free dynamic port{'s' if count != 1 else ''}"
    if dimension.startswith(_DRIVER_PREFIX):
        return f"no node can run {dimension}"
    if dimension.startswith(_PORT_PREFIX):
        return f"no node has {dimension} free"
    if dimension.startswith(_CONSTRAINT_PREFIX) or dimension == DISTINCT_HOSTS:
        return f"no node satisfies {dimension}"
    return "no node is ready"


def explain(need: Need, dimensions: Mapping[str, int]) -> str:
    """A sentence for a failed request from its per-dimension rejection counts.

    The headline names the most common dimension that the request could change (resources,
    ports, driver, placement rules) rather than "not ready": a user cannot make nodes ready
    from a spec file, but the list after the colon still says how many were.
    """
    if not dimensions:
        return "no nodes registered"
    ordered = sorted(dimensions.items(), key=lambda item: (-item[1], item[0]))
    actionable = [dim for dim, _ in ordered if dim != NOT_READY]
    headline = _headline(actionable[0] if actionable else NOT_READY, need)
    return f"{headline}: " + ", ".join(_phrase(dim, count, need.service)
                                       for dim, count in ordered)
