"""Several hosts on one machine: network namespaces on a private bridge (PLATFORM.md,
"Several hosts on one machine"). The plumbing under `testing/hosts.py`'s `NetnsCluster`.

A `Switch` is a namespace holding a bridge; every host it `attach`es is another namespace
with a veth whose other end is a port of that bridge. The machine's own network is never
touched: both ends of every veth are created directly inside the namespaces, so no
interface ever appears in the root namespace and names only need to be unique per
namespace (hosts all see `eth0`; the switch sees one port per host label).

Names: every namespace, cgroup parent, runc root and temp dir of one run starts with
`crn<pid>-<n>`, the pid of the process that made it. `sweep()` removes whatever carries the
name of a process that no longer exists (a test run that was SIGKILLed), and never touches
another live run's resources.

Processes enter a namespace through `nsenter --net=...` (`enter_argv`), not
`ip netns exec`: the latter also remounts /sys for the namespace, which hides
/sys/fs/cgroup, so an agent started that way finds no cgroups. `NamespaceLoop` runs an
asyncio loop on a thread that joined a namespace with setns(2), so a test can use the typed
client against addresses only reachable from inside (sockets keep the namespace of the
thread that created them; setns(CLONE_NEWNET) is per thread and allowed in a threaded
process, unlike the mount namespace).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from corral.agent.cgroups import CgroupRoot, detect

__all__ = [
    "NETNS_DIR", "RUN_DIR", "NamespaceLoop", "Proc", "Switch", "enter_argv", "kill_netns",
    "kill_pids", "list_netns", "netns_pids", "new_prefix", "proc_argv", "release",
    "remove_agent_state", "sweep", "unavailable_reason",
]

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
RUN_DIR = Path("/run/corral")  # the oci driver's runc roots: RUN_DIR/<cgroup parent>/runc
_STEM = "crn"
_OWNED = re.compile(rf"^{_STEM}(\d+)-(\d+)(?:-|$)")
_CLONE_NEWNET = 0x40000000
_TOOL_TIMEOUT = 30.0
_counter = 0
_counter_lock = threading.Lock()
# Prefixes of this process whose resources are live: `sweep` spares them, but removes what
# an earlier harness of this same process failed to clean.
_live: set[str] = set()


def new_prefix() -> str:
    """A name no other run uses: `crn<pid>-<n>`, registered as live until `release`d."""
    global _counter
    with _counter_lock:
        n = _counter
        _counter += 1
    prefix = f"{_STEM}{os.getpid()}-{n}"
    _live.add(prefix)
    return prefix


def release(prefix: str) -> None:
    _live.discard(prefix)


def unavailable_reason() -> str | None:
    """Why hosts cannot be built here (for a skip message), or None."""
    if os.geteuid() != 0:
        return f"needs root: creates network namespaces and cgroups (euid {os.geteuid()})"
    for tool in ("ip", "nsenter"):
        if _which(tool) is None:
            return f"needs `{tool}` (Debian packages iproute2, util-linux)"
    found = detect()
    if not isinstance(found, CgroupRoot):
        return f"needs cgroups (agents run instances in them): {found.reason}"
    probe = f"{_STEM}{os.getpid()}-probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    argv: tuple[str, ...]


def enter_argv(netns: str) -> list[str]:
    """The prefix that runs a command inside `netns` (network only: same files, same
    cgroups, same pid namespace)."""
    return [_which("nsenter") or "nsenter", f"--net={NETNS_DIR / netns}", "--"]


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_pids(netns: str) -> list[int]:
    """Processes whose network namespace is `netns` (never this process itself)."""
    done = _ip("netns", "pids", netns, check=False)
    if done.returncode != 0:
        return []
    return sorted(int(p) for p in done.stdout.split() if int(p) not in (1, os.getpid()))


def proc_argv(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0")[:-1])


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        if pid in (0, 1, os.getpid()):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_netns(netns: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process in `netns` until none is left (a process may fork between
    listing and killing); the pids that remain after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        pids = netns_pids(netns)
        if not pids or time.monotonic() > deadline:
            return pids
        kill_pids(pids)
        time.sleep(0.05)


class Switch:
    """A bridge in its own namespace, and the host namespaces plugged into it. Nothing
    here touches the root namespace."""

    def __init__(self, prefix: str, *, prefix_len: int = 16) -> None:
        self.prefix = prefix
        self.netns = f"{prefix}-sw"
        self.prefix_len = prefix_len
        self.hosts: dict[str, str] = {}  # label -> namespace

    def create(self) -> None:
        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.netns, "link", "set", "br0", "up")

    def attach(self, label: str, address: str) -> str:
        """A new namespace `<prefix>-<label>` at `address`, `eth0` plugged into switch
        port `label` (at most 15 characters, the kernel's limit on interface names)."""
        if len(label) > 15 or not re.fullmatch(r"[a-z0-9]+", label):
            raise ValueError(f"host label {label!r}: 1-15 characters a-z, 0-9")
        netns = f"{self.prefix}-{label}"
        _ip("netns", "add", netns)
        self.hosts[label] = netns
        _ip("link", "add", "eth0", "netns", netns, "type", "veth",
            "peer", "name", label, "netns", self.netns)
        _ip("-n", self.netns, "link", "set", label, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{address}/{self.prefix_len}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        return netns

    def set_link(self, label: str, up: bool) -> None:
        """Unplug (or plug back) a host at the switch: its packets go nowhere, as with a
        cut cable; the host itself sees its carrier go down."""
        _ip("-n", self.netns, "link", "set", label, "up" if up else "down")

    def link_up(self, label: str) -> bool:
        done = _ip("-n", self.netns, "-o", "link", "show", label, check=False)
        return done.returncode == 0 and ",UP" in done.stdout.split(">")[0] + ","

    def kill_all(self) -> list[str]:
        """SIGKILL every process in every namespace of this switch; what survived, as
        messages."""
        problems = []
        for netns in [*self.hosts.values(), self.netns]:
            left = kill_netns(netns)
            if left:
                problems.append(f"processes left in {netns}: {left}")
        return problems

    def delete(self) -> list[str]:
        """Delete every namespace (after `kill_all`: a process inside keeps one alive
        unnamed); what could not be deleted, as messages."""
        problems = []
        for netns in [*self.hosts.values(), self.netns]:
            problems.extend(_delete_netns(netns))
        return problems


class NamespaceLoop:
    """An asyncio event loop on a daemon thread inside network namespace `netns`. Close it
    before deleting the namespace: a thread inside keeps the namespace alive."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                        name=f"netns-{netns}")
        self._thread.start()
        try:
            ready.result(timeout=10)
        except BaseException:
            self._thread.join(timeout=1)
            self._loop.close()
            raise

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            _setns(NETNS_DIR / self.netns)
        except OSError as exc:
            ready.set_exception(exc)
            return
        asyncio.set_event_loop(self._loop)
        ready.set_result(None)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g}s (inside {self.netns})") \
                from None

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def remove_agent_state(parent: str, cgroups: CgroupRoot | None = None) -> list[str]:
    """Remove what an agent with cgroup parent `parent` leaves outside its data dir: runc
    containers (runc removes their groups), then every group under `parent` (killing what
    runs there), its runc root, and network namespaces of isolated instances. Messages for
    what could not be removed."""
    problems = []
    runc_root = RUN_DIR / parent.replace("/", "-") / "runc"
    runc = _which("runc")
    if runc is not None and runc_root.is_dir():
        listed = _run([runc, "--root", str(runc_root), "list", "-q"])
        for container in listed.stdout.split():
            done = _run([runc, "--root", str(runc_root), "delete", "--force", container])
            if done.returncode != 0:
                problems.append(f"runc delete {container}: {done.stderr.strip()}")
    root = cgroups or detect()
    if isinstance(root, CgroupRoot):
        try:
            asyncio.run(root.remove_parent(parent))
        except Exception as exc:  # a cleanup reports and goes on with the rest
            problems.append(f"cgroup parent {parent}: {exc}")
        problems.extend(f"cgroup left: {d}" for d in root.parent_dirs(parent) if d.exists())
    shutil.rmtree(RUN_DIR / parent.replace("/", "-"), ignore_errors=True)
    for netns in list_netns():
        if netns.startswith(f"{parent}-"):
            kill_netns(netns)
            problems.extend(_delete_netns(netns))
    return problems


def sweep(temp_root: Path) -> list[str]:
    """Remove leftovers of runs whose process is gone (or of this process's closed
    harnesses): namespaces, agents' cgroups and runc state, temp dirs under `temp_root`.
    The names removed."""
    removed: list[str] = []
    # Processes first: an orphaned agent of a killed run would otherwise start instances
    # in groups as they are being removed.
    stale_ns = [n for n in list_netns() if _stale(n)]
    for netns in stale_ns:
        kill_netns(netns)
    cgroups = detect()
    parents: set[str] = set()
    if isinstance(cgroups, CgroupRoot):
        for mount in cgroups.mounts.values():
            with contextlib.suppress(OSError):
                parents.update(e.name for e in os.scandir(mount)
                               if e.is_dir(follow_symlinks=False) and _stale(e.name))
    with contextlib.suppress(OSError):
        parents.update(e.name for e in os.scandir(RUN_DIR) if _stale(e.name))
    for parent in sorted(parents):
        remove_agent_state(parent, cgroups if isinstance(cgroups, CgroupRoot) else None)
        removed.append(parent)
    for netns in stale_ns:
        _delete_netns(netns)
        removed.append(netns)
    with contextlib.suppress(OSError):
        for entry in os.scandir(temp_root):
            if _stale(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


def _stale(name: str) -> bool:
    match = _OWNED.match(name)
    if match is None:
        return False
    pid = int(match[1])
    if pid == os.getpid():
        return f"{_STEM}{match[1]}-{match[2]}" not in _live
    return not Path(f"/proc/{pid}").exists()


def _delete_netns(netns: str) -> list[str]:
    if not (NETNS_DIR / netns).exists():
        return []
    done = _ip("netns", "del", netns, check=False)
    if done.returncode != 0:
        return [f"ip netns del {netns}: {done.stderr.strip()}"]
    return []


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _which(tool: str) -> str | None:
    return shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                    "/sbin:/bin")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = _run([_which("ip") or "ip", *args])
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done
