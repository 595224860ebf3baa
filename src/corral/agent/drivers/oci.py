"""The `oci` driver: each instance is a runc container from a bundle generated per start.

The bundle (`<state dir>/bundle`: `config.json`, and `rootfs/` unless the instance brings
a rootfs of its own) is described in `drivers/oci_bundle.py`: the `sandbox` driver's view
(host /usr and /etc read-only, /task, a private /tmp, own pid/ipc/uts/mount namespaces,
the host network or a named network namespace), limits in `linux.resources`. What the
instance's shim (`drivers/supervised.py`, `agent/shim.py`) runs:

    runc --root R --log <state>/runc.log run -d --pid-file <bundle>/init.pid --bundle B ID

Detached, not in the foreground: a foreground `runc run` stays, for the container's whole
life, as a Go process of ~10 MB RSS (~2 MB of it private) per instance, only to wait for
the container and pass its status on; and if that process died, the shim would record its
end while the container ran on. Detached, runc exits once the container runs, and the
shim, a child subreaper (its main_pid_file mode), becomes the parent of the container's
init and records the init's own wait status. The container stays in runc's state,
stopped, after its init ends, so its cgroup (and the OOM count in it) is there until
`destroy` runs `runc delete`.

PID 1 inside is `tini` (Debian package `tini`; its static build is bound read-only at
`/dev/corral-init`, so it runs in any rootfs), the command its child. The kernel drops
a signal to a namespace's init for which it has no handler, so a command that were PID 1
would never see the stop signal (PLATFORM.md: `runc kill ID TERM` is ignored); tini also
reaps orphans, and exits with the command's status, 128+N for a signal N, which the driver
turns back into the signal, as `sandbox` does for bwrap's. `handle.pid` is the command's
host pid, tini its `helpers` (never sent the stop signal). Stop, kill of every process,
usage and the OOM count go through the cgroup runc creates at `/<cgroup parent>/<instance
id>`, the path `agent/cgroups.py` uses, exactly as for the other drivers.

Environment: `config.env`, paths under the host task dir rewritten to `/task` (as in
`sandbox`); runc adds `HOME` from the user's passwd entry when the env has none (the
runner always sets one).

Names: container id and network namespace are `<cgroup parent>-<instance id>` (`corral-ID`
for the agent's default parent), so two agents on one machine never collide; the runc
state dir is `/run/corral/<cgroup parent>/runc` unless given. All are saved in the handle:
an adopting agent uses them, not its own settings. runc leaves the instance's parent group
behind in the hierarchies `agent/cgroups.py` does not manage (cpuset, devices, blkio,
systemd...): `destroy` removes it there when no start is under way; the managed ones are
the agent's (`DriverRegistry.remove_parent`).

Neighbours: `drivers/oci_bundle.py` (the spec), `drivers/supervised.py` (the base class),
`drivers/sandbox.py` (the same view with bubblewrap), `agent/cgroups.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.agent.cgroups import Cgroup, CgroupError, CgroupRoot, NoCgroups
from corral.agent.drivers.base import (
    DriverError,
    TaskConfig,
    TaskHandle,
    expand_vars,
)
from corral.agent.drivers.oci_bundle import (
    DEFAULT_ROOTFS_LINKS,
    HOST_DNS_FILES,
    HostFacts,
    build_spec,
    resolve_user,
)
from corral.agent.drivers.process import User, own_task_dir
from corral.agent.drivers.sandbox import INSIDE_TASK_DIR, inside_env
from corral.agent.drivers.supervised import (
    Command,
    IsolatedRuntime,
    Launched,
    MainProcess,
    SupervisedDriver,
    clear_state,
    start_ticks,
)
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES

__all__ = ["OciDriver", "inside_program"]

_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NETNS_DIR = Path("/var/run/netns")
_RUN_DIR = Path("/run/corral")
_FIND_MAIN_TIMEOUT = 10.0
_TOOL_TIMEOUT = 30.0
_KILL_WAIT = 5.0
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")  # runc's container id alphabet
_MAX_LINKS = 40  # symlinks followed resolving a command inside a rootfs (Linux's limit)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Runtime:
    """What runc and the driver made for one run of an instance, by name: enough to
    remove it all, from a config (a start that failed) or from a saved handle."""

    container: str
    runc_root: Path
    netns: str  # "" when the instance shares the host's network
    cgroup_parent: str
    instance: str
    bundle: Path | None


class OciDriver(IsolatedRuntime, SupervisedDriver):
    """See the module docstring. `runc`, `tini` and `ip` are looked up in PATH (plus the
    sbin dirs); `probe=False` skips the one-off trial container of `available()`."""

    name = "oci"
    # Starts under way in this process: while one is, runc may be creating the parent
    # group, so no destroy removes it (rmdir fails on a non-empty group, but not on one
    # runc has just made and not yet filled).
    _starting = 0

    def __init__(self, *, cgroups: CgroupRoot | NoCgroups | None = None,
                 cgroup_parent: str = "corral", clock: Callable[[], float] = time.time,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP,
                 python: str = sys.executable, runc: str = "runc", tini: str = "tini-static",
                 runc_root: Path | None = None, probe: bool = True) -> None:
        super().__init__(cgroups=cgroups, cgroup_parent=cgroup_parent, clock=clock,
                         log_max_bytes=log_max_bytes, log_keep=log_keep, python=python)
        self._prefix = cgroup_parent.replace("/", "-")
        self._runc_name = runc
        self._runc = _which(runc)
        self._tini_name = tini
        # A dynamically linked tini finds its libc in the host's /usr only: it serves the
        # default rootfs, not a user rootfs without glibc.
        self._tini = _which(tini) or (_which("tini") if tini == "tini-static" else None)
        self._runc_root = runc_root or _RUN_DIR / self._prefix / "runc"
        self._probe = probe

    _needs_root_because = "runc creates namespaces and cgroups"

    def _check_runtime(self) -> str:
        if self._runc is None:
            return f"{self._runc_name} not found in PATH"
        if self._tini is None:
            return (f"{self._tini_name} not found in PATH: it is each container's init "
                    "(Debian package tini)")
        return self._trial() if self._probe else ""

    def _trial(self) -> str:
        """Run one real container with a bundle like the instances' (runc fails here on
        what `runc --version` never shows: crun-like cgroup refusals, mount options)."""
        assert self._runc is not None and isinstance(self._cgroups, CgroupRoot)
        name = f"probe-{os.getpid()}"
        container = f"{self._prefix}-{name}"
        with tempfile.TemporaryDirectory(prefix="corral-oci-probe-") as tmp:
            config = TaskConfig(instance_id=name, command=("/bin/true",),
                                env={"PATH": "/usr/bin:/bin"}, task_dir=Path(tmp),
                                log_dir=Path(tmp) / "logs", run_dir=Path(tmp) / "run")
            # Its own runc state dir, in the temporary dir: nothing of the trial is left.
            root = ("--root", str(Path(tmp) / "runc"))
            bundle = config.state_dir / "bundle"
            try:
                # A group of its own at the top (not under the agent's parent), which runc
                # removes with the container: no parent group is left behind either.
                self._write_bundle(config, ("/bin/true",), netns=None,
                                   cgroups_path=f"/{container}")
                done = subprocess.run([self._runc, *root, "run", "--bundle", str(bundle),
                                       container], stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=_TOOL_TIMEOUT, check=False)
            except (OSError, DriverError, subprocess.TimeoutExpired) as exc:
                return f"runc does not work here: {exc}"
            finally:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    subprocess.run([self._runc, *root, "delete", "--force", container],
                                   capture_output=True, timeout=_TOOL_TIMEOUT, check=False)
                with contextlib.suppress(OSError):
                    _remove_bundle(bundle)  # before the temporary dir's rmtree: see there
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            return f"runc does not work here: {why}"
        return ""

    # --- SupervisedDriver hooks --------------------------------------------------------

    async def start(self, config: TaskConfig) -> TaskHandle:
        if config.instance_id in self._watches:  # the base refuses: nothing to undo
            return await super().start(config)
        if not _VALID_NAME.match(config.instance_id):
            raise DriverError(f"instance id {config.instance_id!r} cannot name a container")
        runc_log = config.state_dir / "runc.log"
        OciDriver._starting += 1
        try:
            handle = await super().start(config)
        except BaseException as exc:
            OciDriver._starting -= 1  # before the cleanup, which may remove parent groups
            await self._remove_runtime(self._runtime(config))
            reason = _runc_error(runc_log)
            _unlink(runc_log)
            clear_state(config.state_dir)
            if isinstance(exc, DriverError) and reason:
                raise DriverError(f"{exc}: {reason}") from exc
            raise
        OciDriver._starting -= 1
        _unlink(runc_log)
        return handle

    async def _setup_cgroup(self, config: TaskConfig) -> Cgroup | None:
        """The instance's group, made by runc from `linux.resources`: here only what an
        earlier run of the instance left (an agent that crashed) is removed, so that the
        container id is free and the OOM count starts at zero."""
        if not isinstance(self._cgroups, CgroupRoot) or self._runc is None or self._tini is None:
            raise DriverError(f"the oci driver is not usable here: {self.available()}")
        earlier = dataclasses.replace(self._runtime(config), bundle=None)
        if (earlier.runc_root / earlier.container).exists() or \
                (_NETNS_DIR / earlier.netns).exists():
            await self._remove_runtime(earlier)
        cgroup = self._cgroups.group(self._parent, config.instance_id)
        try:
            if cgroup.exists():
                await cgroup.kill()
                await cgroup.wait_empty(_KILL_WAIT)
                await cgroup.remove()
        except CgroupError as exc:
            raise DriverError(f"cannot clean up the cgroups of an earlier run of "
                              f"{config.instance_id}: {exc}") from exc
        return cgroup

    async def _command(self, config: TaskConfig, cgroup: Cgroup | None) -> Command:
        assert self._runc is not None
        env = inside_env(config.env, config.task_dir)
        args = expand_vars(config.command, env)
        program = inside_program(args[0], env, task_dir=config.task_dir, rootfs=config.rootfs)
        runtime = self._runtime(config)
        netns = None
        if config.isolation.network == "isolated":
            netns = runtime.netns
            await self._add_netns(netns)
        try:
            bundle = await asyncio.to_thread(self._write_bundle, config,
                                             (program, *args[1:]), netns=netns)
        except BaseException:
            if netns is not None:
                await self._delete_netns(netns)
            raise
        pid_file = bundle / "init.pid"
        argv = (self._runc, "--root", str(runtime.runc_root),
                "--log", str(config.state_dir / "runc.log"), "--log-format", "json",
                "run", "--detach", "--pid-file", str(pid_file), "--bundle", str(bundle),
                runtime.container)
        return Command(argv=argv, env={"PATH": _TOOL_PATH}, cwd=bundle,
                       main_pid_file=pid_file,
                       data={"container": runtime.container,
                             "runc_root": str(runtime.runc_root), "netns": netns or "",
                             "bundle": str(bundle)})

    async def _find_main(self, config: TaskConfig, launched: Launched) -> MainProcess:
        """The command: tini's child (tini is `launched.pid`, the container's init), a
        moment after runc has started the container."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FIND_MAIN_TIMEOUT
        init = launched.pid
        pause = 0.0005
        # No start time: the init had ended before the shim could read it.
        while launched.start_ticks is not None and loop.time() < deadline and \
                start_ticks(init) == launched.start_ticks:
            children = _children(init)
            if children:
                ticks = start_ticks(children[0])
                if ticks is not None:
                    return MainProcess(pid=children[0], ticks=ticks, helpers=(init,))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        # Ended already: the shim has its status.
        return MainProcess(pid=init, ticks=launched.start_ticks)

    async def _release(self, handle: TaskHandle) -> None:
        data = handle.data
        container, root = data.get("container"), data.get("runc_root")
        if not isinstance(container, str) or not isinstance(root, str):
            return  # not a handle this driver made
        bundle, netns = data.get("bundle"), data.get("netns")
        await self._remove_runtime(_Runtime(
            container=container, runc_root=Path(root), netns=str(netns or ""),
            cgroup_parent=str(data.get("cgroup_parent") or self._parent),
            instance=handle.instance_id,
            bundle=Path(bundle) if isinstance(bundle, str) else None))
        state_dir = data.get("state_dir")
        if isinstance(state_dir, str):
            _unlink(Path(state_dir) / "runc.log")

    # --- runtime pieces ------------------------------------------------------------------

    def _runtime(self, config: TaskConfig) -> _Runtime:
        name = f"{self._prefix}-{config.instance_id}"
        return _Runtime(container=name, runc_root=self._runc_root, netns=name,
                        cgroup_parent=self._parent, instance=config.instance_id,
                        bundle=config.state_dir / "bundle")

    def _write_bundle(self, config: TaskConfig, command: Sequence[str], *,
                      netns: str | None, cgroups_path: str | None = None) -> Path:
        """`<state dir>/bundle` with `config.json` (and the default rootfs); runs in a
        thread: it reads passwd files and writes a few inodes."""
        assert self._tini is not None and isinstance(self._cgroups, CgroupRoot)
        bundle = config.state_dir / "bundle"
        if bundle.exists():
            _remove_bundle(bundle)
        bundle.mkdir(parents=True)
        user_rootfs = config.rootfs is not None
        if config.rootfs is not None:
            if not config.rootfs.is_dir():
                raise DriverError(f"rootfs {config.rootfs} is not a directory")
            rootfs = config.rootfs.resolve()
        else:
            rootfs = bundle / "rootfs"
            rootfs.mkdir()
            for name, target in DEFAULT_ROOTFS_LINKS:
                (rootfs / name).symlink_to(target)
        uid, gid = 0, 0
        groups: tuple[int, ...] = ()
        if config.isolation.user:
            # A user rootfs's /etc/passwd is read as the container sees it: a symlink in the
            # image (etc -> /, passwd -> /etc/shadow) must never make the agent read the
            # host's files.
            def etc_file(name: str) -> Path | None:
                return _resolve_in_root(rootfs, f"/etc/{name}") if user_rootfs \
                    else Path("/etc", name)

            try:
                uid, gid, groups = resolve_user(config.isolation.user,
                                                passwd=_read_text(etc_file("passwd")),
                                                group=_read_text(etc_file("group")))
            except ValueError as exc:
                raise DriverError(str(exc)) from exc
            own_task_dir(config.task_dir, User(uid=uid, gid=gid, name=None))
        facts = HostFacts(
            rootfs=rootfs, user_rootfs=user_rootfs,
            cgroups_path=cgroups_path or f"/{self._parent}/{config.instance_id}",
            netns_path=str(_NETNS_DIR / netns) if netns is not None else None,
            uid=uid, gid=gid, additional_gids=groups, init=self._tini,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE),
            recursive_readonly=_kernel_at_least(5, 12),
            swap_limit=_swap_limit(self._cgroups),
            dns_files=tuple(f for f in HOST_DNS_FILES if os.path.exists(f)))
        env = inside_env(config.env, config.task_dir)
        spec = build_spec(config, facts, env=env, command=command)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        return bundle

    async def _remove_runtime(self, runtime: _Runtime) -> None:
        """runc's state and the container's groups, the network namespace, the bundle;
        whatever of them exists. Idempotent."""
        state = runtime.runc_root / runtime.container
        if state.exists():
            if self._runc is None:
                raise DriverError(f"{self._runc_name} is gone: cannot delete container "
                                  f"{runtime.container}")
            done = await _tool(self._runc, "--root", str(runtime.runc_root), "delete",
                               "--force", runtime.container)
            if done.returncode != 0 and state.exists():
                raise DriverError(f"runc delete {runtime.container} failed: {_stderr(done)}")
        if not OciDriver._starting:
            self._remove_unmanaged_groups(runtime.cgroup_parent, runtime.instance)
            # runc makes its state dir again when it needs it; an agent whose instances
            # are all gone leaves nothing in /run.
            with contextlib.suppress(OSError):  # not empty: other containers are there
                runtime.runc_root.rmdir()
                if runtime.runc_root.parent == _RUN_DIR / self._prefix:
                    runtime.runc_root.parent.rmdir()
        if runtime.netns:
            await self._delete_netns(runtime.netns)
        if runtime.bundle is not None:
            await asyncio.to_thread(_remove_bundle, runtime.bundle)

    def _remove_unmanaged_groups(self, parent: str, instance: str) -> None:
        """The instance's group and the (empty) parent in the hierarchies runc joins and
        `agent/cgroups.py` does not manage; a parent still in use stays (EBUSY)."""
        for hierarchy in _unmanaged_hierarchies(self._cgroups):
            for d in (hierarchy / parent / instance, hierarchy / parent):
                try:
                    d.rmdir()
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                        raise

    async def _add_netns(self, name: str) -> None:
        ip = _which("ip")
        if ip is None:
            raise DriverError("isolation.network: isolated needs `ip` (iproute2)")
        if (_NETNS_DIR / name).exists():
            await self._delete_netns(name)
        for args in (("netns", "add", name), ("-n", name, "link", "set", "lo", "up")):
            done = await _tool(ip, *args)
            if done.returncode != 0:
                await self._delete_netns(name)
                raise DriverError(f"ip {' '.join(args)} failed: {_stderr(done)}")

    async def _delete_netns(self, name: str) -> None:
        ip = _which("ip")
        if ip is None or not (_NETNS_DIR / name).exists():
            return
        done = await _tool(ip, "netns", "delete", name)
        if done.returncode != 0 and (_NETNS_DIR / name).exists():
            raise DriverError(f"ip netns delete {name} failed: {_stderr(done)}")


