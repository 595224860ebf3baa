"""Control groups for instances: limits, membership, kill, usage and OOM counts.

One `Cgroup` per instance, named after the instance id, under a parent group the agent owns
(`corral`, or a unique name in tests). Two layouts are handled:

* cgroup v2 (`<root>/cgroup.controllers` exists): one directory per group; the controllers
  are enabled in every ancestor's `cgroup.subtree_control`.
* cgroup v1, possibly hybrid: one directory per controller hierarchy (memory, cpu, cpuacct,
  pids, freezer), plus one in the cgroup2 mount (`<root>/unified`) when there is one, only for
  `cgroup.kill` and `cgroup.events`, which v1 lacks.

`detect()` looks at a root path (tests pass a fake tree) and returns a `CgroupRoot`, or
`NoCgroups` with the reason when the agent cannot manage cgroups (not root, no cgroup fs).

Processes join by writing their pid to every file of `Cgroup.procs_files()`: the drivers do
this from a tiny shell wrapper before `exec`, so the command starts already limited and its
children inherit the groups.

Neighbours: `agent/drivers/` (the only users), `model/application.py` (`Resources`).
Interface files are read and written synchronously: they are kernel memory, never disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.model.application import Resources

__all__ = [
    "CPU_PERIOD_US", "DEFAULT_ROOT", "Cgroup", "CgroupError", "CgroupRoot", "CgroupUsage",
    "NoCgroups", "detect",
]

DEFAULT_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota below 1 ms per period.
_MIN_QUOTA_US = 1_000
_V1_LIMIT_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
_V2_CONTROLLERS = ("cpu", "memory", "pids")
_FREEZE_WAIT = 1.0


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file or directory."""


@dataclass(frozen=True, slots=True)
class NoCgroups:
    """Cgroups cannot be used here; `reason` says why, for `corral nodes` and the logs."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupUsage:
    cpu_seconds: float
    memory: int  # bytes in use, without reclaimable page cache (what `docker stats` shows)
    pids: int


def detect(root: Path = DEFAULT_ROOT, *, euid: int | None = None,
           kill_file: bool = True) -> CgroupRoot | NoCgroups:
    """The cgroup layout under `root`. `euid` defaults to the process's; `kill_file=False`
    ignores `cgroup.kill`, so tests can exercise the freezer fallback on kernels with both."""
    uid = os.geteuid() if euid is None else euid
    if uid != 0:
        return NoCgroups(f"not running as root (euid {uid}): cannot create cgroups")
    if (root / "cgroup.controllers").is_file():
        available = _read(root / "cgroup.controllers").split()
        missing = [c for c in _V2_CONTROLLERS if c not in available]
        if missing:
            return NoCgroups(f"cgroup v2 controllers not available at {root}: "
                             f"{', '.join(missing)}")
        return CgroupRoot(version="v2", mounts={"": root}, kill_file=kill_file)
    mounts = {c: root / c for c in _V1_LIMIT_CONTROLLERS if (root / c / "cgroup.procs").is_file()}
    if not mounts:
        return NoCgroups(f"no cgroup filesystem at {root}")
    missing = [c for c in _V1_LIMIT_CONTROLLERS if c not in mounts]
    if missing:
        return NoCgroups(f"cgroup v1 controllers not mounted under {root}: {', '.join(missing)}")
    if (root / "freezer" / "cgroup.procs").is_file():
        mounts["freezer"] = root / "freezer"
    if (root / "unified" / "cgroup.procs").is_file():
        mounts["unified"] = root / "unified"
    if "freezer" not in mounts and not (kill_file and "unified" in mounts):
        return NoCgroups(f"neither a freezer hierarchy nor a cgroup2 mount under {root}: "
                         "cannot kill every process of an instance")
    return CgroupRoot(version="v1", mounts=mounts, kill_file=kill_file)


class CgroupRoot:
    """A detected layout: which hierarchy holds which controller. Makes `Cgroup`s and does
    the agent's start-up cleanup of groups no instance owns any more."""

    def __init__(self, *, version: Literal["v1", "v2"], mounts: dict[str, Path],
                 kill_file: bool = True) -> None:
        self.version = version
        # Role ("memory", "cpu", ..., "unified"; "" for v2) -> hierarchy mount point.
        self.mounts = dict(mounts)
        self.kill_file = kill_file
        # The hierarchy that decides membership: `pids()`, `populated()` and the kill read
        # it, and processes join it first. A process caught between joining it and joining
        # the others is therefore still found and killed, never left behind in one of them.
        self.primary = "" if version == "v2" else "unified" if "unified" in mounts else "freezer"
        self._prepared: set[str] = set()

    def __repr__(self) -> str:
        return f"CgroupRoot({self.version}, {sorted(self.mounts.values())})"

    def group(self, parent: str, name: str) -> Cgroup:
        _check_name(parent, allow_slash=True)
        _check_name(name, allow_slash=False)
        return Cgroup(self, parent, name)

    def parent_dirs(self, parent: str) -> list[Path]:
        return _unique(m / parent for m in self.mounts.values())

    def list_instance_groups(self, parent: str) -> list[str]:
        """Names of the groups under `parent`, in any hierarchy, sorted."""
        names: set[str] = set()
        for d in self.parent_dirs(parent):
            try:
                names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
        return sorted(names)

    async def remove_stale(self, parent: str, keep: set[str], *,
                           timeout: float = 5.0) -> list[str]:
        """Kill and remove every group under `parent` whose name is not in `keep`; the
        names removed, sorted. For an agent starting up with the instances it adopted."""
        removed = []
        for name in self.list_instance_groups(parent):
            if name in keep:
                continue
            group = self.group(parent, name)
            await group.kill()
            if not await group.wait_empty(timeout):
                raise CgroupError(f"processes left in {group.dirs[0]} after kill: "
                                  f"{group.pids()}")
            await group.remove()
            removed.append(name)
        return removed

    async def remove_parent(self, parent: str) -> None:
        """Remove every group under `parent`, then `parent` itself (uninstall, tests)."""
        await self.remove_stale(parent, set())
        for d in self.parent_dirs(parent):
            await _rmdir(d, timeout=1.0)
        self._prepared.discard(parent)

    def prepare_parent(self, parent: str) -> None:
        """Create `parent`; on v2 enable our controllers from the root down to it. Done once
        per parent and process: it costs reads and writes on every start otherwise."""
        if parent in self._prepared:
            return
        for d in self.parent_dirs(parent):
            _mkdir(d)
        if self.version == "v2":
            root = self.mounts[""]
            chain = [root]
            for part in Path(parent).parts:
                chain.append(chain[-1] / part)
            for d in chain:
                control = d / "cgroup.subtree_control"
                enabled = {c.lstrip("+") for c in _read(control).split()}
                missing = [c for c in _V2_CONTROLLERS if c not in enabled]
                if missing:
                    _write(control, " ".join(f"+{c}" for c in missing))
        self._prepared.add(parent)


