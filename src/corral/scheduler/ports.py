"""Host ports for a placed instance: its static ports as pinned, the others from the node's range.

Every instance shares its node's IP, so a port may be held by one instance per node at a time.
A dynamic port is never one already held on the node, reserved on the host, or pinned by the
same instance's static ports (all in `NodeBudget.used_ports`, kept per node so choosing costs
nothing in the number of instances).

Probing starts at an offset taken from a stable hash of the instance id and walks upward with
wrap-around. Always taking the lowest free port would hand a port just released by a stopped
instance straight to its replacement, and clients still connected to the old one would reach
the new one. `zlib.crc32`, not `hash()`: Python salts string hashes per process, and the same
snapshot must give the same plan in every process.

Neighbours: `feasibility.py` has already checked that enough ports are free; `schedule.py`
commits the chosen ports into the budget.
"""

from __future__ import annotations

import zlib

from corral.scheduler.feasibility import Need, PlacementRequest
from corral.scheduler.snapshot import NodeBudget

__all__ = ["pick_ports", "start_offset"]


def start_offset(instance_id: str, size: int) -> int:
    """Where in a range of `size` ports the probe for this instance begins."""
    return zlib.crc32(instance_id.encode()) % size if size > 0 else 0


def pick_ports(budget: NodeBudget, request: PlacementRequest, need: Need) -> dict[str, int]:
    """Name -> host port for every port of the request, in `port_names` order then any other
    static names sorted. Raises ValueError if the range has too few free ports, which
    `feasibility.resource_reject` rules out first."""
    lo, size = budget.port_lo, budget.port_hi - budget.port_lo + 1
    taken, pinned = budget.used_ports, set(need.static_ports)
    offset = start_offset(request.instance_id, size)
    dynamic: dict[str, int] = {}
    step = 0
    for name in need.dynamic:
        while True:
            if step >= size:
                raise ValueError(f"node {budget.name} has too few free ports in its range")
            port = lo + (offset + step) % size
            step += 1
            if port not in taken and port not in pinned:
                dynamic[name] = port
                break
    ports = {name: request.static_ports[name] if name in request.static_ports else dynamic[name]
             for name in request.port_names}
    for name in sorted(request.static_ports.keys() - ports.keys()):
        ports[name] = request.static_ports[name]
    return ports