def inside_program(command: str, env: Mapping[str, str], *, task_dir: Path,
                   rootfs: Path | None) -> str:
    """Where `command` is inside the container: a path with a slash relative to /task, a
    name looked up in `env["PATH"]`, each candidate checked in what the container will
    show (the task dir, the host /usr and /etc, or the user rootfs). Raises `DriverError`
    in the words the other drivers use."""
    def shown(inside: str) -> bool:
        host = _host_path(inside, task_dir, rootfs)
        if host is None or not host.is_file() or not os.access(host, os.X_OK):
            return False
        if rootfs is not None:
            return True  # resolved inside the rootfs already
        # Host symlinks resolve on the host: the target must be shown inside too.
        real = os.path.realpath(host)
        return real.startswith(("/usr/", "/etc/", os.path.realpath(task_dir) + "/"))

    if "/" in command:
        inside = os.path.normpath(os.path.join(INSIDE_TASK_DIR, command))
        if shown(inside):
            return inside
        raise DriverError(f"command {command!r} not found or not executable "
                          f"(cwd {INSIDE_TASK_DIR} in the container)")
    for directory in env.get("PATH", "").split(":"):
        if not directory.startswith("/"):
            continue
        inside = os.path.join(os.path.normpath(directory), command)
        if shown(inside):
            return inside
    raise DriverError(f"command {command!r} not found in PATH={env.get('PATH', '')} "
                      "in the container")


