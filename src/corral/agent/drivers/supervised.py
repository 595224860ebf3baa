"""The agent's side of the per-instance shim, and the driver base class built on it.

Every driver runs an instance's command under its own shim (`agent/shim.py`): a small
process, not the agent's, that is the command's parent, writes its logs and records its
exit status in the instance's state dir. The agent talks to a shim only through files and
process ids, so an agent that restarts (even after `kill -9`) adopts every instance again:

```
 launch: shim.json -> spawn shim (new session) -> "ok <pid>..." on a pipe -> Launched
 watch:  pidfd of the shim readable (it exited) -> reap it if ours -> exit.json
         -> the return code (None: the shim died without recording one)
 adopt:  a new agent process, same state dir: shim_alive() or exit.json -> watch again
```

Process identity is a pid *and* its start time (`/proc/<pid>/stat`, field 22), so a pid
the kernel has reused is never taken for the shim or the instance.

`SupervisedDriver` implements the `Driver` protocol once on top of this: start (cgroup,
then the shim with the subclass's argv), wait, recover, signal, stop (signal, then SIGKILL
to the whole cgroup after the timeout), usage and destroy. Subclasses (`process`,
`sandbox`, `oci`) say what to run (`_command`), where the main process is (`_find_main`)
and what else to release (`_release`).

Neighbours: `agent/shim.py` (the other side of every file here), `drivers/base.py` (the
protocol), `agent/cgroups.py`, `drivers/process.py` and `drivers/sandbox.py` (subclasses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal as signals
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.agent import shim
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
)
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES

__all__ = [
    "SHIM_PATH", "Command", "Launched", "MainProcess", "RecordedExit", "SupervisedDriver",
    "clear_state", "is_alive", "launch", "read_exit", "shim_alive", "start_ticks",
    "wait_exit", "wait_pid",
]

SHIM_PATH = Path(shim.__file__).resolve()
# The shim runs as `python -S -I -c BOOTSTRAP <shim.py> <state_dir> <report_fd>`: imported
# as a module, from its cached bytecode, rather than run as a script, which Python compiles
# at every start. Measured here: 2 ms less per start and 0.9 MB less private memory per
# instance (of ~3.8). The shim's path stays on its command line (`ps`, benchmarks), and the
# bootstrap puts the dir that holds `corral` on sys.path (no site-packages under -S -I).
_BOOTSTRAP = ("import sys; from os.path import dirname as up; "
              "sys.path.insert(0, up(up(up(sys.argv[1])))); "
              "from corral.agent.shim import main; sys.exit(main(sys.argv[1:]))")
_SHIM_FILES = (shim.CONFIG, shim.EXIT, shim.PIDFILE_SHIM, shim.PIDFILE_CHILD, "shim.log")
_KILL_WAIT = 5.0
_UNKNOWN_STATUS = "exited (status unknown: its supervisor ended without recording it)"
# Shims this process spawned and has not reaped yet: only these are ever waitpid()ed, so
# a child the agent started for another purpose is never reaped by mistake.
_children: set[int] = set()
_background: set[asyncio.Task[None]] = set()  # referenced until done (asyncio holds weakly)


@dataclass(frozen=True, slots=True, kw_only=True)
class Launched:
    """A shim that has started its command. `pid` is the main process (the command, or in
    `main_pid_file` mode the pid read from that file), `child_pid` the shim's own child;
    the `*_ticks` are start times, the second half of each identity."""

    shim_pid: int
    shim_ticks: int | None
    pid: int
    start_ticks: int | None
    child_pid: int
    child_ticks: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedExit:
    returncode: int  # Popen's convention: negative = killed by that signal
    status: int  # the raw wait status
    time: float
    pid: int


def start_ticks(pid: int) -> int | None:
    """Start time of a live process (None: no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[19])


def is_alive(pid: int, ticks: int | None) -> bool:
    """`pid` runs and is the process that started at `ticks`. An unknown start time is
    never taken for a match: a pid alone may be anyone's by now."""
    return ticks is not None and start_ticks(pid) == ticks


def _read_pidfile(path: Path) -> tuple[int, int | None] | None:
    try:
        parts = path.read_text().split()
        return int(parts[0]), (int(parts[1]) if parts[1:] and parts[1] != "None" else None)
    except (OSError, ValueError, IndexError):
        return None


def shim_alive(state_dir: Path) -> bool:
    """Whether the shim recorded in `state_dir` still runs (pid and start time match)."""
    found = _read_pidfile(state_dir / shim.PIDFILE_SHIM)
    return found is not None and is_alive(*found)


