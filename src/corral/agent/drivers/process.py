"""The `process` driver: the command runs as a plain host process, in cgroups when it can.

With cgroups (root): the driver creates the instance's groups with its limits, then spawns
`sh -c 'echo $$ >.../cgroup.procs ...; exec "$@"'`, so the command starts already inside the
groups, without a Python `preexec_fn` (slow, unsafe with threads). Measured here: ~2.3 ms
from `start` to the first log line, cgroup creation included, against ~0.6 ms for a bare
spawn. Stop and destroy reach every process through the cgroup (`cgroup.kill`, or the
freezer), OOM kills are read from the memory controller.

Without cgroups (not root, no cgroup fs): the command runs unlimited, and stop reaches only
its process group: a child that calls setsid() escapes. `capabilities.notes` says so.

Either way: a new session (no controlling terminal, its own process group), cwd = task dir,
env = exactly `config.env`, stdin /dev/null, stdout/stderr piped into `agent/logs.py`
writers. The executable is looked up in `config.env["PATH"]` before spawning, so a missing
command fails `start` with a clear error in both modes instead of exiting 127.

Output goes through pipes to this agent process, so an instance that outlives an agent
restart loses its log stream (its writes fail with EPIPE); adopting instances will need a
FIFO or a small log shim in between. The handle's `data` already holds what adoption needs
to stop, measure and clean up an instance this process did not start.

Neighbours: `drivers/base.py` (the protocol), `agent/cgroups.py`, `agent/logs.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal as signals
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from corral.agent.cgroups import Cgroup, CgroupError, CgroupRoot, NoCgroups, detect
from corral.agent.drivers.base import (
    Capabilities,
    DriverError,
    ExitResult,
    TaskConfig,
    TaskHandle,
    Usage,
    exit_result,
    expand_vars,
)
from corral.agent.logs import DEFAULT_KEEP, DEFAULT_MAX_BYTES, LogWriter

__all__ = ["ProcessDriver"]

# Exit code of the wrapper when it cannot join the cgroups (Docker uses 125 for "the
# container runtime failed", as opposed to 126/127 from the command itself).
JOIN_FAILED = 125
# How long `wait` lets the log pumps drain after the main process ended. Longer is pointless:
# if a pipe is still open then, a leftover child holds it, and it is drained until destroy.
_PUMP_GRACE = 0.5
_KILL_WAIT = 5.0
_UNKNOWN_STATUS = "exited (status unknown: not started by this agent process)"


@dataclass(slots=True)
class _Task:
    handle: TaskHandle
    process: subprocess.Popen[bytes]
    reaped: asyncio.Task[int]  # the main process's wait status, once it has ended
    cgroup: Cgroup | None
    writers: list[LogWriter]
    pumps: list[asyncio.Task[None]]
    transports: list[asyncio.ReadTransport]
    exited: asyncio.Task[ExitResult] | None = None


class ProcessDriver:
    """See the module docstring. `cgroups` defaults to what `detect()` finds; pass
    `NoCgroups(...)` to run without them. `cgroup_parent` is the group all instances of this
    agent live under."""

    name = "process"

    def __init__(self, *, cgroups: CgroupRoot | NoCgroups | None = None,
                 cgroup_parent: str = "corral", clock: Callable[[], float] = time.time,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP,
                 shell: str = "/bin/sh") -> None:
        self._cgroups = detect() if cgroups is None else cgroups
        self._parent = cgroup_parent
        self._clock = clock
        self._log_max_bytes = log_max_bytes
        self._log_keep = log_keep
        self._shell = shell
        self._tasks: dict[str, _Task] = {}

    @property
    def capabilities(self) -> Capabilities:
        limited = isinstance(self._cgroups, CgroupRoot)
        notes = "" if not isinstance(self._cgroups, NoCgroups) else (
            "resource limits are not enforced and stop reaches only the process group "
            f"(no cgroups: {self._cgroups.reason})")
        return Capabilities(signals=True, exec=False, fs_isolation=False,
                            network_isolation=False, oom_detection=limited,
                            resource_limits=limited, kills_all_processes=limited, notes=notes)

    @property
    def notes(self) -> str:
        return self.capabilities.notes

    def available(self) -> str:
        if isinstance(self._cgroups, CgroupRoot) and not os.access(self._shell, os.X_OK):
            return f"{self._shell} is needed to join cgroups and is missing"
        return ""

    async def start(self, config: TaskConfig) -> TaskHandle:
        if config.instance_id in self._tasks:
            raise DriverError(f"instance {config.instance_id} was started and not destroyed")
        if not config.command:
            raise DriverError("empty command")
        args = expand_vars(config.command, config.env)
        program = _resolve(args[0], config.env, config.task_dir)
        config.log_dir.mkdir(parents=True, exist_ok=True)
        cgroup = await self._make_cgroup(config) if isinstance(self._cgroups, CgroupRoot) else None
        if cgroup is not None:
            script = _join_script(cgroup.procs_files(), keep_pwd="PWD" in config.env)
            argv: Sequence[str] = (self._shell, "-c", script, "sh", program, *args[1:])
        else:
            argv = (program, *args[1:])
        # Not asyncio.create_subprocess_exec: its Process.wait() also waits for the pipes to
        # close (forever, when a daemonised child keeps stdout open), and on 3.11 its child
        # watcher starts a thread per process (~1 ms each, and a thread per instance).
        # Popen (vfork) plus a pidfd in the event loop has neither problem.
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                cwd=config.task_dir, env=dict(config.env), start_new_session=True)
        except OSError as exc:
            os.close(out_r)
            os.close(err_r)
            if cgroup is not None:
                await cgroup.remove()
            raise DriverError(f"cannot start {args[0]!r}: {exc.strerror} "
                              f"(cwd {config.task_dir})") from exc
        finally:
            os.close(out_w)
            os.close(err_w)
        handle = TaskHandle(
            driver=self.name, instance_id=config.instance_id, pid=process.pid,
            started_at=self._clock(),
            data={"cgroup": cgroup is not None, "cgroup_parent": self._parent,
                  "pgid": process.pid, "start_ticks": _start_ticks(process.pid),
                  "memory_limit": config.resources.memory})
        writers = [LogWriter(config.log_dir, stream, max_bytes=self._log_max_bytes,
                             keep=self._log_keep, clock=self._clock)
                   for stream in ("stdout", "stderr")]
        pipes = [await _read_pipe(out_r), await _read_pipe(err_r)]
        pumps = [asyncio.create_task(w.pump(reader))
                 for w, (_, reader) in zip(writers, pipes, strict=True)]
        task = _Task(handle=handle, process=process, reaped=asyncio.create_task(_reap(process)),
                     cgroup=cgroup, writers=writers, pumps=pumps,
                     transports=[t for t, _ in pipes])
        # Watch from the start, not from the first `wait`: the OOM count must be read before
        # anyone removes the cgroup.
        task.exited = asyncio.create_task(self._watch(task))
        self._tasks[config.instance_id] = task
        return handle

    async def _make_cgroup(self, config: TaskConfig) -> Cgroup:
        assert isinstance(self._cgroups, CgroupRoot)
        try:
            cgroup = self._cgroups.group(self._parent, config.instance_id)
            if cgroup.exists():
                # Left by an earlier run of this instance (a child that outlived it, or an
                # agent crash). A fresh group also restarts the OOM counter at zero.
                await _kill_and_remove(cgroup)
            cgroup.create(config.resources)
        except CgroupError as exc:
            raise DriverError(f"cannot set up cgroups for {config.instance_id}: {exc}") from exc
        return cgroup

    async def _watch(self, task: _Task) -> ExitResult:
        returncode = await asyncio.shield(task.reaped)
        oom = False
        # The shell convention 128+9 covers a command that is itself a shell whose child
        # the OOM killer chose; the kernel counts the kill before the victim is reaped.
        if task.cgroup is not None and returncode in (-signals.SIGKILL, 128 + signals.SIGKILL):
            with contextlib.suppress(CgroupError):
                oom = task.cgroup.oom_killed() > 0
        await asyncio.wait(task.pumps, timeout=_PUMP_GRACE)
        return exit_result(returncode, oom_killed=oom,
                           memory_limit=_int(task.handle.data.get("memory_limit")))

    def _own(self, handle: TaskHandle) -> _Task | None:
        task = self._tasks.get(handle.instance_id)
        return task if task is not None and task.handle.pid == handle.pid else None

    def _cgroup_for(self, handle: TaskHandle) -> Cgroup | None:
        task = self._own(handle)
        if task is not None:
            return task.cgroup
        if not isinstance(self._cgroups, CgroupRoot) or handle.data.get("cgroup") is not True:
            return None
        return self._cgroups.group(str(handle.data["cgroup_parent"]), handle.instance_id)

    async def wait(self, handle: TaskHandle) -> ExitResult:
        task = self._own(handle)
        if task is not None:
            assert task.exited is not None
            return await asyncio.shield(task.exited)
        # Not our child: no exit status to collect, only the process to watch.
        while _alive(handle):
            await asyncio.sleep(0.2)
        cgroup = self._cgroup_for(handle)
        oom = False
        if cgroup is not None:
            with contextlib.suppress(CgroupError):
                oom = cgroup.oom_killed() > 0
        if oom:
            return exit_result(-signals.SIGKILL, oom_killed=True,
                               memory_limit=_int(handle.data.get("memory_limit")))
        return ExitResult(exit_code=None, signal=None, oom_killed=False, reason=_UNKNOWN_STATUS)

    async def recover(self, handle: TaskHandle) -> bool:
        # Without a supervisor between us and the process, only a live process can be
        # watched again (its exit status will be unknown).
        return _alive(handle)

    async def signal(self, handle: TaskHandle, sig: int) -> None:
        if _alive(handle):
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, sig)

    async def stop(self, handle: TaskHandle, *, signal: int,
                   timeout: float) -> ExitResult | None:
        task = self._own(handle)
        cgroup = self._cgroup_for(handle)
        if cgroup is not None:
            # The main pid too: right after `start` the wrapper may not have joined yet.
            targets = set(cgroup.pids())
            if _alive(handle):
                targets.add(handle.pid)
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal)
            if not await self._cgroup_gone(cgroup, handle, task, timeout):
                await cgroup.kill()
                await self.signal(handle, signals.SIGKILL)
                if not await self._cgroup_gone(cgroup, handle, task, _KILL_WAIT):
                    raise DriverError(f"processes of {handle.instance_id} survived SIGKILL: "
                                      f"{cgroup.pids()}")
        else:
            pgid = _int(handle.data.get("pgid")) or handle.pid
            if task is not None or _alive(handle):
                _killpg(pgid, signal)
            if not await self._group_gone(pgid, task, timeout):
                _killpg(pgid, signals.SIGKILL)
                if not await self._group_gone(pgid, task, _KILL_WAIT):
                    raise DriverError(f"process group {pgid} of {handle.instance_id} "
                                      "survived SIGKILL")
        if task is None:
            return None
        assert task.exited is not None
        return await asyncio.shield(task.exited)

    async def _main_gone(self, handle: TaskHandle, task: _Task | None,
                         timeout: float) -> bool:
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task.reaped), timeout)
            except TimeoutError:
                return False
            return True
        return await _poll(lambda: not _alive(handle), timeout)

    async def _cgroup_gone(self, cgroup: Cgroup, handle: TaskHandle, task: _Task | None,
                           timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self._main_gone(handle, task, timeout):
            return False
        return await cgroup.wait_empty(max(0.0, deadline - loop.time()))

    async def _group_gone(self, pgid: int, task: _Task | None, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The main process stays in its group as a zombie until reaped: wait for that.
        if task is not None and not await self._main_gone(task.handle, task, timeout):
            return False
        return await _poll(lambda: not _group_exists(pgid), max(0.0, deadline - loop.time()))

    async def usage(self, handle: TaskHandle) -> Usage | None:
        cgroup = self._cgroup_for(handle)
        if cgroup is not None:
            try:
                u = cgroup.usage()
            except CgroupError:
                return None
            return Usage(cpu_seconds=u.cpu_seconds, memory=u.memory, pids=u.pids)
        if not _alive(handle):
            return None
        return _tree_usage(handle.pid)

    async def destroy(self, handle: TaskHandle) -> None:
        task = self._own(handle)
        cgroup = self._cgroup_for(handle)
        try:
            if cgroup is not None:
                # Right after `start`, the wrapper may not have joined the cgroups yet.
                await self.signal(handle, signals.SIGKILL)
                try:
                    await _kill_and_remove(cgroup)
                except CgroupError as exc:
                    raise DriverError(f"cannot clean up {handle.instance_id}: {exc}") from exc
            elif task is not None or _alive(handle):
                _killpg(_int(handle.data.get("pgid")) or handle.pid, signals.SIGKILL)
        finally:
            if task is not None:
                self._tasks.pop(handle.instance_id, None)
                await _finish(task)


def _resolve(command: str, env: Mapping[str, str], cwd: Path) -> str:
    if "/" in command:
        path = command if os.path.isabs(command) else str(cwd / command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise DriverError(f"command {command!r} not found or not executable (cwd {cwd})")
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise DriverError(f"command {command!r} not found in PATH={env.get('PATH', '')}")
    return found


def _join_script(procs_files: Sequence[Path], *, keep_pwd: bool) -> str:
    joins = " && ".join(f"echo $$ >{shlex.quote(str(f))}" for f in procs_files)
    fail = f'{{ echo "corral: cannot join the instance\'s cgroups" >&2; exit {JOIN_FAILED}; }}'
    # dash exports PWD to what it execs; the environment must be exactly config.env.
    unset = "" if keep_pwd else "unset PWD; "
    return f'{joins} || {fail}; {unset}exec "$@"'


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, an identity that
    survives pid reuse (the kernel's own choice for /proc/<pid> identity checks)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name, which may itself contain spaces and parentheses.
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[19])


def _alive(handle: TaskHandle) -> bool:
    ticks = _start_ticks(handle.pid)
    return ticks is not None and ticks == handle.data.get("start_ticks", ticks)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    """Whether a live (non-zombie) process is in group `pgid`. Killed orphans stay in it as
    zombies until whoever inherited them reaps them, which can take a while (a PID 1 that
    is not a real init), so a bare `killpg(pgid, 0)` is not enough."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def _tree_usage(pid: int) -> Usage | None:
    """Usage of a process and its descendants, for the no-cgroup mode (best effort: a
    daemonised child is not a descendant any more)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu, memory, count = 0.0, 0, 0
    for p in procs:
        try:
            with p.oneshot():
                times = p.cpu_times()
                cpu += times.user + times.system
                memory += p.memory_info().rss
                count += 1
        except psutil.Error:
            continue
    return Usage(cpu_seconds=cpu, memory=memory, pids=count)


async def _reap(process: subprocess.Popen[bytes]) -> int:
    """Wait for `process` to end without blocking the loop or a thread: a pidfd becomes
    readable when the process exits; `Popen.wait` then collects the status at once."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # kernel before 5.3
        return await asyncio.to_thread(process.wait)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    return process.wait()


async def _read_pipe(fd: int) -> tuple[asyncio.ReadTransport, asyncio.StreamReader]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return transport, reader


async def _poll(done: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _kill_and_remove(cgroup: Cgroup) -> None:
    await cgroup.kill()
    if not await cgroup.wait_empty(_KILL_WAIT):
        raise CgroupError(f"processes left in {cgroup.dirs[0]} after SIGKILL: {cgroup.pids()}")
    await cgroup.remove()


async def _finish(task: _Task) -> None:
    """Let the pumps write what is left in the pipes, then close the logs."""
    _, pending = await asyncio.wait(task.pumps, timeout=_PUMP_GRACE)
    for p in pending:
        p.cancel()
    await asyncio.gather(*task.pumps, return_exceptions=True)
    for t in task.transports:
        t.close()
    for w in task.writers:
        w.close()
    if task.exited is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task.exited), _KILL_WAIT)
    # Only if the main process survived everything (left its process group without
    # cgroups): stop watching it; Popen reaps it whenever it ends.
    for watcher in (task.reaped, task.exited):
        if watcher is not None and not watcher.done():
            watcher.cancel()
