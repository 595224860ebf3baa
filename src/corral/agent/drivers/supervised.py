"""The driver base class: the `Driver` protocol implemented once on top of the per-instance
shim (`drivers/shimclient.py`).

`SupervisedDriver` does start (cgroup, then the shim with the subclass's argv), wait,
recover, signal, stop (signal, then SIGKILL to the whole cgroup after the timeout), usage
and destroy. Subclasses (`process`, `sandbox`, `oci`) say what to run (`_command`), where
the main process is (`_find_main`) and what else to release (`_release`).

Neighbours: `drivers/shimclient.py` (launching and watching shims), `drivers/base.py` (the
protocol), `agent/cgroups.py`, `drivers/process.py`, `drivers/sandbox.py`, `drivers/oci.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal as signals
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from corral.agent.cgroups import Cgroup, CgroupError, CgroupRoot, NoCgroups, detect
from corral.agent.drivers.base import (
    Capabilities,
    DriverError,
    ExitResult,
    JSONScalar,
    TaskConfig,
    TaskHandle,
    Usage,
    exit_result,
    expand_vars,
)
from corral.agent.drivers.shimclient import (
    KILL_WAIT,
    SHIM_PATH,
    UNKNOWN_STATUS,
    Launched,
    RecordedExit,
    clear_state,
    is_alive,
    kill_group,
    kill_pid,
    launch,
    read_exit,
    reap,
    reap_later,
    shim_alive,
    start_ticks,
    wait_exit,
    wait_pid,
)
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES

_MAX_SIGNAL = 64  # SIGRTMAX on Linux

# Re-exported: drivers import the shim protocol and the base class from one place.
__all__ = [
    "SHIM_PATH", "Command", "IsolatedRuntime", "Launched", "MainProcess", "RecordedExit",
    "SupervisedDriver",
    "clear_state", "is_alive", "launch", "read_exit", "shim_alive", "start_ticks",
    "wait_exit", "wait_pid",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """What a subclass wants the shim to run for one instance."""

    argv: tuple[str, ...]  # argv[0] absolute
    env: Mapping[str, str]
    cwd: Path
    main_pid_file: Path | None = None
    data: dict[str, JSONScalar] = field(default_factory=dict)  # extra handle data


@dataclass(frozen=True, slots=True, kw_only=True)
class MainProcess:
    """The process whose exit ends the instance and that `signal` reaches, plus the
    runtime's processes between the shim's child and it (`helpers`: never signalled by
    `stop`; a bwrap that gets SIGTERM would end before its command)."""

    pid: int
    ticks: int | None
    helpers: tuple[int, ...] = ()


class IsolatedRuntime:
    """For drivers whose command runs under a container runtime (bubblewrap, runc): every
    isolation capability, `available()` found once (a subclass's `_check`, which may run
    a trial), and the runtime's "killed by signal N" exit code 128+N turned back into that
    signal (bwrap and tini both report a signal death that way)."""

    _unavailable: str | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(signals=True, exec=True, fs_isolation=True,
                            network_isolation=True, oom_detection=True,
                            resource_limits=True, kills_all_processes=True,
                            notes=self._unavailable or "")

    def available(self) -> str:
        if self._unavailable is None:
            self._unavailable = self._check()
        return self._unavailable

    _cgroups: CgroupRoot | NoCgroups
    _needs_root_because = "the runtime creates namespaces and cgroups"

    def _check(self) -> str:
        if os.geteuid() != 0:
            return f"needs root (euid {os.geteuid()}): {self._needs_root_because}"
        if isinstance(self._cgroups, NoCgroups):
            return f"needs cgroups: {self._cgroups.reason}"
        return self._check_runtime()

    def _check_runtime(self) -> str:
        """What else the runtime needs ("" when usable); may run a trial."""
        raise NotImplementedError

    def _returncode(self, returncode: int) -> int:
        if 128 < returncode <= 128 + _MAX_SIGNAL:
            return -(returncode - 128)
        return returncode


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: ExitResult
    recorded: bool  # False: the shim ended without recording the status


class SupervisedDriver:
    """A `Driver` whose instances run under a shim. Subclasses set `name`, implement
    `capabilities`, `available` and `_command`, and may override `_setup_cgroup`,
    `_find_main`, `_returncode` and `_release`."""

    name = "supervised"

    def __init__(self, *, cgroups: CgroupRoot | NoCgroups | None = None,
                 cgroup_parent: str = "corral", clock: Callable[[], float] = time.time,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP,
                 python: str = sys.executable) -> None:
        self._cgroups = detect() if cgroups is None else cgroups
        self._parent = cgroup_parent
        self._clock = clock
        self._log_max_bytes = log_max_bytes
        self._log_keep = log_keep
        self._python = python
        self._watches: dict[str, tuple[TaskHandle, asyncio.Task[_Outcome]]] = {}

    # --- what subclasses provide -------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def available(self) -> str:
        raise NotImplementedError

    async def _command(self, config: TaskConfig, cgroup: Cgroup | None) -> Command:
        """The argv to run for `config`; it joins `cgroup` itself (see `join_argv`)."""
        raise NotImplementedError

    async def _setup_cgroup(self, config: TaskConfig) -> Cgroup | None:
        """A fresh group with the instance's limits (None without cgroups)."""
        if not isinstance(self._cgroups, CgroupRoot):
            return None
        try:
            cgroup = self._cgroups.group(self._parent, config.instance_id)
            if cgroup.exists():
                # Left by an earlier run of this instance (a child that outlived it, or an
                # agent crash). A fresh group also restarts the OOM counter at zero.
                await _kill_and_remove(cgroup)
            cgroup.create(config.resources, cpu=False)  # the quota is set once it runs
        except CgroupError as exc:
            raise DriverError(f"cannot set up cgroups for {config.instance_id}: {exc}") from exc
        return cgroup

    async def _find_main(self, config: TaskConfig, launched: Launched) -> MainProcess:
        """The main process of a launched instance: by default what the shim reported."""
        return MainProcess(pid=launched.pid, ticks=launched.start_ticks)

    def _returncode(self, returncode: int) -> int:
        """The main process's return code as the shim recorded it -> as users see it."""
        return returncode

    async def _release(self, handle: TaskHandle) -> None:
        """Runtime leftovers to remove once every process is gone (bundle, runtime state)."""

    def _group_alive(self, pgid: int) -> bool:
        """Without cgroups: whether a process of group `pgid` is left (see `process`)."""
        return False

    def _tree_usage(self, handle: TaskHandle) -> Usage | None:
        """Without cgroups: the usage of the main process and its descendants."""
        return None

    # --- the Driver protocol -----------------------------------------------------------

    async def start(self, config: TaskConfig) -> TaskHandle:
        if config.instance_id in self._watches:
            raise DriverError(f"instance {config.instance_id} was started and not destroyed")
        if not config.command:
            raise DriverError("empty command")
        config.log_dir.mkdir(parents=True, exist_ok=True)
        cgroup = await self._setup_cgroup(config)
        launched: Launched | None = None
        try:
            command = await self._command(config, cgroup)
            launched = await launch(
                argv=command.argv, env=command.env, cwd=command.cwd, log_dir=config.log_dir,
                state_dir=config.state_dir, log_max_bytes=self._log_max_bytes,
                log_keep=self._log_keep, main_pid_file=command.main_pid_file,
                python=self._python)
            main = await self._find_main(config, launched)
            if cgroup is not None:
                cgroup.set_cpu(config.resources.cpu)
        except BaseException:
            if launched is not None:
                kill_group(launched.child_pid, signals.SIGKILL)
                reap_later(launched.shim_pid, launched.shim_ticks)
            if cgroup is not None:
                with contextlib.suppress(CgroupError):
                    await _kill_and_remove(cgroup)
            raise
        handle = TaskHandle(
            driver=self.name, instance_id=config.instance_id, pid=main.pid,
            started_at=self._clock(),
            data={**command.data, "cgroup": cgroup is not None, "cgroup_parent": self._parent,
                  "state_dir": str(config.state_dir), "shim_pid": launched.shim_pid,
                  "shim_ticks": launched.shim_ticks, "start_ticks": main.ticks,
                  "pgid": launched.child_pid, "helpers": " ".join(map(str, main.helpers)),
                  "memory_limit": config.resources.memory})
        self._watch(handle)
        return handle

    async def wait(self, handle: TaskHandle) -> ExitResult:
        return (await asyncio.shield(self._watch(handle))).result

    async def recover(self, handle: TaskHandle) -> bool:
        state_dir, shim_pid = _state_dir(handle), _int(handle.data.get("shim_pid"))
        if state_dir is None or shim_pid is None:
            return False
        known = (read_exit(state_dir, shim_pid) is not None
                 or is_alive(shim_pid, _int(handle.data.get("shim_ticks")))
                 or self._main_alive(handle))
        if known:
            self._watch(handle)
        return known

    async def signal(self, handle: TaskHandle, sig: int) -> None:
        if self._main_alive(handle):
            kill_pid(handle.pid, sig)

    async def stop(self, handle: TaskHandle, *, signal: int,
                   timeout: float) -> ExitResult | None:
        watch = self._watch(handle)
        cgroup = self._cgroup_for(handle)
        self._send(handle, cgroup, watch, signal)
        if not await self._gone(handle, cgroup, watch, timeout):
            self._send(handle, cgroup, watch, signals.SIGKILL, force=True)
            if cgroup is not None:
                await cgroup.kill()
            if not await self._gone(handle, cgroup, watch, KILL_WAIT):
                left = cgroup.pids() if cgroup is not None else f"group {_pgid(handle)}"
                raise DriverError(f"processes of {handle.instance_id} survived SIGKILL: {left}")
        outcome = await asyncio.shield(watch)
        return outcome.result if outcome.recorded else None

    async def usage(self, handle: TaskHandle) -> Usage | None:
        cgroup = self._cgroup_for(handle)
        if cgroup is not None:
            try:
                u = cgroup.usage()
            except CgroupError:
                return None
            return Usage(cpu_seconds=u.cpu_seconds, memory=u.memory, pids=u.pids)
        return self._tree_usage(handle) if self._main_alive(handle) else None

    async def destroy(self, handle: TaskHandle) -> None:
        cgroup = self._cgroup_for(handle)
        entry = self._watches.get(handle.instance_id)
        watch = entry[1] if entry is not None and entry[0].pid == handle.pid else None
        # Right after start the wrapper may not have joined the cgroups yet: its group too.
        if (watch is not None and not watch.done()) or self._main_alive(handle):
            kill_group(_pgid(handle), signals.SIGKILL)
            await self.signal(handle, signals.SIGKILL)
        if cgroup is not None:
            try:
                await _kill_and_remove(cgroup)
            except CgroupError as exc:
                raise DriverError(f"cannot clean up {handle.instance_id}: {exc}") from exc
        if watch is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watch), KILL_WAIT)
            watch.cancel()
            self._watches.pop(handle.instance_id, None)
        state_dir, shim_pid = _state_dir(handle), _int(handle.data.get("shim_pid"))
        if shim_pid is not None:
            # It ends once its command has; it is killed only if that command escaped
            # every kill (no cgroups), so that it stops writing into the instance's files.
            shim_ticks = _int(handle.data.get("shim_ticks"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_pid(shim_pid, shim_ticks), KILL_WAIT)
            if is_alive(shim_pid, shim_ticks):
                kill_pid(shim_pid)
            reap(shim_pid)
        await self._release(handle)
        if state_dir is not None and (shim_pid is None or not shim_alive(state_dir)):
            clear_state(state_dir)

    def pids(self, handle: TaskHandle) -> list[int]:
        """Every process of the running instance `handle`, sorted (`corral ps --processes`):
        its cgroup's members (the runtime's helpers included), or without cgroups the main
        process and its descendants (a daemonised child is not one any more)."""
        cgroup = self._cgroup_for(handle)
        if cgroup is not None:
            try:
                return sorted(cgroup.pids())
            except (CgroupError, OSError):
                return []
        if not self._main_alive(handle):
            return []
        try:
            children = psutil.Process(handle.pid).children(recursive=True)
        except psutil.Error:
            return []
        return sorted({handle.pid, *(c.pid for c in children)})

    def exec_command(self, handle: TaskHandle, command: Sequence[str]) -> Command:
        """How to run `command` inside the running instance `handle` (a health check's
        `command`): in the instance's cgroups, with its environment, as its user, and, for
        a driver that isolates the filesystem, in its namespaces, root and cwd.

        The environment, cwd and user are read from the main process (`/proc/PID`), so
        they are what the instance itself sees (`/task`, not the host task dir), under
        every driver, and after an adoption too. Isolated instances are entered with
        `nsenter` into the main process's namespaces rather than through the runtime
        (`runc exec` exists, bubblewrap has no such verb), so one path serves both.
        Raises `DriverError` when the main process is gone."""
        if not self._main_alive(handle):
            raise DriverError(f"instance {handle.instance_id} is not running")
        proc = Path(f"/proc/{handle.pid}")
        try:
            env = _environ(proc / "environ")
            cwd = Path(os.readlink(proc / "cwd"))
            uid, gid = _ids(proc / "status")
        except (OSError, ValueError) as exc:
            raise DriverError(f"cannot inspect instance {handle.instance_id}: {exc}") from exc
        args = expand_vars(tuple(command), env)
        setpriv = shutil.which("setpriv")
        as_user = (uid, gid) != (os.geteuid(), os.getegid())
        argv: tuple[str, ...]
        if self.capabilities.fs_isolation:
            nsenter = shutil.which("nsenter")
            if nsenter is None:
                raise DriverError("nsenter (util-linux) is needed to run a command in an "
                                  "isolated instance and is not installed")
            # -r/-w: the main process's root and cwd; the user is set by nsenter after it
            # entered the namespaces, which a setpriv --reuid in front would forbid.
            argv = (nsenter, "-t", str(handle.pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                    *(("-S", str(uid), "-G", str(gid)) if as_user else ()), "--", *args)
            if setpriv is not None:
                argv = (setpriv, "--no-new-privs", "--", *argv)
            cwd = Path("/")  # the host side of nsenter; -w moves the command
        else:
            user = ("--reuid", str(uid), "--regid", str(gid), "--clear-groups") \
                if as_user else ()
            if setpriv is not None:
                argv = (setpriv, "--no-new-privs", *user, "--", *args)
            elif as_user:
                raise DriverError("setpriv (util-linux) is needed to run a command as the "
                                  "instance's user")
            else:
                argv = args
        cgroup = self._cgroup_for(handle)
        if cgroup is not None:
            # Imported here: `process` builds on this module (its wrapper is the one every
            # driver's command joins its cgroups with).
            from corral.agent.drivers.process import join_argv
            argv = join_argv("/bin/sh", cgroup, env, argv)
        return Command(argv=argv, env=env, cwd=cwd)

    # --- shared machinery --------------------------------------------------------------

    def _watch(self, handle: TaskHandle) -> asyncio.Task[_Outcome]:
        """The task that ends with the instance, created once per handle; watching starts
        at `start`/`recover`, not at the first `wait`, so the OOM count is read before
        anyone removes the cgroup."""
        entry = self._watches.get(handle.instance_id)
        if entry is not None and entry[0].pid == handle.pid:
            return entry[1]
        task = asyncio.create_task(self._watcher(handle),
                                   name=f"{self.name}-watch-{handle.instance_id}")
        self._watches[handle.instance_id] = (handle, task)
        return task

    async def _watcher(self, handle: TaskHandle) -> _Outcome:
        state_dir, shim_pid = _state_dir(handle), _int(handle.data.get("shim_pid"))
        returncode = None
        if state_dir is not None and shim_pid is not None:
            returncode = await wait_exit(state_dir, shim_pid,
                                         _int(handle.data.get("shim_ticks")))
        if returncode is None:
            # The shim is gone without a record, but the command may still run: watch it
            # directly; how it ends will not be known.
            await wait_pid(handle.pid, _int(handle.data.get("start_ticks")))
            if self._oom_killed(handle):
                return _Outcome(self._result(-signals.SIGKILL, handle, oom=True), True)
            return _Outcome(ExitResult(exit_code=None, signal=None, oom_killed=False,
                                       reason=UNKNOWN_STATUS), False)
        returncode = self._returncode(returncode)
        # The shell convention 128+9 covers a command that is itself a shell whose child
        # the OOM killer chose; the kernel counts the kill before the victim is reaped.
        oom = returncode in (-signals.SIGKILL, 128 + signals.SIGKILL) and \
            self._oom_killed(handle)
        return _Outcome(self._result(returncode, handle, oom=oom), True)

    def _result(self, returncode: int, handle: TaskHandle, *, oom: bool) -> ExitResult:
        return exit_result(returncode, oom_killed=oom,
                           memory_limit=_int(handle.data.get("memory_limit")))

    def _oom_killed(self, handle: TaskHandle) -> bool:
        cgroup = self._cgroup_for(handle)
        try:
            return cgroup is not None and cgroup.oom_killed() > 0
        except CgroupError:
            return False

    def _cgroup_for(self, handle: TaskHandle) -> Cgroup | None:
        if not isinstance(self._cgroups, CgroupRoot) or handle.data.get("cgroup") is not True:
            return None
        return self._cgroups.group(str(handle.data["cgroup_parent"]), handle.instance_id)

    def _main_alive(self, handle: TaskHandle) -> bool:
        return is_alive(handle.pid, _int(handle.data.get("start_ticks")))

    def _send(self, handle: TaskHandle, cgroup: Cgroup | None,
              watch: asyncio.Task[_Outcome], sig: int, *, force: bool = False) -> None:
        """`sig` to every process of the instance but the runtime's helpers."""
        if cgroup is None:
            # Its own process group (the shim's child is a session leader) reaches the
            # children that did not leave it. Only while the instance runs (or `force`:
            # the group was seen a moment ago), since a group id is reused once the
            # group is gone.
            if force or not watch.done() or self._main_alive(handle):
                kill_group(_pgid(handle), sig)
            return
        helpers = {int(p) for p in str(handle.data.get("helpers") or "").split()}
        targets = set(cgroup.pids()) - helpers
        if self._main_alive(handle):  # right after start it may not have joined yet
            targets.add(handle.pid)
        for pid in sorted(targets):
            kill_pid(pid, sig)

    async def _gone(self, handle: TaskHandle, cgroup: Cgroup | None,
                    watch: asyncio.Task[_Outcome], timeout: float) -> bool:
        """Whether the main process has ended and no process of the instance is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(asyncio.shield(watch), timeout)
        except TimeoutError:
            return False
        left = max(0.0, deadline - loop.time())
        if cgroup is not None:
            return await cgroup.wait_empty(left)
        return await _poll(lambda: not self._group_alive(_pgid(handle)), left)


def _environ(path: Path) -> dict[str, str]:
    env = {}
    for item in path.read_bytes().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key:
            env[key] = value
    return env


def _ids(path: Path) -> tuple[int, int]:
    """The effective uid and gid of a process, from its `/proc/PID/status`."""
    uid = gid = None
    for line in path.read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[2])
        elif line.startswith("Gid:"):
            gid = int(line.split()[2])
    if uid is None or gid is None:
        raise ValueError(f"no Uid/Gid in {path}")
    return uid, gid


def _state_dir(handle: TaskHandle) -> Path | None:
    value = handle.data.get("state_dir")
    return Path(value) if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pgid(handle: TaskHandle) -> int:
    return _int(handle.data.get("pgid")) or handle.pid


async def _kill_and_remove(cgroup: Cgroup) -> None:
    await cgroup.kill()
    if not await cgroup.wait_empty(KILL_WAIT):
        raise CgroupError(f"processes left in {cgroup.dirs[0]} after SIGKILL: {cgroup.pids()}")
    await cgroup.remove()


async def _poll(done: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True
