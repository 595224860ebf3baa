"""The `sandbox` driver: the command runs in a bubblewrap sandbox, in cgroups, under its shim.

The default driver when the agent runs as root and `bwrap` works. The instance gets its own
pid, ipc, uts and mount namespaces; it sees the host's /usr and /etc read-only (with the
usual /bin, /lib, /lib64, /sbin symlinks into /usr), a private size-limited /tmp, a fresh
/proc and /dev, and its task dir, writable, at `/task` (also its cwd). The network is the
host's (one IP, unique ports), or with `isolation.network: isolated` a network namespace
of its own with only loopback (bwrap brings `lo` up). What the shim runs:

    sh -c 'join the cgroups; exec "$@"' sh  bwrap ARGS --  setpriv --no-new-privs [uid] -- CMD

No `--die-with-parent`: the instance must outlive the agent (and the shim is not its
parent's parent anyway). Process tree, host pids:

    shim -> bwrap (outside) -> bwrap (pid 1 inside: the reaper) -> CMD (pid 2 inside)

`handle.pid` is CMD's host pid, so `signal` reaches the command itself. The reaper stays
PID 1: the kernel ignores a signal sent to a namespace's init when it has no handler, so a
command that were PID 1 would never see SIGTERM; as PID 2 it gets the default actions. The
two bwrap processes are the handle's `helpers`: `stop` signals every process of the cgroup
but them (an outer bwrap killed by SIGTERM would end before its command). When CMD ends,
the reaper exits and the kernel kills whatever is left in the namespace.

bwrap reports how the command ended the way a shell does: killed by signal N is exit code
128+N. The driver turns such codes back into the signal, so results read the same under
every driver ("killed by signal 9", OOM); a command that itself exits with 129..192 is
reported as killed by that signal.

Environment: exactly `config.env`, except that values naming the host task dir, or a path
under it (`CORRAL_TASK_DIR`, `HOME`), are rewritten to `/task`, and that bwrap sets
`PWD=/task` (it always exports the directory it changes to). The command must be visible
inside: under /usr or /etc, or in the task dir.

Neighbours: `drivers/process.py` (the base of this class, and the argv helpers),
`drivers/supervised.py`, `agent/cgroups.py`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from corral.agent.cgroups import Cgroup, CgroupRoot, NoCgroups
from corral.agent.drivers.base import DriverError, TaskConfig, expand_vars
from corral.agent.drivers.process import (
    ProcessDriver,
    join_argv,
    own_task_dir,
    parse_user,
    privileges_argv,
    resolve_program,
)
from corral.agent.drivers.supervised import (
    Command,
    IsolatedRuntime,
    Launched,
    MainProcess,
    start_ticks,
)
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES

__all__ = ["INSIDE_TASK_DIR", "SandboxDriver", "bwrap_args", "inside_env"]

INSIDE_TASK_DIR = "/task"
# /tmp is a tmpfs: its pages count against the memory cgroup anyway; the size only stops
# one instance from filling its whole memory limit with files by accident.
_MAX_TMP = 256 * 1024 * 1024
# Host dirs the sandbox shows read-only (the others, /bin /lib /lib64 /sbin, are symlinks
# into /usr inside): a command must resolve to one of them or to the task dir.
_VISIBLE = ("/usr/", "/etc/")
_FIND_MAIN_TIMEOUT = 10.0


def bwrap_args(bwrap: str, *, task_dir: Path, tmp_size: int, network: str) -> list[str]:
    """The bwrap command line up to (excluding) `--` and the command."""
    args = [bwrap,
            "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
            "--bind", str(task_dir), INSIDE_TASK_DIR,
            "--size", str(tmp_size), "--tmpfs", "/tmp",
            "--proc", "/proc", "--dev", "/dev",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if network == "isolated":
        args.append("--unshare-net")
    args += ["--new-session", "--chdir", INSIDE_TASK_DIR]
    return args


class SandboxDriver(IsolatedRuntime, ProcessDriver):
    """See the module docstring. `bwrap` is looked up in PATH; `probe=False` skips the
    one-off functional check in `available()` (tests of the argv)."""

    name = "sandbox"

    def __init__(self, *, cgroups: CgroupRoot | NoCgroups | None = None,
                 cgroup_parent: str = "corral", clock: Callable[[], float] = time.time,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP,
                 python: str = sys.executable, shell: str = "/bin/sh",
                 setpriv: str | None = "setpriv", bwrap: str = "bwrap",
                 probe: bool = True) -> None:
        super().__init__(cgroups=cgroups, cgroup_parent=cgroup_parent, clock=clock,
                         log_max_bytes=log_max_bytes, log_keep=log_keep, python=python,
                         shell=shell, setpriv=setpriv)
        self._bwrap = shutil.which(bwrap)
        self._bwrap_name = bwrap
        self._probe = probe

    _needs_root_because = "bubblewrap is not setuid here"

    def _check_runtime(self) -> str:
        if self._bwrap is None:
            return f"{self._bwrap_name} (bubblewrap) not found in PATH"
        if self._setpriv is None:
            return "setpriv (util-linux) not found in PATH"
        if not os.access(self._shell, os.X_OK):
            return f"{self._shell} is needed to join cgroups and is missing"
        return self._probe_bwrap() if self._probe else ""

    def _probe_bwrap(self) -> str:
        assert self._bwrap is not None
        with tempfile.TemporaryDirectory(prefix="corral-bwrap-probe-") as tmp:
            argv = [*bwrap_args(self._bwrap, task_dir=Path(tmp), tmp_size=1 << 20,
                                network="host"), "--", "/bin/true"]
            try:
                done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"bubblewrap does not work here: {exc}"
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            return f"bubblewrap does not work here: {why}"
        return ""

    async def _command(self, config: TaskConfig, cgroup: Cgroup | None) -> Command:
        if cgroup is None or self._bwrap is None or self._setpriv is None:
            raise DriverError(f"the sandbox driver is not usable here: {self.available()}")
        env = inside_env(config.env, config.task_dir)
        args = expand_vars(config.command, env)
        program = _inside_program(args[0], env, config.task_dir)
        user = parse_user(config.isolation.user) if config.isolation.user else None
        if user is not None:
            own_task_dir(config.task_dir, user)
        tmp_size = min(config.resources.memory, _MAX_TMP)
        argv = (*bwrap_args(self._bwrap, task_dir=config.task_dir, tmp_size=tmp_size,
                            network=config.isolation.network),
                "--", *privileges_argv(self._setpriv, user), program, *args[1:])
        return Command(argv=join_argv(self._shell, cgroup, env, argv), env=env,
                       cwd=config.task_dir)

    async def _find_main(self, config: TaskConfig, launched: Launched) -> MainProcess:
        """The command's host pid: the grandchild of the outer bwrap (the shim's child),
        which forks the reaper, which forks the command; a few ms after the launch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FIND_MAIN_TIMEOUT
        outer = launched.child_pid
        pause = 0.0005
        while start_ticks(outer) == launched.child_ticks and loop.time() < deadline:
            reapers = _children(outer)
            commands = _children(reapers[0]) if reapers else []
            if commands:
                ticks = start_ticks(commands[0])
                if ticks is not None:
                    return MainProcess(pid=commands[0], ticks=ticks,
                                       helpers=(outer, reapers[0]))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        # Ended already (or bwrap failed before starting it): the shim has its status.
        return MainProcess(pid=outer, ticks=launched.child_ticks)


