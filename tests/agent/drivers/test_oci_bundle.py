"""The OCI spec the `oci` driver writes: process, mounts, namespaces, limits, user, network,
user rootfs. Pure: no root, no runc (test_oci.py runs the real thing)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from corral.agent.drivers.base import TaskConfig
from corral.agent.drivers.oci_bundle import (
    DEFAULT_ROOTFS_LINKS,
    INIT_PATH,
    HostFacts,
    build_spec,
    resolve_user,
    tmp_size,
)
from corral.model.application import IsolationSpec, Resources

MiB = 1024 * 1024
ROOTFS = Path("/var/lib/corral/run/i1/bundle/rootfs")
COMMAND = ("/usr/bin/python3", "app.py", "--port", "31002")
ENV = {"PATH": "/usr/bin:/bin", "PORT_HTTP": "31002", "CORRAL_TASK_DIR": "/task"}
PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1001:App,,,:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """root:x:0:
staff:x:50:app
app:x:1001:
audio:x:29:pulse,app
nogroup:x:65534:
"""


def config(**overrides: Any) -> TaskConfig:
    base = TaskConfig(
        instance_id="i1", command=("python3", "app.py", "--port", "${PORT_HTTP}"),
        env={"PATH": "/usr/bin:/bin", "PORT_HTTP": "31002"},
        task_dir=Path("/var/lib/corral/tasks/i1"), log_dir=Path("/var/lib/corral/logs/i1"),
        resources=Resources(cpu=0.25, memory=128 * MiB, pids=64))
    return dataclasses.replace(base, **overrides)


def facts(**overrides: Any) -> HostFacts:
    base = HostFacts(rootfs=ROOTFS, user_rootfs=False, cgroups_path="/corral/i1",
                     init="/usr/bin/tini-static", nofile=(1024, 20000))
    return dataclasses.replace(base, **overrides)


def spec(config_: TaskConfig | None = None, facts_: HostFacts | None = None, *,
         env: dict[str, str] | None = None) -> dict[str, Any]:
    return build_spec(config_ or config(), facts_ or facts(), command=COMMAND,
                      env=ENV if env is None else env)


def mounts(spec_: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {m["destination"]: m for m in spec_["mounts"]}
    assert len(out) == len(spec_["mounts"]), "a mount point appears twice"
    return out


def test_the_init_runs_the_command_in_the_task_dir() -> None:
    proc = spec()["process"]
    assert proc["args"] == [INIT_PATH, "--", *COMMAND]
    assert proc["cwd"] == "/task"
    assert proc["terminal"] is False  # stdout/stderr are the shim's pipes, not a tty
    assert proc["noNewPrivileges"] is True
    assert proc["user"] == {"uid": 0, "gid": 0}
    init = mounts(spec())[INIT_PATH]
    assert init["source"] == "/usr/bin/tini-static" and "ro" in init["options"]
    assert INIT_PATH.startswith("/dev/")  # the container's own tmpfs: no rootfs is touched


def test_env_is_the_given_env_sorted() -> None:
    env = spec()["process"]["env"]
    assert env == ["CORRAL_TASK_DIR=/task", "PATH=/usr/bin:/bin", "PORT_HTTP=31002"]


def test_the_spec_is_deterministic() -> None:
    one = json.dumps(spec(), sort_keys=True)
    assert json.dumps(spec(env=dict(reversed(list(ENV.items())))), sort_keys=True) == one
    assert json.dumps(spec(), sort_keys=True) == one


def test_default_rootfs_is_read_only_with_host_usr_and_etc_bound_read_only() -> None:
    s = spec()
    assert s["root"] == {"path": str(ROOTFS), "readonly": True}
    m = mounts(s)
    for path in ("/usr", "/etc"):
        assert m[path]["type"] == "bind" and m[path]["source"] == path
        assert "rbind" in m[path]["options"] and "rro" in m[path]["options"]
        assert "rw" not in m[path]["options"]
    assert dict(DEFAULT_ROOTFS_LINKS) == {"bin": "usr/bin", "lib": "usr/lib",
                                         "lib64": "usr/lib64", "sbin": "usr/sbin"}


def test_without_recursive_read_only_the_binds_are_plain_read_only() -> None:
    m = mounts(spec(facts_=facts(recursive_readonly=False)))
    assert "ro" in m["/usr"]["options"] and "rro" not in m["/usr"]["options"]


def test_task_dir_is_bound_read_write_and_tmp_is_a_bounded_tmpfs() -> None:
    m = mounts(spec())
    assert m["/task"]["source"] == "/var/lib/corral/tasks/i1"
    assert m["/task"]["type"] == "bind" and "rw" in m["/task"]["options"]
    assert m["/tmp"]["type"] == "tmpfs"
    assert f"size={128 * MiB}" in m["/tmp"]["options"]
    assert "mode=1777" in m["/tmp"]["options"]


def test_tmp_size_is_the_memory_limit_up_to_256_mib() -> None:
    assert tmp_size(64 * MiB) == 64 * MiB
    assert tmp_size(4096 * MiB) == 256 * MiB


def test_kernel_filesystems_and_devices() -> None:
    s = spec()
    m = mounts(s)
    assert m["/proc"]["type"] == "proc"
    assert m["/dev"]["type"] == "tmpfs"
    assert m["/dev/pts"]["type"] == "devpts"
    assert m["/dev/shm"]["type"] == "tmpfs"
    assert m["/sys"]["type"] == "sysfs" and "ro" in m["/sys"]["options"]
    assert "ro" in m["/sys/fs/cgroup"]["options"]
    # runc mounts in list order: parents first.
    order = [x["destination"] for x in s["mounts"]]
    assert order.index("/dev") < order.index("/dev/pts") < order.index("/dev/shm")
    assert order.index("/dev") < order.index(INIT_PATH)
    assert order.index("/sys") < order.index("/sys/fs/cgroup")


def test_namespaces_share_the_host_network_by_default() -> None:
    linux = spec()["linux"]
    assert sorted(n["type"] for n in linux["namespaces"]) == ["ipc", "mount", "pid", "uts"]
    assert all("path" not in n for n in linux["namespaces"])


def test_isolated_network_joins_the_named_namespace() -> None:
    path = "/var/run/netns/corral-i1"
    s = spec(config(isolation=IsolationSpec(network="isolated")), facts(netns_path=path))
    net = [n for n in s["linux"]["namespaces"] if n["type"] == "network"]
    assert net == [{"type": "network", "path": path}]


def test_resources_come_from_the_spec() -> None:
    linux = spec()["linux"]
    res = linux["resources"]
    assert res["memory"] == {"limit": 128 * MiB, "swap": 128 * MiB}  # no swap on top
    assert "cpu" not in res  # the quota is written once the container runs (set_cpu)
    assert res["pids"] == {"limit": 64}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]
    assert linux["cgroupsPath"] == "/corral/i1"


def test_no_swap_key_without_swap_accounting() -> None:
    res = spec(config(resources=Resources(cpu=0.001, memory=64 * MiB)),
               facts(swap_limit=False))["linux"]["resources"]
    assert res["memory"] == {"limit": 64 * MiB}


def test_hardening_defaults_match_runc() -> None:
    s = spec()
    caps = s["process"]["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted", "ambient"}
    assert all(v == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
               for v in caps.values())
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/sys/firmware" in s["linux"]["maskedPaths"]
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    assert "/proc/sysrq-trigger" in s["linux"]["readonlyPaths"]


def test_nofile_is_the_agents_own_within_the_hard_limit() -> None:
    (rl,) = spec(facts_=facts(nofile=(1024, 20000)))["process"]["rlimits"]
    assert rl == {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 20000}


def test_process_user_and_groups_from_facts() -> None:
    proc = spec(facts_=facts(uid=1000, gid=1001, additional_gids=(29, 50)))["process"]
    assert proc["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [29, 50]}


def test_user_rootfs_replaces_the_usr_and_etc_binds() -> None:
    user_root = Path("/var/lib/corral/artifacts/sha256-ab/rootfs")
    dns = ("/etc/hosts", "/etc/resolv.conf")
    s = spec(config(rootfs=user_root), facts(rootfs=user_root, user_rootfs=True,
                                             dns_files=dns))
    assert s["root"] == {"path": str(user_root), "readonly": True}
    m = mounts(s)
    assert "/usr" not in m and "/etc" not in m
    for f in dns:
        assert m[f]["source"] == f and "rro" in m[f]["options"]
    assert "rw" in m["/task"]["options"] and m["/tmp"]["type"] == "tmpfs"
    assert INIT_PATH in m
    assert s["process"]["cwd"] == "/task"


@pytest.mark.parametrize(("user", "expected"), [
    ("0", (0, 0, ())),
    ("1000", (1000, 1001, ())),  # the passwd entry's primary group
    ("4242", (4242, 4242, ())),  # no entry: gid = uid, never root's group
    ("1000:50", (1000, 50, ())),
    ("app", (1000, 1001, (29, 50))),  # by name: its supplementary groups too
    ("app:staff", (1000, 50, ())),
    ("nobody:nogroup", (65534, 65534, ())),
    ("4242:4243", (4242, 4243, ())),
])
def test_resolve_user(user: str, expected: tuple[int, int, tuple[int, ...]]) -> None:
    assert resolve_user(user, passwd=PASSWD, group=GROUP) == expected


@pytest.mark.parametrize(("user", "message"), [
    ("ghost", "no user 'ghost'"),
    ("app:ghosts", "no group 'ghosts'"),
    (":50", "no user ''"),
])
def test_resolve_user_errors_name_what_is_missing(user: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_user(user, passwd=PASSWD, group=GROUP)
