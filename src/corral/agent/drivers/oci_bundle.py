"""The OCI runtime spec (`config.json`) of one instance: pure data in, a dict out.

`build_spec` turns a `TaskConfig` and the `HostFacts` the `oci` driver gathered (where the
rootfs is, the cgroup path, the network namespace, the resolved user, the agent's
RLIMIT_NOFILE...) into the dict runc reads from `<bundle>/config.json`. Nothing here touches
the filesystem or the process table, so every choice below is unit-tested without root.

The view is the `sandbox` driver's, so a spec behaves the same under both:

* default rootfs: an empty directory with the host's `/usr` and `/etc` bound read-only and
  the merged-/usr symlinks (`DEFAULT_ROOTFS_LINKS`); `/` itself cannot be the rootfs
  (runc's pivot_root fails on it, PLATFORM.md). The root is read-only.
* a user rootfs (an artifact the agent unpacked): used as the root as it is, read-only too.
  Read-only because the unpacked tree is content-addressed and may be shared by several
  instances and by the next restart of this one: an instance that could write into it
  would change what its siblings and its successor run. What an instance writes belongs in
  `/task` or `/tmp` (Kubernetes' `readOnlyRootFilesystem`, Nomad's read-only artifacts).
  The host's `/etc/hosts` and `/etc/resolv.conf` are bound in read-only, as Docker does:
  the instance shares the host's network, so it must resolve names as the host does.
  (runc itself still creates the mount points a rootfs lacks, `/proc` `/task` `/tmp`...,
  before it makes the root read-only: the same empty entries for every instance.)
* either way: the task dir read-write at `/task` (also the cwd), a private size-bounded
  tmpfs at `/tmp`, `/proc`, a tmpfs `/dev` with the standard devices (runc creates them),
  `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys` and the instance's own cgroups read-only
  (runtimes such as the JVM read their limits there), and the init (`HostFacts.init`, a
  static tini) read-only at `INIT_PATH`, inside /dev, the container's own tmpfs, so that
  no rootfs needs a file for it. The process is `INIT_PATH -- <command>`: see
  `drivers/oci.py`.

Namespaces pid, ipc, uts and mount; the host network unless the driver made a named
network namespace (`HostFacts.netns_path`). The uts namespace keeps the host's hostname (as
`sandbox` does): the instance shares the host's IP, and a name that resolved to nothing
would only mislead. Capabilities, masked and read-only paths are runc's own defaults
(`runc spec`): the smallest set that runs ordinary servers, with `noNewPrivileges`.

Neighbours: `drivers/oci.py` (gathers the facts, writes the bundle, runs runc),
`agent/cgroups.py` (reads the groups runc creates at `cgroups_path`), `model/application.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.agent.drivers.base import TaskConfig
from corral.agent.drivers.sandbox import INSIDE_TASK_DIR

__all__ = [
    "DEFAULT_ROOTFS_LINKS", "HOST_DNS_FILES", "INIT_PATH", "OCI_VERSION", "HostFacts",
    "build_spec", "resolve_user", "tmp_size",
]

# The spec version runc 1.1 writes with `runc spec`.
OCI_VERSION = "1.0.2"
INIT_PATH = "/dev/corral-init"
# Symlinks in the default rootfs (name -> target, relative so they resolve inside it):
# Debian and most current distributions have merged /usr.
DEFAULT_ROOTFS_LINKS: tuple[tuple[str, str], ...] = (
    ("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin"),
)
# Bound read-only into a user rootfs when the host has them.
HOST_DNS_FILES = ("/etc/hosts", "/etc/resolv.conf")
# runc's defaults (`runc spec`, libcontainer/specconv/example.go).
_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
_MASKED = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi",
)
_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_DEV_SIZE = "65536k"
_SHM_SIZE = "65536k"
# As in `sandbox`: /tmp's pages count against the memory limit anyway; the bound only stops
# one instance from filling its whole limit with files by accident.
_TMP_MAX = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """What the spec depends on besides the `TaskConfig`, found by the driver."""

    rootfs: Path  # the bundle's empty rootfs dir, or the user rootfs (`user_rootfs`)
    user_rootfs: bool
    cgroups_path: str  # "/<agent's cgroup parent>/<instance id>"
    init: str  # host path of a static init (tini), bound at INIT_PATH
    netns_path: str | None = None  # a named network namespace; None: the host's network
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    # The agent's own RLIMIT_NOFILE (soft, hard): the instance gets the same, as with the
    # other drivers, and never more than the hard limit (asking for more fails the start).
    nofile: tuple[int, int] = (1024, 4096)
    # Whether the kernel can make a bind mount read-only with everything mounted below it
    # (runc's `rro`, mount_setattr, Linux >= 5.12). Without it, a file bound over one in
    # the host's /etc (a container's /etc/resolv.conf) would stay writable.
    recursive_readonly: bool = True
    # Whether the memory controller limits memory+swap (v1 `memsw`, v2 `memory.swap.max`);
    # asking runc for a swap limit without it fails the start.
    swap_limit: bool = True
    dns_files: tuple[str, ...] = ()  # those of HOST_DNS_FILES that exist on the host


def tmp_size(memory: int) -> int:
    """Bytes for the private /tmp: the memory limit, at most 256 MiB (as `sandbox`)."""
    return min(memory, _TMP_MAX)


def build_spec(config: TaskConfig, facts: HostFacts, *, command: Sequence[str],
               env: Mapping[str, str]) -> dict[str, Any]:
    """The runtime spec for `config` (see the module docstring): `command` is the argv as
    seen inside (its program resolved, its `${VARS}` expanded), `env` the environment as
    seen inside. Deterministic: the same input gives the same dict, environment sorted."""
    user: dict[str, Any] = {"uid": facts.uid, "gid": facts.gid}
    if facts.additional_gids:
        user["additionalGids"] = list(facts.additional_gids)
    process: dict[str, Any] = {
        "terminal": False,
        "user": user,
        "args": [INIT_PATH, "--", *command],
        "env": [f"{k}={v}" for k, v in sorted(env.items())],
        "cwd": INSIDE_TASK_DIR,
        "capabilities": {kind: list(_CAPABILITIES)
                         for kind in ("bounding", "effective", "permitted", "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": min(facts.nofile),
                     "hard": facts.nofile[1]}],
        "noNewPrivileges": True,
    }
    namespaces: list[dict[str, str]] = [
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if facts.netns_path is not None:
        namespaces.append({"type": "network", "path": facts.netns_path})
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(facts.rootfs), "readonly": True},
        "mounts": _mounts(config, facts),
        "linux": {
            "cgroupsPath": facts.cgroups_path,
            "namespaces": namespaces,
            "resources": _resources(config, facts),
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }


def _mounts(config: TaskConfig, facts: HostFacts) -> list[dict[str, Any]]:
    ro = "rro" if facts.recursive_readonly else "ro"

    def bind(source: str, destination: str, *options: str) -> dict[str, Any]:
        return {"destination": destination, "type": "bind", "source": source,
                "options": ["rbind", *options]}

    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", f"size={_DEV_SIZE}"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={_SHM_SIZE}"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    if facts.user_rootfs:
        mounts += [bind(f, f, ro, "nosuid", "nodev", "noexec") for f in facts.dns_files]
    else:
        mounts += [bind("/usr", "/usr", ro, "nosuid", "nodev"),
                   bind("/etc", "/etc", ro, "nosuid", "nodev")]
    mounts += [
        bind(facts.init, INIT_PATH, "ro", "nosuid", "nodev"),
        bind(str(config.task_dir), INSIDE_TASK_DIR, "rw", "nosuid", "nodev"),
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777",
                     f"size={tmp_size(config.resources.memory)}"]},
    ]
    return mounts


def _resources(config: TaskConfig, facts: HostFacts) -> dict[str, Any]:
    res = config.resources
    memory: dict[str, int] = {"limit": res.memory}
    if facts.swap_limit:
        # memory+swap equal to memory: no swap, as agent/cgroups.py does for the other
        # drivers (swap would turn an OOM kill into a slow crawl).
        memory["swap"] = res.memory
    return {
        # Deny every device node except the standard ones runc always allows.
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": memory,
        # No cpu quota here: the driver sets it once the container runs (see
        # Cgroup.set_cpu), so runc's own set-up is not throttled in the instance's group.
        "pids": {"limit": res.pids},
    }


def resolve_user(user: str, *, passwd: str, group: str) -> tuple[int, int, tuple[int, ...]]:
    """`isolation.user` -> (uid, gid, supplementary gids), looked up in the text of the
    rootfs's `/etc/passwd` and `/etc/group` (the host's for the default rootfs, the
    image's for a user rootfs); the same rules as `process.parse_user`:

    `uid`, `uid:gid`, `name`, `name:group`; a user without a group gets its passwd entry's
    primary group, or a gid equal to its uid when the uid has no entry (never group 0,
    which Docker picks there and which would hand out root's group). Only a user given by
    name alone gets its supplementary groups (`setpriv --init-groups`). Raises ValueError."""
    name, _, grp = user.strip().partition(":")
    users = _entries(passwd)
    groups = _entries(group)
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in users.values() if e[0] == str(uid)), None)
        default_gid = int(entry[1]) if entry is not None and entry[1].isdigit() else uid
    elif name in users and users[name][0].isdigit() and users[name][1].isdigit():
        uid, default_gid = int(users[name][0]), int(users[name][1])
    else:
        raise ValueError(f"isolation.user: no user {name!r} in the rootfs's /etc/passwd")
    if not grp:
        if name.isdigit():
            return uid, default_gid, ()
        extra = sorted({int(gid) for gid, members in groups.values()
                        if gid.isdigit() and name in members.split(",")} - {default_gid})
        return uid, default_gid, tuple(extra)
    if grp.isdigit():
        return uid, int(grp), ()
    if grp in groups and groups[grp][0].isdigit():
        return uid, int(groups[grp][0]), ()
    raise ValueError(f"isolation.user: no group {grp!r} in the rootfs's /etc/group")


def _entries(text: str) -> Mapping[str, tuple[str, str]]:
    """`name:x:id:...` lines -> name -> (third field, fourth field). The first entry of a
    name wins, as in glibc."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) >= 3:
            out.setdefault(fields[0], (fields[2], fields[3] if len(fields) > 3 else ""))
    return out
