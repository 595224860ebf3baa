"""Isolation drivers, by the name a spec's `isolation.driver` uses.

The registry is the explicit `DRIVERS` dict: a driver exists when it is listed here, never
because a module was imported. Each value builds a driver from keyword arguments
(`cgroups`, `cgroup_parent`, `clock`). `make_drivers` builds them all for one agent, sharing
one cgroup detection, and says which are usable on this node and why the others are not.
The protocol is in `drivers/base.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.agent.cgroups import CgroupRoot, NoCgroups, detect
from corral.agent.drivers.base import Driver
from corral.agent.drivers.process import ProcessDriver

__all__ = ["DRIVERS", "DriverRegistry", "make_drivers"]

DRIVERS: dict[str, Callable[..., Driver]] = {
    "process": ProcessDriver,
}

# The first usable one is the node's default: stronger isolation first (DESIGN.md: sandbox
# is the default when running as root).
_PREFERENCE = ("sandbox", "oci", "process")


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverRegistry:
    usable: dict[str, Driver]
    status: dict[str, str]  # every known driver -> "" if usable, else why not
    default: str
    cgroups: CgroupRoot | NoCgroups
    cgroup_parent: str

    async def cleanup_stale(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Kill and remove the instance cgroups of an earlier agent, except `keep` (the
        instances adopted). Names removed; nothing to do without cgroups."""
        if isinstance(self.cgroups, NoCgroups):
            return []
        return await self.cgroups.remove_stale(self.cgroup_parent, set(keep))

    async def remove_parent(self) -> None:
        """After every instance stopped: remove the (now empty) parent group too."""
        if not isinstance(self.cgroups, NoCgroups):
            await self.cgroups.remove_parent(self.cgroup_parent)


def make_drivers(*, cgroup_parent: str = "corral", cgroups: CgroupRoot | NoCgroups | None = None,
                 clock: Callable[[], float] = time.time) -> DriverRegistry:
    found = detect() if cgroups is None else cgroups
    built = {name: make(cgroups=found, cgroup_parent=cgroup_parent, clock=clock)
             for name, make in sorted(DRIVERS.items())}
    status = {name: d.available() for name, d in built.items()}
    usable = {name: d for name, d in built.items() if status[name] == ""}
    default = next((n for n in _PREFERENCE if n in usable), "process")
    return DriverRegistry(usable=usable, status=status, default=default, cgroups=found,
                          cgroup_parent=cgroup_parent)
