"""Isolation drivers, by the name a spec's `isolation.driver` uses.

The registry is the explicit `DRIVERS` dict: a driver exists when it is listed here, never
because a module was imported. Each value builds a driver from keyword arguments
(`cgroups`, `cgroup_parent`, `clock`). `make_drivers` builds them all for one agent, sharing
one cgroup detection, and says which are usable on this node and why the others are not;
`DriverRegistry.recover` hands a saved `TaskHandle` back to the driver that started it.
The protocol is in `drivers/base.py`; `drivers/supervised.py` is the shim-based base class
every driver here builds on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.agent.cgroups import CgroupRoot, NoCgroups, detect
from corral.agent.drivers.base import Driver, TaskHandle
from corral.agent.drivers.oci import OciDriver
from corral.agent.drivers.process import ProcessDriver
from corral.agent.drivers.sandbox import SandboxDriver

__all__ = ["DRIVERS", "DriverRegistry", "make_drivers"]

DRIVERS: dict[str, Callable[..., Driver]] = {
    "oci": OciDriver,
    "process": ProcessDriver,
    "sandbox": SandboxDriver,
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
    # Every driver built, usable or not: an instance adopted after an agent restart is
    # handed back to the driver named in its handle, even one that is no longer usable
    # (bwrap uninstalled meanwhile), so that it can at least be watched and stopped.
    built: dict[str, Driver] = field(default_factory=dict)

    def for_handle(self, handle: TaskHandle) -> Driver | None:
        """The driver that started `handle` (its `driver` field), or None if unknown."""
        return self.built.get(handle.driver) or self.usable.get(handle.driver)

    async def recover(self, handle: TaskHandle) -> Driver | None:
        """Re-attach to an instance an earlier agent process started: its driver if the
        instance runs or its exit was recorded (`wait` then returns it), else None (the
        caller destroys it through `for_handle`)."""
        driver = self.for_handle(handle)
        if driver is None or not await driver.recover(handle):
            return None
        return driver

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
                          cgroup_parent=cgroup_parent, built=built)
