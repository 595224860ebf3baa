"""The processes of one instance as `corral ps --processes ID` shows them: pid (on the
host), parent pid, user, cpu, resident memory and command line, read from `/proc` through
psutil for the pids the instance's driver lists (`SupervisedDriver.pids`: its cgroup).

cpu is the percentage of one core the process used over its whole life, as `ps(1)`
shows it (no sampling interval, so one request answers at once); `corral top` shows the
instance's recent cpu, which the agent samples for the usage reports.

Neighbours: `agent/api.py` (the endpoint), `drivers/supervised.py` (which pids).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = ["ProcessInfo", "describe_processes"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessInfo:
    pid: int
    ppid: int
    user: str
    cpu: float  # percent of one core, averaged over the process's life
    rss: int  # bytes
    command: str  # the command line, or `[name]` when it has none

    def to_data(self) -> dict[str, Any]:
        return asdict(self)


def _user(proc: psutil.Process) -> str:
    try:
        return proc.username()
    except (KeyError, psutil.Error):  # a uid with no name on this host
        return str(proc.uids().real)


def describe_processes(pids: Iterable[int], *, now: float) -> list[ProcessInfo]:
    """What is known of each of `pids` at wall time `now`, sorted by pid; a process that
    ended meanwhile is left out."""
    found = []
    for pid in sorted(set(pids)):
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                age = max(now - proc.create_time(), 1e-3)
                argv = proc.cmdline()
                found.append(ProcessInfo(
                    pid=pid, ppid=proc.ppid(), user=_user(proc),
                    cpu=round(100.0 * (times.user + times.system) / age, 1),
                    rss=proc.memory_info().rss,
                    command=" ".join(argv) if argv else f"[{proc.name()}]"))
        except psutil.Error:
            continue
    return found
