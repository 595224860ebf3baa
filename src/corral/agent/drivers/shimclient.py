"""The agent's side of the per-instance shim (`agent/shim.py`): launching one, learning
its command's pid, watching it end and reading the exit status it recorded.

Every driver runs an instance's command under its own shim: a small process, not the
agent's, that is the command's parent, writes its logs and records its exit status in the
instance's state dir. The agent talks to a shim only through files and process ids, so an
agent that restarts (even after `kill -9`) adopts every instance again:

```
 launch: shim.json -> spawn shim (new session) -> "ok <pid>..." on a pipe -> Launched
 watch:  pidfd of the shim readable (it exited) -> reap it if ours -> exit.json
         -> the return code (None: the shim died without recording one)
 adopt:  a new agent process, same state dir: shim_alive() or exit.json -> watch again
```

Process identity is a pid *and* its start time (`/proc/<pid>/stat`, field 22), so a pid
the kernel has reused is never taken for the shim or the instance.

Neighbours: `agent/shim.py` (the other side of every file here), `drivers/supervised.py`
(the driver base class built on this).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal as signals
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.agent import shim
from corral.agent.drivers.base import (
    DriverError,
)
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES

__all__ = [
    "KILL_WAIT", "SHIM_PATH", "UNKNOWN_STATUS", "Launched", "RecordedExit", "clear_state",
    "is_alive", "kill_group", "kill_pid", "launch", "read_exit", "reap", "reap_later",
    "shim_alive", "start_ticks", "wait_exit", "wait_pid",
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
KILL_WAIT = 5.0
UNKNOWN_STATUS = "exited (status unknown: its supervisor ended without recording it)"
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


def reap(pid: int) -> None:
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
    reap(shim_pid)
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
    reap(shim_pid)
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
        kill_pid(found[0])
        await wait_pid(*found)
        reap(found[0])


def _abandon(state_dir: Path, shim_pid: int, shim_ticks: int | None) -> None:
    """Kill a shim that has not reported, and the command if it started one already."""
    child = _read_pidfile(state_dir / shim.PIDFILE_CHILD)
    if child is not None and is_alive(*child):
        kill_group(child[0], signals.SIGKILL)
    kill_pid(shim_pid)
    reap_later(shim_pid, shim_ticks)


def reap_later(pid: int, ticks: int | None) -> None:
    """Reap a shim that is about to end, without making the caller wait for it."""
    async def wait_then_reap() -> None:
        await wait_pid(pid, ticks)
        reap(pid)

    _background.add(task := asyncio.get_running_loop().create_task(wait_then_reap()))
    task.add_done_callback(_background.discard)


def _opt_int(text: str) -> int | None:
    return None if text == "None" else int(text)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "no output"
    except OSError:
        return "no output"


def kill_pid(pid: int, sig: int = signals.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


