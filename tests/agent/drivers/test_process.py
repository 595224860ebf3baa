"""The `process` driver against the driver conformance suite, with real cgroups (root) and
without them (limits and kill-all reported absent); then what only it has: its argv helpers,
`isolation.user` parsing, the registry, and the helpers in drivers/base.py every driver
shares."""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.agent.cgroups import CgroupRoot, NoCgroups
from corral.agent.drivers import DRIVERS, make_drivers
from corral.agent.drivers.base import (
    Capabilities,
    Driver,
    DriverError,
    TaskHandle,
    exit_result,
    expand_vars,
    parse_signal,
)
from corral.agent.drivers.process import (
    JOIN_FAILED,
    ProcessDriver,
    User,
    join_argv,
    parse_user,
    privileges_argv,
    resolve_program,
)
from corral.testing.cgroups import real_cgroups
from tests.agent.drivers.conformance import DriverConformance, Harness, gone, logged, until

pytestmark = pytest.mark.timeout(90)
MiB = 1024 * 1024


def make_driver(*, cgroup_parent: str) -> Driver:
    return ProcessDriver(cgroup_parent=cgroup_parent)


def make_plain_driver(*, cgroup_parent: str) -> Driver:
    return ProcessDriver(cgroups=NoCgroups("disabled by the test"), cgroup_parent=cgroup_parent)


class TestProcess(DriverConformance):
    factory = "tests.agent.drivers.test_process:make_driver"
    expected = Capabilities(signals=True, exec=True, fs_isolation=False,
                            network_isolation=False, oom_detection=True, resource_limits=True,
                            kills_all_processes=True)


class TestProcessWithoutCgroups(DriverConformance):
    factory = "tests.agent.drivers.test_process:make_plain_driver"
    expected = Capabilities(signals=True, exec=True, fs_isolation=False,
                            network_isolation=False, oom_detection=False,
                            resource_limits=False, kills_all_processes=False)
    needs_root = False

    async def test_says_what_is_not_enforced(self, h: Harness) -> None:
        notes = h.driver.capabilities.notes
        assert "not enforced" in notes and "disabled by the test" in notes

    async def test_stop_kills_the_process_group(self, h: Harness) -> None:
        # SIGTERM ignored by both: the shell and, inherited, its child.
        config = h.config("sh", "-c", "trap '' TERM; sleep 300 & echo $! > child.pid; wait")
        handle = await h.start(config)
        pidfile = config.task_dir / "child.pid"
        await until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        child = int(pidfile.read_text())
        result = await h.driver.stop(handle, signal=signal.SIGTERM, timeout=0.3)
        assert result is not None and result.signal == signal.SIGKILL
        assert gone(child)
        assert await h.driver.usage(handle) is None

    async def test_usage_of_the_process_tree(self, h: Harness) -> None:
        config = h.config("sh", "-c", "sleep 300 & echo ready; wait")
        handle = await h.start(config)
        await until(logged(config, "ready"))
        usage = await h.driver.usage(handle)
        assert usage is not None and usage.pids == 2 and usage.memory > 0


# --- argv helpers -------------------------------------------------------------------------


def test_privileges_argv() -> None:
    assert privileges_argv("/usr/bin/setpriv", None) == (
        "/usr/bin/setpriv", "--no-new-privs", "--")
    assert privileges_argv("/usr/bin/setpriv", User(uid=1000, gid=100, name=None)) == (
        "/usr/bin/setpriv", "--no-new-privs", "--reuid", "1000", "--regid", "100",
        "--clear-groups", "--")
    named = privileges_argv("setpriv", User(uid=0, gid=0, name="root"))
    assert "--init-groups" in named and "--clear-groups" not in named


def test_parse_user() -> None:
    nobody = pwd.getpwnam("nobody")
    assert parse_user("nobody") == User(uid=nobody.pw_uid, gid=nobody.pw_gid, name="nobody")
    assert parse_user(str(nobody.pw_uid)) == User(uid=nobody.pw_uid, gid=nobody.pw_gid,
                                                  name=None)
    assert parse_user("4242") == User(uid=4242, gid=4242, name=None)  # not in /etc/passwd
    assert parse_user("4242:100") == User(uid=4242, gid=100, name=None)
    assert parse_user("nobody:0").gid == 0
    with pytest.raises(DriverError, match="no such user"):
        parse_user("no-such-user-here")


def test_join_argv_joins_every_hierarchy_and_keeps_the_env_exact(tmp_path: Path) -> None:
    class FakeGroup:
        def procs_files(self) -> tuple[Path, ...]:
            return (tmp_path / "a b" / "cgroup.procs", tmp_path / "c" / "cgroup.procs")

    argv = join_argv("/bin/sh", FakeGroup(), {}, ["/bin/echo", "hi"])  # type: ignore[arg-type]
    assert argv[0:2] == ("/bin/sh", "-c") and argv[3:] == ("sh", "/bin/echo", "hi")
    assert f"echo $$ >'{tmp_path}/a b/cgroup.procs' && echo $$ >{tmp_path}/c/cgroup.procs" \
        in argv[2]
    assert f"exit {JOIN_FAILED}" in argv[2] and "unset PWD" in argv[2]
    keep = join_argv("/bin/sh", FakeGroup(), {"PWD": "/x"}, ["/bin/true"])  # type: ignore[arg-type]
    assert "unset PWD" not in keep[2]


def test_resolve_program(tmp_path: Path) -> None:
    assert resolve_program("sh", {"PATH": "/usr/bin:/bin"}, tmp_path) in ("/usr/bin/sh",
                                                                         "/bin/sh")
    (tmp_path / "app").write_text("#!/bin/sh\n")
    (tmp_path / "app").chmod(0o755)
    assert resolve_program("./app", {}, tmp_path) == str(tmp_path / "app")
    with pytest.raises(DriverError, match="not found in PATH=/nowhere"):
        resolve_program("sh", {"PATH": "/nowhere"}, tmp_path)
    with pytest.raises(DriverError, match="not found or not executable"):
        resolve_program("./missing", {}, tmp_path)


async def test_user_without_root_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("checks the refusal a non-root agent gives")
    driver = ProcessDriver(cgroups=NoCgroups("test"))
    harness = Harness(lambda: driver, tmp_path, None)
    from corral.model.application import IsolationSpec
    with pytest.raises(DriverError, match="needs the agent to run as root"):
        await harness.start(harness.config("true", isolation=IsolationSpec(user="nobody")))


# --- the registry ---------------------------------------------------------------------------


async def test_registry_builds_drivers_and_recovers_by_name(tmp_path: Path) -> None:
    driver = DRIVERS["process"](cgroups=NoCgroups("test"))
    assert isinstance(driver, Driver)
    assert driver.name == "process"
    registry = make_drivers(cgroups=NoCgroups("test"), cgroup_parent="corral-test-registry")
    assert registry.status["process"] == ""
    assert "needs cgroups" in registry.status["sandbox"] or "root" in registry.status["sandbox"]
    assert registry.default == "process"
    assert set(registry.usable) == {"process"}
    assert await registry.cleanup_stale() == []
    unknown = TaskHandle(driver="nope", instance_id="x", pid=1, started_at=0)
    assert registry.for_handle(unknown) is None
    assert await registry.recover(unknown) is None
    # A handle of an instance whose records are gone: nothing to adopt.
    lost = TaskHandle(driver="sandbox", instance_id="x", pid=1, started_at=0,
                      data={"state_dir": str(tmp_path / "none"), "shim_pid": 1})
    assert registry.for_handle(lost) is registry.built["sandbox"]
    assert await registry.recover(lost) is None


REGISTRY_PARENT = f"corral-test-{os.getpid()}-registry"


@pytest.fixture
def cgroups() -> Iterator[CgroupRoot]:
    yield from real_cgroups(REGISTRY_PARENT)


async def test_registry_cleans_up_what_an_earlier_agent_left(cgroups: CgroupRoot,
                                                             tmp_path: Path) -> None:
    driver = ProcessDriver(cgroups=cgroups, cgroup_parent=REGISTRY_PARENT)
    earlier = Harness(lambda: driver, tmp_path, None)
    try:
        kept = await earlier.start(earlier.config("sleep", "300"))
        stale = await earlier.start(earlier.config("sleep", "300"))
        registry = make_drivers(cgroups=cgroups, cgroup_parent=REGISTRY_PARENT)
        assert registry.default == ("sandbox" if registry.status["sandbox"] == ""
                                    else "process")
        assert await registry.cleanup_stale(frozenset({kept.instance_id})) == [
            stale.instance_id]
        await until(lambda: gone(stale.pid))
        assert not gone(kept.pid)
        assert await registry.recover(kept) is registry.built["process"]
    finally:
        await earlier.close()


# --- shared helpers in drivers/base.py ------------------------------------------------------


def test_expand_vars() -> None:
    env = {"PORT_HTTP": "31002", "A": "x"}
    assert expand_vars(("--port=${PORT_HTTP}", "${A}${A}", "$A", "${B}", "${ A}"), env) == (
        "--port=31002", "xx", "$A", "${B}", "${ A}")


def test_parse_signal() -> None:
    assert parse_signal("SIGTERM") == parse_signal("term") == parse_signal("15") == 15
    assert parse_signal(signal.SIGHUP) == 1
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'"):
        parse_signal("SIGNOPE")
    with pytest.raises(ValueError):
        parse_signal("999")


def test_exit_result_reasons() -> None:
    assert exit_result(1).reason == "exited with code 1"
    killed = exit_result(-9)
    assert (killed.exit_code, killed.signal, killed.reason) == (
        None, 9, "killed by signal 9 (SIGKILL)")
    oom = exit_result(-9, oom_killed=True, memory_limit=64 * MiB)
    assert (oom.oom_killed, oom.reason) == (True, "oom-killed (memory limit 64MiB)")
