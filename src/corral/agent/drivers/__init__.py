"""Isolation drivers, by the name a spec's `isolation.driver` uses.

The registry is this explicit dict: a driver exists when it is listed here, never because a
module was imported. Each value builds a driver from keyword arguments the agent passes
(`cgroups`, `cgroup_parent`, `clock`, ...). The protocol is in `drivers/base.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.agent.drivers.base import Driver
from corral.agent.drivers.process import ProcessDriver

__all__ = ["DRIVERS"]

DRIVERS: dict[str, Callable[..., Driver]] = {
    "process": ProcessDriver,
}
