"""The `process` driver: the command runs as a plain host process, in cgroups when it can.

It runs under the instance's shim (`drivers/supervised.py`, `agent/shim.py`) like every
driver, so it outlives an agent restart and is adopted again, with its logs and its exit
status. What the shim runs:

    sh -c 'echo $$ >.../cgroup.procs ...; exec "$@"' sh  setpriv --no-new-privs [uid] -- CMD

With cgroups (root): the driver creates the instance's groups with its limits, and the
tiny shell wrapper joins them before `exec`, so the command starts already inside the
groups, without a Python `preexec_fn` (slow, unsafe with threads). Stop and destroy reach
every process through the cgroup (`cgroup.kill`, or the freezer); OOM kills are read from
the memory controller.

Without cgroups (not root, no cgroup fs): no wrapper; the command runs unlimited, and stop
reaches only its process group: a child that calls setsid() escapes. `capabilities.notes`
says so.

Either way: a new session (no controlling terminal, its own process group), cwd = task
dir, env = exactly `config.env`, stdin /dev/null, no new privileges (`setpriv`, util-linux:
setuid binaries cannot raise them), and with `isolation.user` the uid/gid given (the task
dir is then handed to that user). The executable is looked up in `config.env["PATH"]`
before starting, so a missing command fails `start` with a clear error.

Also here, because `sandbox` builds its command the same way: `resolve_program`,
`join_argv`, `parse_user`, `privileges_argv`, `own_task_dir`.

Neighbours: `drivers/supervised.py` (the base class), `drivers/sandbox.py`,
`agent/cgroups.py`.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from corral.agent.cgroups import Cgroup, CgroupRoot, NoCgroups
from corral.agent.drivers.base import (
    Capabilities,
    DriverError,
    TaskConfig,
    TaskHandle,
    Usage,
    expand_vars,
)
from corral.agent.drivers.supervised import Command, SupervisedDriver
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES

__all__ = [
    "JOIN_FAILED", "ProcessDriver", "User", "join_argv", "own_task_dir", "parse_user",
    "privileges_argv", "resolve_program",
]

# Exit code of the wrapper when it cannot join the cgroups (Docker uses 125 for "the
# container runtime failed", as opposed to 126/127 from the command itself).
JOIN_FAILED = 125


class ProcessDriver(SupervisedDriver):
    """See the module docstring. `cgroups` defaults to what `detect()` finds; pass
    `NoCgroups(...)` to run without them. `cgroup_parent` is the group all instances of this
    agent live under."""

    name = "process"

    def __init__(self, *, cgroups: CgroupRoot | NoCgroups | None = None,
                 cgroup_parent: str = "corral", clock: Callable[[], float] = time.time,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP,
                 python: str = sys.executable, shell: str = "/bin/sh",
                 setpriv: str | None = "setpriv") -> None:
        super().__init__(cgroups=cgroups, cgroup_parent=cgroup_parent, clock=clock,
                         log_max_bytes=log_max_bytes, log_keep=log_keep, python=python)
        self._shell = shell
        self._setpriv = shutil.which(setpriv) if setpriv else None

    @property
    def capabilities(self) -> Capabilities:
        limited = isinstance(self._cgroups, CgroupRoot)
        notes = []
        if isinstance(self._cgroups, NoCgroups):
            notes.append("resource limits are not enforced and stop reaches only the "
                         f"process group (no cgroups: {self._cgroups.reason})")
        if self._setpriv is None:
            notes.append("no_new_privileges is not set and isolation.user is refused "
                         "(setpriv, from util-linux, is not installed)")
        return Capabilities(signals=True, exec=True, fs_isolation=False,
                            network_isolation=False, oom_detection=limited,
                            resource_limits=limited, kills_all_processes=limited,
                            notes="; ".join(notes))

    def available(self) -> str:
        if isinstance(self._cgroups, CgroupRoot) and not os.access(self._shell, os.X_OK):
            return f"{self._shell} is needed to join cgroups and is missing"
        return ""

    async def _command(self, config: TaskConfig, cgroup: Cgroup | None) -> Command:
        args = expand_vars(config.command, config.env)
        program = resolve_program(args[0], config.env, config.task_dir)
        user = parse_user(config.isolation.user) if config.isolation.user else None
        if user is not None:
            if os.geteuid() != 0:
                raise DriverError("isolation.user needs the agent to run as root")
            if self._setpriv is None:
                raise DriverError("isolation.user needs setpriv (util-linux), not found")
            own_task_dir(config.task_dir, user)
        argv: tuple[str, ...] = (program, *args[1:])
        if self._setpriv is not None:
            argv = (*privileges_argv(self._setpriv, user), *argv)
        if cgroup is not None:
            argv = join_argv(self._shell, cgroup, config.env, argv)
        return Command(argv=argv, env=config.env, cwd=config.task_dir)

    def _group_alive(self, pgid: int) -> bool:
        return _group_exists(pgid)

    def _tree_usage(self, handle: TaskHandle) -> Usage | None:
        return _tree_usage(handle.pid)


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    uid: int
    gid: int
    name: str | None  # given by name: its supplementary groups from /etc/group too


def parse_user(spec: str) -> User:
    """`isolation.user`: a user name, `uid`, `uid:gid`, `name:group`. A numeric uid takes
    its primary group from /etc/passwd when it is listed there, else gid = uid."""
    user_part, _, group_part = spec.partition(":")
    try:
        if user_part.isdigit():
            uid, name = int(user_part), None
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid
        else:
            entry = pwd.getpwnam(user_part)
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
        if group_part:
            gid = int(group_part) if group_part.isdigit() else grp.getgrnam(group_part).gr_gid
    except KeyError as exc:
        raise DriverError(f"isolation.user {spec!r}: no such user or group on this node") \
            from exc
    return User(uid=uid, gid=gid, name=name if not group_part else None)


def privileges_argv(setpriv: str, user: User | None) -> tuple[str, ...]:
    """`setpriv` arguments that run the rest of the argv without new privileges (setuid
    binaries cannot raise them), as `user` when given."""
    argv: tuple[str, ...] = (setpriv, "--no-new-privs")
    if user is not None:
        groups = "--init-groups" if user.name is not None else "--clear-groups"
        argv += ("--reuid", str(user.uid), "--regid", str(user.gid), groups)
    return (*argv, "--")


def own_task_dir(task_dir: Path, user: User) -> None:
    """Hand the task dir (unpacked by the agent, as root) to the instance's user, once."""
    st = task_dir.stat()
    if (st.st_uid, st.st_gid) == (user.uid, user.gid):
        return
    for root, dirs, files in os.walk(task_dir):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)
    os.chown(task_dir, user.uid, user.gid)


def resolve_program(command: str, env: Mapping[str, str], cwd: Path) -> str:
    """The absolute path of `command`: relative to `cwd` when it has a slash, else looked
    up in `env["PATH"]`. Raises `DriverError` naming what was searched."""
    if "/" in command:
        path = command if os.path.isabs(command) else str(cwd / command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise DriverError(f"command {command!r} not found or not executable (cwd {cwd})")
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise DriverError(f"command {command!r} not found in PATH={env.get('PATH', '')}")
    return found


def join_argv(shell: str, cgroup: Cgroup, env: Mapping[str, str],
              argv: Sequence[str]) -> tuple[str, ...]:
    """`argv` behind a shell that first moves itself into every group of `cgroup`."""
    joins = " && ".join(f"echo $$ >{shlex.quote(str(f))}" for f in cgroup.procs_files())
    fail = f'{{ echo "corral: cannot join the instance\'s cgroups" >&2; exit {JOIN_FAILED}; }}'
    # dash exports PWD to what it execs; the environment must be exactly config.env.
    unset = "" if "PWD" in env else "unset PWD; "
    return (shell, "-c", f'{joins} || {fail}; {unset}exec "$@"', "sh", *argv)


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