class Cgroup:
    """One instance's groups, in every hierarchy of the layout."""

    def __init__(self, root: CgroupRoot, parent: str, name: str) -> None:
        self.root = root
        self.parent = parent
        self.name = name
        self._dir = {role: mount / parent / name for role, mount in root.mounts.items()}
        first = self._dir[root.primary]
        self.dirs: tuple[Path, ...] = tuple(_unique([first, *self._dir.values()]))

    def __repr__(self) -> str:
        return f"Cgroup({self.parent}/{self.name}, {self.root.version})"

    def _path(self, role: str, file: str) -> Path:
        return self._dir["" if self.root.version == "v2" else role] / file

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.dirs)

    def create(self, resources: Resources, *, cpu: bool = True) -> None:
        """Make the groups and write the limits. An existing group is reused as it is, with
        the new limits: the caller removes stale groups first when it wants fresh counters.
        `cpu=False` leaves cpu unlimited for now (see `set_cpu`)."""
        self.root.prepare_parent(self.parent)
        for d in self.dirs:
            _mkdir(d)
        if self.root.version == "v2":
            _write(self._path("", "memory.max"), str(resources.memory))
            # Swap would turn an OOM kill into a slow crawl; v1's memsw does the same.
            swap = self._path("", "memory.swap.max")
            if swap.exists():
                _write(swap, "0")
            _write(self._path("", "pids.max"), str(resources.pids))
        else:
            _write(self._path("memory", "memory.limit_in_bytes"), str(resources.memory))
            memsw = self._path("memory", "memory.memsw.limit_in_bytes")
            if memsw.exists():
                _write(memsw, str(resources.memory))
            _write(self._path("pids", "pids.max"), str(resources.pids))
        self.set_cpu(resources.cpu if cpu else None)

    def set_cpu(self, cores: float | None) -> None:
        """The cpu quota (`cores` of cpu time per period), or none. Drivers start an
        instance unthrottled and set the quota once its command runs: with a small quota,
        the runtime's own set-up (bwrap, runc, the supervisor) would otherwise be throttled
        in the instance's group and take hundreds of milliseconds."""
        quota = None if cores is None else max(_MIN_QUOTA_US, round(cores * CPU_PERIOD_US))
        if self.root.version == "v2":
            _write(self._path("", "cpu.max"),
                   f"{'max' if quota is None else quota} {CPU_PERIOD_US}")
            return
        _write(self._path("cpu", "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        _write(self._path("cpu", "cpu.cfs_quota_us"), str(-1 if quota is None else quota))

    def procs_files(self) -> tuple[Path, ...]:
        """Every `cgroup.procs` a process writes its pid to in order to join, in order."""
        return tuple(d / "cgroup.procs" for d in self.dirs)

    def pids(self) -> list[int]:
        """Processes in the group (zombies excluded: the kernel drops them at exit)."""
        procs = self._dir[self.root.primary] / "cgroup.procs"
        return [int(p) for p in _read_or(procs, "").split()]

    def populated(self) -> bool:
        events = self._events_file()
        if events is not None:
            return _keyed(_read_or(events, "")).get("populated", 0) != 0
        return bool(self.pids())

    def _events_file(self) -> Path | None:
        if self.root.version == "v2":
            return self._dir[""] / "cgroup.events"
        if "unified" in self._dir:
            return self._dir["unified"] / "cgroup.events"
        return None

    async def kill(self) -> None:
        """SIGKILL every process of the group, forked and setsid'ed ones too. Returns once
        the signals are sent; `wait_empty` tells when the processes are gone."""
        if not self.exists():
            return
        kill_dir = self._dir.get("unified" if self.root.version == "v1" else "")
        if self.root.kill_file and kill_dir is not None and (kill_dir / "cgroup.kill").exists():
            _write(kill_dir / "cgroup.kill", "1")
            return
        # Without cgroup.kill a process could fork between reading the pid list and the
        # kill; frozen processes cannot, so freeze, kill the list, thaw (they die on thaw).
        for _ in range(3):
            await self._set_frozen(True)
            pids = self.pids()
            for pid in pids:
                _kill(pid)
            await self._set_frozen(False)
            if not pids or await self.wait_empty(0.5):
                return

    async def _set_frozen(self, frozen: bool) -> None:
        v2 = self.root.version == "v2"
        state = self._dir[""] / "cgroup.freeze" if v2 else self._dir["freezer"] / "freezer.state"
        _write(state, ("1" if frozen else "0") if v2 else ("FROZEN" if frozen else "THAWED"))

        def is_frozen() -> bool:
            if v2:
                return _keyed(_read(self._dir[""] / "cgroup.events")).get("frozen") == 1
            return _read(state).strip() == "FROZEN"

        # Freezing is asynchronous (FREEZING first); a task in uninterruptible sleep can hold
        # it up, in which case killing the listed pids anyway is the best left to do.
        if frozen:
            await _poll(is_frozen, _FREEZE_WAIT)

    async def wait_empty(self, timeout: float) -> bool:
        """True once no process is left in the group, False if `timeout` passed first."""
        return await _poll(lambda: not self.populated(), timeout)

    def usage(self) -> CgroupUsage:
        if self.root.version == "v2":
            d = self._dir[""]
            cpu = _keyed(_read(d / "cpu.stat")).get("usage_usec", 0) / 1e6
            memory = int(_read(d / "memory.current"))
            cache = _keyed(_read(d / "memory.stat")).get("inactive_file", 0)
            pids = int(_read(d / "pids.current"))
        else:
            cpu = int(_read(self._path("cpuacct", "cpuacct.usage"))) / 1e9
            memory = int(_read(self._path("memory", "memory.usage_in_bytes")))
            cache = _keyed(_read(self._path("memory", "memory.stat"))).get(
                "total_inactive_file", 0)
            pids = int(_read(self._path("pids", "pids.current")))
        return CgroupUsage(cpu_seconds=cpu, memory=max(0, memory - cache), pids=pids)

    def oom_killed(self) -> int:
        """How many processes of the group the OOM killer has killed since it was created
        (0: none)."""
        if self.root.version == "v2":
            return _keyed(_read(self._dir[""] / "memory.events")).get("oom_kill", 0)
        return _keyed(_read(self._path("memory", "memory.oom_control"))).get("oom_kill", 0)

    async def remove(self, timeout: float = 2.0) -> None:
        """Remove the group from every hierarchy; idempotent. The kernel refuses while a
        process is still leaving (it just got SIGKILL), hence the retries."""
        for d in self.dirs:
            await _rmdir(d, timeout=timeout)


def _check_name(name: str, *, allow_slash: bool) -> None:
    parts = name.split("/") if allow_slash else [name]
    if not name or any(p in ("", ".", "..") or "/" in p for p in parts) or "\0" in name:
        raise CgroupError(f"invalid cgroup name {name!r}")


def _unique(paths: Iterable[Path]) -> list[Path]:
    # v1 hosts often mount cpu and cpuacct together (`cpu -> cpu,cpuacct`): one directory.
    seen: dict[str, Path] = {}
    for p in paths:
        seen.setdefault(os.path.realpath(p), p)
    return list(seen.values())


def _read(path: Path) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror}") from exc


def _read_or(path: Path, default: str) -> str:
    """For groups that may be gone already (removed by a concurrent destroy). A group
    removed between the open and the read answers ENODEV rather than ENOENT: gone too."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return default
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return default
        raise CgroupError(f"cannot read {path}: {exc.strerror}") from exc


def _write(path: Path, value: str) -> None:
    # No O_CREAT: a missing interface file means a missing controller, which must be an
    # error naming the file, not a new regular file nobody reads.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, memory.oom_control) -> dict."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _poll(done: Callable[[], bool], timeout: float) -> bool:
    """Call `done()` with a growing pause (1 ms to 20 ms) until true or `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.001
    while True:
        if done():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.02)


async def _rmdir(path: Path, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or loop.time() >= deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from exc
        await asyncio.sleep(0.01)
