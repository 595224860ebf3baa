"""agent/cgroups.py: the real hierarchy of this machine (root only), and the cgroup v2 code
path against a fake tree in tmp_path (the kernel's files are created by the test)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.agent import cgroups
from corral.agent.cgroups import (
    CPU_PERIOD_US,
    Cgroup,
    CgroupError,
    CgroupRoot,
    NoCgroups,
    detect,
)
from corral.model.application import Resources
from corral.testing.cgroups import real_cgroups
from corral.testing.procs import gone, until

MiB = 1024 * 1024
PARENT = f"corral-test-{os.getpid()}-cg"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def real() -> Iterator[CgroupRoot]:
    yield from real_cgroups(PARENT)


def spawn_in(group: Cgroup, script: str) -> subprocess.Popen[bytes]:
    """A shell joined to `group` the way the drivers do it, then running `script`."""
    joins = "; ".join(f"echo $$ > {f}" for f in group.procs_files())
    return subprocess.Popen(["/bin/sh", "-c", f"{joins}; {script}"], start_new_session=True)






# --- the machine's own cgroups ------------------------------------------------------------


async def test_create_writes_limits(real: CgroupRoot) -> None:
    group = real.group(PARENT, "limits")
    group.create(Resources(cpu=0.25, memory=64 * MiB, pids=50))
    try:
        if real.version == "v1":
            assert (real.mounts["memory"] / PARENT / "limits" / "memory.limit_in_bytes"
                    ).read_text().strip() == str(64 * MiB)
            cpu = real.mounts["cpu"] / PARENT / "limits"
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "25000"
            assert (cpu / "cpu.cfs_period_us").read_text().strip() == str(CPU_PERIOD_US)
            assert (real.mounts["pids"] / PARENT / "limits" / "pids.max"
                    ).read_text().strip() == "50"
        else:
            d = real.mounts[""] / PARENT / "limits"
            assert (d / "memory.max").read_text().strip() == str(64 * MiB)
            assert (d / "cpu.max").read_text().split() == ["25000", str(CPU_PERIOD_US)]
            assert (d / "pids.max").read_text().strip() == "50"
        assert all(d.is_dir() for d in group.dirs)
        assert real.list_instance_groups(PARENT) == ["limits"]
        # started unthrottled, the quota written once the command runs
        group.set_cpu(None)
        if real.version == "v1":
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
        group.set_cpu(0.5)
        if real.version == "v1":
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    finally:
        await group.remove()
    assert not group.exists()
    assert real.list_instance_groups(PARENT) == []


@pytest.mark.parametrize("kill_file", [True, False], ids=["cgroup.kill", "freezer"])
async def test_kill_reaches_double_forked_and_setsid(kill_file: bool, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups are written")
    root = detect(kill_file=kill_file)
    if isinstance(root, NoCgroups):
        pytest.skip(f"needs cgroups: {root.reason}")
    group = root.group(PARENT, f"kill-{kill_file}")
    group.create(Resources(memory=64 * MiB))
    pidfile = tmp_path / "daemon.pid"
    try:
        # The subshell exits at once, so `sleep` is orphaned in a session of its own.
        proc = spawn_in(group, f"(setsid sleep 300 & echo $! > {pidfile}); exec sleep 300")
        await until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        daemon = int(pidfile.read_text())
        await until(lambda: set(group.pids()) >= {proc.pid, daemon})
        assert group.populated()
        await group.kill()
        assert await group.wait_empty(5.0)
        assert proc.wait(5) == -signal.SIGKILL
        await until(lambda: gone(daemon))
        assert group.pids() == []
        assert not group.populated()
    finally:
        await group.kill()  # no-op when already empty; cleans up when the test failed
        await group.wait_empty(5.0)
        await group.remove()
    assert not group.exists()


async def test_usage_and_oom_count(real: CgroupRoot) -> None:
    group = real.group(PARENT, "usage")
    group.create(Resources(memory=64 * MiB, pids=64))
    try:
        assert group.oom_killed() == 0
        proc = spawn_in(group, "exec python3 -c 's = b\"x\" * (200 << 20)'")
        assert proc.wait(30) == -signal.SIGKILL
        assert group.oom_killed() == 1
        usage = group.usage()
        assert usage.cpu_seconds > 0
        assert usage.pids == 0
        assert 0 <= usage.memory < 64 * MiB
    finally:
        await group.kill()
        await group.wait_empty(5)
        await group.remove()


async def test_remove_stale_keeps_the_named_groups(real: CgroupRoot) -> None:
    keep, stale = real.group(PARENT, "keep-me"), real.group(PARENT, "stale")
    keep.create(Resources())
    stale.create(Resources())
    proc = spawn_in(stale, "exec sleep 300")
    try:
        await until(lambda: proc.pid in stale.pids())
        assert real.list_instance_groups(PARENT) == ["keep-me", "stale"]
        assert await real.remove_stale(PARENT, {"keep-me"}) == ["stale"]
        assert proc.wait(5) == -signal.SIGKILL
        assert real.list_instance_groups(PARENT) == ["keep-me"]
        assert not stale.exists()
    finally:
        await keep.remove()


async def test_remove_is_idempotent(real: CgroupRoot) -> None:
    group = real.group(PARENT, "twice")
    group.create(Resources())
    await group.remove()
    await group.remove()
    assert not group.exists()


async def test_a_group_removed_between_open_and_read_reads_as_empty(
        real: CgroupRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel answers ENODEV, not ENOENT, to a read of a file whose group was removed
    after the open (a process listing racing a destroy): that group is gone, not broken."""
    group = real.group(PARENT, "racing")
    group.create(Resources())
    real_open = open

    def open_then_remove(path: Path, *args: object, **kwargs: object) -> object:
        f = real_open(path, *args, **kwargs)  # type: ignore[call-overload]
        for d in group.dirs:
            if d.exists():
                os.rmdir(d)
        return f

    monkeypatch.setattr(cgroups, "open", open_then_remove, raising=False)
    try:
        assert group.pids() == []
        assert not group.populated()
    finally:
        monkeypatch.undo()
        await group.remove()
    assert not group.exists()