def read_exit(state_dir: Path, shim_pid: int | None = None) -> RecordedExit | None:
    """The exit status the shim recorded; None if there is none (or, given `shim_pid`,
    only one recorded by another shim)."""
    try:
        raw = json.loads((state_dir / shim.EXIT).read_text())
        if shim_pid is not None and raw.get("shim_pid") != shim_pid:
            return None
        status = int(raw["status"])
        return RecordedExit(returncode=os.waitstatus_to_exitcode(status), status=status,
                            time=float(raw["time"]), pid=int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_state(state_dir: Path, *, remove_dir: bool = True) -> None:
    """Remove the shim's files (and the dir, if nothing else is left in it)."""
    for name in _SHIM_FILES:
        for path in (state_dir / name, state_dir / f"{name}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if remove_dir:
        with contextlib.suppress(OSError):
            state_dir.rmdir()


def _reap(pid: int) -> None:
    """Collect a shim of ours that has ended (no zombie left behind)."""
    if pid not in _children:
        return
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid
    if done == pid:
        _children.discard(pid)


async def wait_pid(pid: int, ticks: int | None) -> None:
    """Until process `pid` (identified by `ticks`; None: it is not known, so gone) has
    ended. Works for processes that are not our children: a pidfd becomes readable when
    its process exits."""
    if ticks is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # kernel before 5.3
        while is_alive(pid, ticks):
            await asyncio.sleep(0.1)
        return
    try:
        # Checked after opening: the pidfd then refers to the process that had this start
        # time, never to a later owner of the pid.
        if shim.read_start_ticks(pid) != ticks:
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, _set_once, exited)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_exit(state_dir: Path, shim_pid: int, shim_ticks: int | None = None
                    ) -> int | None:
    """Until the shim has ended; then the return code it recorded (negative: signal), or
    None if it ended without recording one (killed, crashed, machine rebooted)."""
    await wait_pid(shim_pid, shim_ticks)
    _reap(shim_pid)
    recorded = read_exit(state_dir, shim_pid)
    return recorded.returncode if recorded is not None else None


async def launch(*, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_dir: Path,
                 state_dir: Path, log_max_bytes: int = DEFAULT_MAX_BYTES,
                 log_keep: int = DEFAULT_KEEP, main_pid_file: Path | None = None,
                 timeout: float = 30.0, python: str = sys.executable) -> Launched:
    """Start `argv` under a new shim; returns once it runs (in `main_pid_file` mode: once
    `argv` has exited 0 and the file names the main process). `argv[0]` should be an
    absolute path. Raises `DriverError` with the reason when it could not start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    await _end_earlier_shim(state_dir)
    clear_state(state_dir, remove_dir=False)
    config = {"argv": list(argv), "env": dict(env), "cwd": str(cwd), "log_dir": str(log_dir),
              "log_max_bytes": log_max_bytes, "log_keep": log_keep,
              "main_pid_file": str(main_pid_file) if main_pid_file is not None else None}
    shim.write_atomic(str(state_dir / shim.CONFIG), json.dumps(config, sort_keys=True),
                      durable=False)
    read_end, write_end = os.pipe()
    log_fd = os.open(state_dir / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.set_inheritable(write_end, True)
        # posix_spawn, not Popen: nothing but us must ever reap a shim (Popen objects reap
        # on garbage collection), and no Python code runs in the child.
        shim_pid = os.posix_spawn(
            python, [python, "-S", "-I", "-c", _BOOTSTRAP, str(SHIM_PATH), str(state_dir),
                     str(write_end)],
            {"PATH": os.defpath, "LANG": "C.UTF-8"}, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 2)],
            setsid=True)
    except OSError as exc:
        os.close(read_end)
        raise DriverError(f"cannot start the instance supervisor ({python}): "
                          f"{exc.strerror}") from exc
    finally:
        os.close(write_end)
        os.close(log_fd)
    _children.add(shim_pid)
    shim_ticks = shim.read_start_ticks(shim_pid)
    try:
        report = await asyncio.wait_for(_read_report(read_end), timeout)
    except BaseException as exc:  # timed out, or the caller gave up (cancelled)
        _abandon(state_dir, shim_pid, shim_ticks)
        if isinstance(exc, TimeoutError):
            raise DriverError(f"the instance supervisor did not start the command within "
                              f"{timeout:g}s") from None
        raise
    finally:
        os.close(read_end)
    kind, _, rest = report.partition(" ")
    if kind == "ok":
        main, main_ticks, child, child_ticks = (_opt_int(x) for x in rest.split())
        assert main is not None and child is not None
        return Launched(shim_pid=shim_pid, shim_ticks=shim_ticks, pid=main,
                        start_ticks=main_ticks, child_pid=child, child_ticks=child_ticks)
    await wait_pid(shim_pid, shim_ticks)
    _reap(shim_pid)
    if kind == "error":
        raise DriverError(f"cannot start {argv[0]!r}: {rest} (cwd {cwd})")
    detail = _tail(state_dir / "shim.log")
    raise DriverError(f"the instance supervisor failed before starting the command: {detail}")


async def _read_report(fd: int) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    data = b""

    def readable() -> None:
        nonlocal data
        chunk = os.read(fd, 4096)
        data += chunk
        if (not chunk or b"\n" in data) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return data.decode(errors="replace").partition("\n")[0]


async def _end_earlier_shim(state_dir: Path) -> None:
    """A shim of an earlier run of this instance still running (its instance was not
    adopted and is being started again): it must not write into the new run's files."""
    found = _read_pidfile(state_dir / shim.PIDFILE_SHIM)
    if found is not None and is_alive(*found):
        _kill(found[0])
        await wait_pid(*found)
        _reap(found[0])


def _abandon(state_dir: Path, shim_pid: int, shim_ticks: int | None) -> None:
    """Kill a shim that has not reported, and the command if it started one already."""
    child = _read_pidfile(state_dir / shim.PIDFILE_CHILD)
    if child is not None and is_alive(*child):
        _killpg(child[0], signals.SIGKILL)
    _kill(shim_pid)
    _reap_later(shim_pid, shim_ticks)


def _reap_later(pid: int, ticks: int | None) -> None:
    """Reap a shim that is about to end, without making the caller wait for it."""
    async def reap() -> None:
        await wait_pid(pid, ticks)
        _reap(pid)

    _background.add(task := asyncio.get_running_loop().create_task(reap()))
    task.add_done_callback(_background.discard)


def _opt_int(text: str) -> int | None:
    return None if text == "None" else int(text)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "no output"
    except OSError:
        return "no output"


def _kill(pid: int, sig: int = signals.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


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
                _killpg(launched.child_pid, signals.SIGKILL)
                _reap_later(launched.shim_pid, launched.shim_ticks)
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
            _kill(handle.pid, sig)

    async def stop(self, handle: TaskHandle, *, signal: int,
                   timeout: float) -> ExitResult | None:
        watch = self._watch(handle)
        cgroup = self._cgroup_for(handle)
        self._send(handle, cgroup, watch, signal)
        if not await self._gone(handle, cgroup, watch, timeout):
            self._send(handle, cgroup, watch, signals.SIGKILL, force=True)
            if cgroup is not None:
                await cgroup.kill()
            if not await self._gone(handle, cgroup, watch, _KILL_WAIT):
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
            _killpg(_pgid(handle), signals.SIGKILL)
            await self.signal(handle, signals.SIGKILL)
        if cgroup is not None:
            try:
                await _kill_and_remove(cgroup)
            except CgroupError as exc:
                raise DriverError(f"cannot clean up {handle.instance_id}: {exc}") from exc
        if watch is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watch), _KILL_WAIT)
            watch.cancel()
            self._watches.pop(handle.instance_id, None)
        state_dir, shim_pid = _state_dir(handle), _int(handle.data.get("shim_pid"))
        if shim_pid is not None:
            # It ends once its command has; it is killed only if that command escaped
            # every kill (no cgroups), so that it stops writing into the instance's files.
            shim_ticks = _int(handle.data.get("shim_ticks"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_pid(shim_pid, shim_ticks), _KILL_WAIT)
            if is_alive(shim_pid, shim_ticks):
                _kill(shim_pid)
            _reap(shim_pid)
        await self._release(handle)
        if state_dir is not None and (shim_pid is None or not shim_alive(state_dir)):
            clear_state(state_dir)

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
                                       reason=_UNKNOWN_STATUS), False)
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
                _killpg(_pgid(handle), sig)
            return
        helpers = {int(p) for p in str(handle.data.get("helpers") or "").split()}
        targets = set(cgroup.pids()) - helpers
        if self._main_alive(handle):  # right after start it may not have joined yet
            targets.add(handle.pid)
        for pid in sorted(targets):
            _kill(pid, sig)

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


def _state_dir(handle: TaskHandle) -> Path | None:
    value = handle.data.get("state_dir")
    return Path(value) if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pgid(handle: TaskHandle) -> int:
    return _int(handle.data.get("pgid")) or handle.pid


async def _kill_and_remove(cgroup: Cgroup) -> None:
    await cgroup.kill()
    if not await cgroup.wait_empty(_KILL_WAIT):
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