def _host_path(inside: str, task_dir: Path, rootfs: Path | None) -> Path | None:
    """The host file that `inside` (absolute, normalised) shows, or None if it shows none."""
    if inside == INSIDE_TASK_DIR or inside.startswith(INSIDE_TASK_DIR + "/"):
        return task_dir / inside[len(INSIDE_TASK_DIR) + 1:]
    if rootfs is not None:
        return _resolve_in_root(rootfs, inside)
    first, _, rest = inside[1:].partition("/")
    if first in ("usr", "etc"):
        return Path(inside)
    links = dict(DEFAULT_ROOTFS_LINKS)
    return Path("/", links[first], rest) if first in links else None


def _resolve_in_root(root: Path, inside: str) -> Path | None:
    """`inside` resolved as if `root` were `/`: absolute symlinks restart at `root`, `..`
    stops there (what a chroot sees; busybox images link /bin/sh -> /bin/busybox)."""
    parts = [p for p in inside.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        path = root.joinpath(*resolved, part)
        if path.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(path)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


async def _tool(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """A short-lived helper (runc, ip), from a worker thread so the loop keeps going."""
    try:
        return await asyncio.to_thread(subprocess.run, argv, stdin=subprocess.DEVNULL,
                                       capture_output=True, timeout=_TOOL_TIMEOUT,
                                       check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"{argv[0]} failed: {exc}") from exc


def _stderr(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"


def _runc_error(log: Path) -> str:
    """The last error runc logged (its `--log-format json` lines), or ""."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                return str(entry.get("msg", ""))
    return ""


def _remove_bundle(bundle: Path) -> None:
    """Remove a bundle without ever recursing into its rootfs: that holds only the
    symlinks and the empty mount points runc made, and a non-empty directory there would
    be a mount that leaked into the host, whose files must not be deleted."""
    rootfs = bundle / "rootfs"
    if rootfs.is_dir() and not rootfs.is_symlink():
        for entry in os.scandir(rootfs):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                path.rmdir()  # raises when not empty: see above
            else:
                path.unlink()
        rootfs.rmdir()
    for name in ("config.json", "init.pid"):
        _unlink(bundle / name)
    with contextlib.suppress(FileNotFoundError):
        bundle.rmdir()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_text(path: Path | None) -> str:
    """The file's text, "" if it is missing; never through a symlink at the last step."""
    if path is None:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as exc:
        raise DriverError(f"cannot read {path.name} in the rootfs: {exc.strerror}") from exc
    with os.fdopen(fd, errors="replace") as f:
        return f.read()


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', os.defpath)}:{_TOOL_PATH}")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _kernel_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found[1]), int(found[2])) >= (major, minor)


def _swap_limit(cgroups: CgroupRoot) -> bool:
    """Whether a memory+swap limit can be set (v1 `memsw`, v2 `memory.swap.max`)."""
    if cgroups.version == "v1":
        return (cgroups.mounts["memory"] / "memory.memsw.limit_in_bytes").exists()
    root = cgroups.mounts[""]
    return any((d / "memory.swap.max").exists() for d in root.iterdir() if d.is_dir())


def _unmanaged_hierarchies(cgroups: CgroupRoot | NoCgroups) -> list[Path]:
    """The cgroup v1 hierarchies beside the ones `cgroups` manages (none on v2)."""
    if not isinstance(cgroups, CgroupRoot) or cgroups.version != "v1":
        return []
    managed = {os.path.realpath(m) for m in cgroups.mounts.values()}
    base = cgroups.mounts["memory"].parent
    found: dict[str, Path] = {}
    for entry in os.scandir(base):
        real = os.path.realpath(entry.path)
        if real not in managed and os.path.isfile(os.path.join(real, "cgroup.procs")):
            found.setdefault(real, Path(entry.path))
    return sorted(found.values())
