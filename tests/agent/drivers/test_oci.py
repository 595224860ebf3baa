"""The `oci` (runc) driver against the driver conformance suite, which proves the isolation
from inside an instance (own /proc, read-only host files, private /tmp, writable /task,
host port, isolated network, no new privileges, another uid), limits, OOM and adoption;
then what only it has: tini as PID 1, limits applied by runc where `agent/cgroups.py`
reads them, destroy leaving no runc state, network namespace, bundle or cgroup, a user
rootfs, runc's own errors, the command lookup inside the container, and why it is not
available when it is not.

Every test class gets its own cgroup parent, hence its own runc state dir and name prefix;
a class fixture removes whatever a failed test left (containers, network namespaces, the
groups runc makes beside the ones the agent manages, the runc state dir)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.agent.cgroups import CgroupRoot, NoCgroups, detect
from corral.agent.drivers.base import Capabilities, Driver, DriverError
from corral.agent.drivers.oci import OciDriver, inside_program
from corral.agent.drivers.oci_bundle import INIT_PATH
from corral.model.application import IsolationSpec, Resources
from tests.agent.drivers.conformance import (
    GUARD,
    DriverConformance,
    Harness,
    instance_pids,
    texts,
    until,
)

pytestmark = pytest.mark.timeout(90)
MiB = 1024 * 1024
NETNS_DIR = Path("/var/run/netns")


def make_driver(*, cgroup_parent: str) -> Driver:
    return OciDriver(cgroup_parent=cgroup_parent)


def _runc_root(parent: str) -> Path:
    return Path("/run/corral") / parent / "runc"  # OciDriver's default for that parent


def _unmanaged(parent: str) -> list[Path]:
    found = detect()
    if not isinstance(found, CgroupRoot) or found.version != "v1":
        return []
    managed = {os.path.realpath(m) for m in found.mounts.values()}
    base = found.mounts["memory"].parent
    return [d / parent for d in sorted(base.iterdir())
            if os.path.realpath(d) not in managed and (d / "cgroup.procs").exists()]


def _leftovers(parent: str) -> list[str]:
    """What of `parent`'s containers is still on the machine."""
    left: list[str] = []
    root = _runc_root(parent)
    if root.exists() and shutil.which("runc"):
        listed = subprocess.run(["runc", "--root", str(root), "list", "-q"],
                                capture_output=True, text=True, check=False).stdout.split()
        left += [f"container {c}" for c in listed]
    if NETNS_DIR.is_dir():
        left += [f"netns {n.name}" for n in NETNS_DIR.iterdir()
                 if n.name.startswith(f"{parent}-")]
    left += [f"cgroup {d}" for d in _unmanaged(parent) if d.exists()]
    return left


def _missing_tool() -> str:
    for tool, package in (("runc", "runc"), ("tini-static", "tini")):
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
            return f"needs {tool} (apt-get install {package})"
    return ""


class TestOci(DriverConformance):
    factory = "tests.agent.drivers.test_oci:make_driver"
    expected = Capabilities(signals=True, exec=True, fs_isolation=True,
                            network_isolation=True, oom_detection=True, resource_limits=True,
                            kills_all_processes=True)
    inside_task_dir = "/task"
    # runc fills in HOME from the user's passwd entry when the env has none (the agent's
    # runner always sets it); the suite's configs have none and run as root.
    added_env = {"HOME": "/root"}  # noqa: RUF012 (a ClassVar in the base class)

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _runtime_cleanup(cls, cgroup_parent: str) -> Iterator[None]:
        """Skips without runc or tini (`cgroup_parent` already skips without root); after
        the class: nothing of its containers is left, even after a failure (runs before
        the suite's fixture removes the managed cgroup parent)."""
        if missing := _missing_tool():
            pytest.skip(missing)
        yield
        left = _leftovers(cgroup_parent)
        root = _runc_root(cgroup_parent)
        for item in left:
            kind, _, name = item.partition(" ")
            if kind == "container":
                subprocess.run(["runc", "--root", str(root), "delete", "--force", name],
                               capture_output=True, check=False)
            elif kind == "netns":
                subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                               check=False)
        for d in _unmanaged(cgroup_parent):
            for child in (d.iterdir() if d.exists() else []):
                if child.is_dir():
                    child.rmdir()
            if d.exists():
                d.rmdir()
        shutil.rmtree(root.parent, ignore_errors=True)
        assert left == [], f"left behind by the tests: {left}"

    async def test_tini_is_pid_1_and_handle_pid_is_the_command(self, h: Harness) -> None:
        config = h.config("sh", "-c", (
            "echo pid $$; tr '\\0' ' ' </proc/1/cmdline; echo; exec sleep 300"))
        handle = await h.start(config)
        await until(lambda: len(texts(config)) == 2)
        own, init = texts(config)
        assert own != "pid 1" and init.startswith(f"{INIT_PATH} -- ")
        await until(lambda: Path(f"/proc/{handle.pid}/cmdline").read_bytes()
                    == b"sleep\x00300\x00")
        helpers = [int(p) for p in str(handle.data["helpers"]).split()]
        assert len(helpers) == 1
        cmdline = Path(f"/proc/{helpers[0]}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [INIT_PATH.encode(), b"--"]

    async def test_runc_applies_the_limits_where_the_agent_reads_them(self, h: Harness
                                                                      ) -> None:
        config = h.config("sleep", "300", resources=Resources(cpu=0.3, memory=96 * MiB,
                                                              pids=33))
        handle = await h.start(config)
        bundle = Path(str(handle.data["bundle"]))
        spec = json.loads((bundle / "config.json").read_text())
        assert spec["linux"]["cgroupsPath"] == f"/{handle.data['cgroup_parent']}/inst-1"
        found = detect()
        assert isinstance(found, CgroupRoot)
        group = found.group(str(handle.data["cgroup_parent"]), handle.instance_id)
        assert handle.pid in group.pids()
        if found.version == "v1":
            memory = found.mounts["memory"] / group.parent / group.name
            cpu = found.mounts["cpu"] / group.parent / group.name
            pids = found.mounts["pids"] / group.parent / group.name
            assert int((memory / "memory.limit_in_bytes").read_text()) == 96 * MiB
            assert int((cpu / "cpu.cfs_quota_us").read_text()) == 30_000
            assert int((pids / "pids.max").read_text()) == 33
        usage = await h.driver.usage(handle)
        assert usage is not None and usage.pids == 2  # tini and sleep

    async def test_destroy_leaves_no_runtime_state(self, h: Harness) -> None:
        config = h.config("sleep", "300", isolation=IsolationSpec(network="isolated"))
        handle = await h.start(config)
        container, root = str(handle.data["container"]), Path(str(handle.data["runc_root"]))
        netns = NETNS_DIR / str(handle.data["netns"])
        bundle = Path(str(handle.data["bundle"]))
        state = subprocess.run(["runc", "--root", str(root), "state", container],
                               capture_output=True, check=True)
        assert json.loads(state.stdout)["status"] == "running"
        assert netns.exists() and (bundle / "config.json").exists()
        await h.driver.destroy(handle)
        assert not (root / container).exists()
        assert not root.exists()  # the last container of its agent: no runc state dir left
        assert not netns.exists()
        assert not bundle.exists() and not config.state_dir.exists()
        assert not any(d.exists() for d in self.cgroup_dirs(h, handle))
        parent = str(handle.data["cgroup_parent"])
        assert not any(d.exists() for d in _unmanaged(parent))  # runc's leftover parents
        assert config.task_dir.is_dir()  # the agent's, not the driver's

    async def test_an_exited_container_keeps_its_group_until_destroy(self, h: Harness
                                                                     ) -> None:
        # So that the OOM count can be read when the exit is learnt, also by an agent that
        # adopts the instance later.
        handle = await h.start(h.config("true"))
        await asyncio.wait_for(h.driver.wait(handle), GUARD)
        assert all(d.is_dir() for d in self.cgroup_dirs(h, handle))
        state = subprocess.run(["runc", "--root", str(handle.data["runc_root"]), "state",
                                str(handle.data["container"])], capture_output=True,
                               check=True)
        assert json.loads(state.stdout)["status"] == "stopped"

    async def test_a_user_rootfs_is_the_root(self, h: Harness, tmp_path: Path) -> None:
        rootfs = _tiny_rootfs(tmp_path / "rootfs")
        config = h.config("sh", "-c", (
            "read m < /marker; echo marker $m; "
            "[ -e /usr/bin/python3 ] && echo host-usr || echo own-usr; "
            "[ -s /etc/resolv.conf ] || [ -s /etc/hosts ] && echo dns; "
            "{ echo x > /new; } 2>/dev/null && echo root-writable || echo root-read-only; "
            'echo x > "$CORRAL_TASK_DIR/f" && echo task-writable'),
            isolation=IsolationSpec(user="app"))
        config = dataclasses.replace(config, rootfs=rootfs)
        handle = await h.start(config)
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0
        assert texts(config) == ["marker tiny", "own-usr", "dns", "root-read-only",
                                 "task-writable"]
        # `app` is the rootfs's user (uid 4321), not a host one.
        assert (config.task_dir / "f").stat().st_uid == 4321
        assert not (rootfs / "new").exists()

    async def test_runc_failing_fails_start_with_its_reason_and_leaves_nothing(
            self, h: Harness, tmp_path: Path, cgroup_parent: str) -> None:
        rootfs = _tiny_rootfs(tmp_path / "rootfs")
        (rootfs / "proc").write_text("runc mounts /proc on a directory only\n")
        config = h.config("sh", "-c", "echo never")
        config = dataclasses.replace(config, rootfs=rootfs)
        with pytest.raises(DriverError, match=r"before the main process started.*runc run "
                                              r"failed: .*proc"):
            await h.driver.start(config)
        assert not config.state_dir.exists()
        assert _leftovers(cgroup_parent) == []
        assert instance_pids(config.env["CORRAL_TEST_MARK"]) == set()

    async def test_a_user_that_the_rootfs_does_not_know_fails_start(self, h: Harness
                                                                     ) -> None:
        config = h.config("true", isolation=IsolationSpec(user="no-such-user-here"))
        with pytest.raises(DriverError, match="no user 'no-such-user-here'"):
            await h.driver.start(config)
        assert not (config.state_dir / "bundle").exists()

    async def test_signal_to_a_command_without_handler_is_not_swallowed(self, h: Harness
                                                                         ) -> None:
        # As PID 1 the kernel would drop it (PLATFORM.md); as PID 2 it has its default.
        config = h.config("sleep", "300")
        handle = await h.start(config)
        await h.driver.signal(handle, signal.SIGINT)
        result = await asyncio.wait_for(h.driver.wait(handle), GUARD)
        assert result.signal == signal.SIGINT


def _tiny_rootfs(root: Path) -> Path:
    """A rootfs with only dash (and its libraries), a marker and its own passwd: what a
    user brings, with /bin/sh an absolute symlink as in busybox images."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/dash", root / "bin" / "dash")
    (root / "bin" / "sh").symlink_to("/bin/dash")
    ldd = subprocess.run(["ldd", "/usr/bin/dash"], capture_output=True, text=True,
                         check=True).stdout
    for word in ldd.split():
        if word.startswith("/"):
            target = root / word.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(word), target)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                         "app:x:4321:4321::/home/app:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\napp:x:4321:\n")
    (root / "marker").write_text("tiny\n")
    return root


# --- without runc: lookup, exit codes, availability -------------------------------------


def test_commands_are_looked_up_in_what_the_container_shows(tmp_path: Path) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    task = tmp_path / "task"
    task.mkdir()
    (task / "app.sh").write_text("#!/bin/sh\n")
    (task / "app.sh").chmod(0o755)
    assert inside_program("sh", env, task_dir=task, rootfs=None) in ("/usr/bin/sh", "/bin/sh")
    assert inside_program("./app.sh", env, task_dir=task, rootfs=None) == "/task/app.sh"
    assert inside_program("/task/app.sh", env, task_dir=task, rootfs=None) == "/task/app.sh"
    with pytest.raises(DriverError, match="'nope' not found in PATH"):
        inside_program("nope", env, task_dir=task, rootfs=None)
    # A link in the task dir to a host file outside what the container shows.
    (task / "outside-too").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("#!/bin/sh\n")
    (tmp_path / "elsewhere").chmod(0o755)
    with pytest.raises(DriverError, match="outside-too' not found or not executable"):
        inside_program("./outside-too", env, task_dir=task, rootfs=None)
    venv_python = os.path.realpath(sys.executable)
    if not venv_python.startswith(("/usr/", "/etc/")):  # not shown inside
        with pytest.raises(DriverError, match="not found or not executable"):
            inside_program(venv_python, env, task_dir=task, rootfs=None)


def test_commands_in_a_user_rootfs_resolve_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_text("")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("/bin/busybox")  # absolute: inside the rootfs
    (root / "bin" / "escape").symlink_to("../../../../../usr/bin/env")
    env = {"PATH": "/bin"}
    task = tmp_path / "task"
    task.mkdir()
    assert inside_program("sh", env, task_dir=task, rootfs=root) == "/bin/sh"
    # `..` stops at the rootfs: the host's /usr/bin/env is not what /bin/escape shows.
    with pytest.raises(DriverError, match="'escape' not found"):
        inside_program("escape", env, task_dir=task, rootfs=root)
    with pytest.raises(DriverError, match="'python3' not found"):
        inside_program("python3", {"PATH": "/usr/bin"}, task_dir=task, rootfs=root)



def test_not_available_says_why() -> None:
    if os.geteuid() != 0:
        assert OciDriver(probe=False).available().startswith("needs root")
        return
    assert OciDriver(cgroups=NoCgroups("none here")).available() == (
        "needs cgroups: none here")
    cgroups = detect()
    if isinstance(cgroups, NoCgroups):
        pytest.skip(f"needs cgroups: {cgroups.reason}")
    if missing := _missing_tool():
        pytest.skip(missing)
    assert OciDriver(cgroups=cgroups, runc="no-such-runc").available() == (
        "no-such-runc not found in PATH")
    assert OciDriver(cgroups=cgroups, tini="no-such-tini").available().startswith(
        "no-such-tini not found in PATH")
    assert OciDriver(cgroups=cgroups, runc="false").available().startswith(
        "runc does not work here")
    assert OciDriver(cgroups=cgroups).available() == ""
