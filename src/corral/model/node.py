"""A node: a machine running `corral agent`, with what it offers and whether it is usable.

```
          register            missed heartbeats
  (new) ----------> ready -------------------------> down
                    ^   |  drain           cordon     |
                    |   +-------> draining --> ineligible
                    +------------- uncordon / heartbeat after down
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["DEFAULT_PORT_RANGE", "Node", "NodeResources", "NodeState"]

# Below Linux's default ephemeral range (32768-60999), so outgoing connections of other
# programs on the host do not take an instance's port first.
DEFAULT_PORT_RANGE = (20000, 32000)


class NodeState(StrEnum):
    READY = "ready"
    DOWN = "down"
    DRAINING = "draining"
    INELIGIBLE = "ineligible"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeResources:
    cpu: float  # cores
    memory: int  # bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    name: str
    address: str  # the IP instances are reached at
    agent_url: str = ""  # where the server reaches the agent (logs, exec, signals)
    state: NodeState = NodeState.READY
    labels: dict[str, str] = field(default_factory=dict)
    capacity: NodeResources
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    reserved_ports: tuple[int, ...] = ()  # in use on the host by something else at register
    drivers: dict[str, str] = field(default_factory=dict)  # every driver -> "" or why not usable
    default_driver: str = "process"
    attributes: dict[str, str] = field(default_factory=dict)  # os, kernel, arch, version
    registered_at: float
    heartbeat_at: float
    drain_deadline: float | None = None  # while draining: when the rest is stopped anyway

    def driver_usable(self, name: str) -> bool:
        return self.drivers.get(name) == ""