def test_unavailable_gives_a_reason(tmp_path: Path) -> None:
    not_root = detect(euid=1000)
    assert isinstance(not_root, NoCgroups)
    assert "not running as root" in not_root.reason
    nothing = detect(tmp_path, euid=0)
    assert isinstance(nothing, NoCgroups)
    assert str(tmp_path) in nothing.reason


def test_names_cannot_escape_the_parent(tmp_path: Path) -> None:
    root = CgroupRoot(version="v2", mounts={"": tmp_path})
    for bad in ("..", "a/b", "", "."):
        with pytest.raises(CgroupError, match="invalid cgroup name"):
            root.group("corral", bad)
    with pytest.raises(CgroupError):
        root.group("../etc", "x")


# --- cgroup v2, against a fake tree ---------------------------------------------------------

INSTANCE_FILES = {
    "cgroup.procs": "", "cgroup.events": "populated 1\nfrozen 0\n", "cgroup.kill": "",
    "cgroup.freeze": "0", "memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000",
    "pids.max": "max", "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
    "memory.current": str(30 * MiB), "memory.stat": f"anon 1\ninactive_file {10 * MiB}\n",
    "pids.current": "2",
}


def fake_v2(tmp_path: Path, *, root_subtree: str = "") -> Path:
    """What the kernel would show: the root, the parent group and one instance's group."""
    root = tmp_path / "cgroup"
    (root / "corral" / "web-1").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text(root_subtree)
    (root / "corral" / "cgroup.subtree_control").write_text("")
    for name, text in INSTANCE_FILES.items():
        (root / "corral" / "web-1" / name).write_text(text)
    return root


def test_v2_detect_and_create(tmp_path: Path) -> None:
    root_dir = fake_v2(tmp_path)
    root = detect(root_dir, euid=0)
    assert isinstance(root, CgroupRoot)
    assert root.version == "v2"
    group = root.group("corral", "web-1")
    group.create(Resources(cpu=0.2, memory=64 * MiB, pids=100))
    inst = root_dir / "corral" / "web-1"
    assert (root_dir / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root_dir / "corral" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (inst / "memory.max").read_text() == str(64 * MiB)
    assert (inst / "memory.swap.max").read_text() == "0"
    assert (inst / "cpu.max").read_text() == "20000 100000"
    assert (inst / "pids.max").read_text() == "100"
    assert group.dirs == (inst,)
    assert group.procs_files() == (inst / "cgroup.procs",)


def test_v2_enables_only_missing_controllers(tmp_path: Path) -> None:
    root_dir = fake_v2(tmp_path, root_subtree="cpu memory pids io\n")
    root = detect(root_dir, euid=0)
    assert isinstance(root, CgroupRoot)
    (root_dir / "corral" / "cgroup.subtree_control").write_text("memory\n")
    root.group("corral", "web-1").create(Resources())
    assert (root_dir / "cgroup.subtree_control").read_text() == "cpu memory pids io\n"
    assert (root_dir / "corral" / "cgroup.subtree_control").read_text() == "+cpu +pids"


def test_v2_missing_controller_is_unavailable(tmp_path: Path) -> None:
    root_dir = fake_v2(tmp_path)
    (root_dir / "cgroup.controllers").write_text("cpu io\n")
    found = detect(root_dir, euid=0)
    assert isinstance(found, NoCgroups)
    assert "memory, pids" in found.reason


async def test_v2_reads_and_kill(tmp_path: Path) -> None:
    root_dir = fake_v2(tmp_path)
    root = detect(root_dir, euid=0)
    assert isinstance(root, CgroupRoot)
    group = root.group("corral", "web-1")
    inst = root_dir / "corral" / "web-1"
    (inst / "cgroup.procs").write_text("12\n34\n")
    assert group.pids() == [12, 34]
    assert group.populated()
    usage = group.usage()
    assert usage.cpu_seconds == 2.5
    assert usage.memory == 20 * MiB  # current minus inactive page cache
    assert usage.pids == 2
    assert group.oom_killed() == 1
    await group.kill()
    assert (inst / "cgroup.kill").read_text() == "1"
    (inst / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert await group.wait_empty(0.1)
    assert root.list_instance_groups("corral") == ["web-1"]


def test_v2_write_error_names_the_file(tmp_path: Path) -> None:
    root_dir = fake_v2(tmp_path)
    (root_dir / "corral" / "web-1" / "pids.max").unlink()  # as if `pids` were not enabled
    root = detect(root_dir, euid=0)
    assert isinstance(root, CgroupRoot)
    with pytest.raises(CgroupError, match=r"cannot write '100' to .*web-1/pids\.max"):
        root.group("corral", "web-1").create(Resources(pids=100))


async def test_v2_remove_that_keeps_failing_names_the_dir(tmp_path: Path) -> None:
    root = detect(fake_v2(tmp_path), euid=0)
    assert isinstance(root, CgroupRoot)
    # A real cgroup dir can be removed with its files in it; a fake one cannot, like a
    # group with a process left in it.
    with pytest.raises(CgroupError, match=r"cannot remove cgroup .*corral/web-1"):
        await root.group("corral", "web-1").remove(timeout=0.05)