def inside_env(env: Mapping[str, str], task_dir: Path) -> dict[str, str]:
    """`env` with the host task dir (and paths under it) rewritten to `/task`."""
    host = str(task_dir)
    out = {}
    for key, value in env.items():
        if value == host:
            value = INSIDE_TASK_DIR
        elif value.startswith(host + "/"):
            value = INSIDE_TASK_DIR + value[len(host):]
        out[key] = value
    return out


def _inside_program(command: str, env: Mapping[str, str], task_dir: Path) -> str:
    """Where the command is, as seen inside the sandbox."""
    if command == INSIDE_TASK_DIR or command.startswith(INSIDE_TASK_DIR + "/"):
        command = str(task_dir) + command[len(INSIDE_TASK_DIR):]
    found = resolve_program(command, env, task_dir)
    real = os.path.realpath(found)
    task_real = os.path.realpath(task_dir)
    if real.startswith(task_real + "/"):
        return INSIDE_TASK_DIR + real[len(task_real):]
    if real.startswith(_VISIBLE):
        # The path as found (`/bin/sh`, not `/usr/bin/dash`): it is the command's $0.
        return found if found.startswith((*_VISIBLE, "/bin/", "/sbin/", "/lib")) else real
    raise DriverError(f"command {command!r} is {found}, which the sandbox does not show "
                      "(only /usr, /etc and the task dir are visible inside)")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []
