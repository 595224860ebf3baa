"""The `sandbox` (bubblewrap) driver against the driver conformance suite, which proves the
isolation from inside an instance (own /proc, read-only host files, private /tmp, writable
/task, host port, isolated network, no new privileges, another uid); then what only it has:
where `handle.pid` points, the /tmp size, the environment rewrite, what is not visible
inside, and why it is not available when it is not."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from corral.agent.cgroups import NoCgroups, detect
from corral.agent.drivers.base import Capabilities, Driver, DriverError
from corral.agent.drivers.sandbox import SandboxDriver, bwrap_args, inside_env
from corral.model.application import Resources
from tests.agent.drivers.conformance import GUARD, DriverConformance, Harness, texts

pytestmark = pytest.mark.timeout(90)
MiB = 1024 * 1024


def make_driver(*, cgroup_parent: str) -> Driver:
    return SandboxDriver(cgroup_parent=cgroup_parent)


@pytest.fixture(autouse=True)
def _needs_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap)")


class TestSandbox(DriverConformance):
    factory = "tests.agent.drivers.test_sandbox:make_driver"
    expected = Capabilities(signals=True, exec=True, fs_isolation=True,
                            network_isolation=True, oom_detection=True, resource_limits=True,
                            kills_all_processes=True)
    inside_task_dir = "/task"
    added_env: ClassVar[dict[str, str]] = {"PWD": "/task"}  # bwrap --chdir sets it

    async def test_handle_pid_is_the_command_on_the_host(self, h: Harness) -> None:
        config = h.config("sh", "-c", "echo $$; exec sleep 300")
        handle = await h.start(config)
        await asyncio.sleep(0.2)
        assert Path(f"/proc/{handle.pid}/cmdline").read_bytes() == b"sleep\x00300\x00"
        helpers = [int(p) for p in str(handle.data["helpers"]).split()]
        assert [Path(f"/proc/{p}/comm").read_text().strip() for p in helpers] == [
            "bwrap", "bwrap"]
        assert texts(config) == ["2"]  # PID 2 inside: the reaper is PID 1

    async def test_tmp_is_a_size_limited_tmpfs(self, h: Harness) -> None:
        config = h.config("sh", "-c", "df -k /tmp | tail -1",
                          resources=Resources(memory=64 * MiB))
        await asyncio.wait_for(h.driver.wait(await h.start(config)), GUARD)
        [line] = texts(config)
        fields = line.split()
        assert fields[0] == "tmpfs" and int(fields[1]) == 64 * 1024

    async def test_paths_under_the_task_dir_are_rewritten(self, h: Harness) -> None:
        config = h.config("sh", "-c", 'echo "$HOME" "$DATA"; cat "$CORRAL_TASK_DIR/in"')
        (config.task_dir / "in").write_text("inside\n")
        config = dataclasses.replace(config, env={
            **config.env, "HOME": str(config.task_dir), "DATA": f"{config.task_dir}/data"})
        await asyncio.wait_for(h.driver.wait(await h.start(config)), GUARD)
        assert texts(config) == ["/task /task/data", "inside"]

    async def test_a_command_the_sandbox_does_not_show_is_refused(self, h: Harness) -> None:
        real = os.path.realpath(sys.executable)
        if real.startswith(("/usr/", "/etc/")):
            pytest.skip(f"{real} is visible inside")
        with pytest.raises(DriverError, match="which the sandbox does not show"):
            await h.driver.start(h.config(sys.executable, "-c", "pass"))


def test_bwrap_args() -> None:
    args = bwrap_args("/usr/bin/bwrap", task_dir=Path("/srv/t"), tmp_size=1024,
                      network="host")
    assert args[0] == "/usr/bin/bwrap"
    assert "--die-with-parent" not in args and "--unshare-net" not in args
    assert args[args.index("--bind") + 1:args.index("--bind") + 3] == ["/srv/t", "/task"]
    assert args[args.index("--size") + 1:args.index("--size") + 3] == ["1024", "--tmpfs"]
    assert args[-2:] == ["--chdir", "/task"]
    isolated = bwrap_args("bwrap", task_dir=Path("/t"), tmp_size=1, network="isolated")
    assert "--unshare-net" in isolated


def test_inside_env() -> None:
    env = {"HOME": "/srv/t", "X": "/srv/t/a/b", "Y": "/srv/tt", "Z": "/other"}
    assert inside_env(env, Path("/srv/t")) == {
        "HOME": "/task", "X": "/task/a/b", "Y": "/srv/tt", "Z": "/other"}



def test_not_available_says_why() -> None:
    if os.geteuid() != 0:
        assert "needs root" in SandboxDriver(probe=False).available()
        return
    assert SandboxDriver(cgroups=NoCgroups("none here")).available() == (
        "needs cgroups: none here")
    cgroups = detect()
    if isinstance(cgroups, NoCgroups):
        pytest.skip(f"needs cgroups: {cgroups.reason}")
    assert SandboxDriver(cgroups=cgroups, bwrap="no-such-bwrap").available() == (
        "no-such-bwrap (bubblewrap) not found in PATH")
    # Found, but failing its functional probe.
    assert SandboxDriver(cgroups=cgroups, bwrap="false").available().startswith(
        "bubblewrap does not work here")
