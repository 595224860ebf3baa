"""The `process` driver with real processes and, as root, real cgroups: output, exit codes,
env and cwd, stop, every process killed, OOM, pids and cpu limits, usage, cleanup. Also the
mode without cgroups, and the helpers in drivers/base.py all drivers share."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from corral.agent.cgroups import CgroupRoot, NoCgroups
from corral.agent.drivers import DRIVERS, make_drivers
from corral.agent.drivers.base import (
    Driver,
    DriverError,
    ExitResult,
    TaskConfig,
    TaskHandle,
    exit_result,
    expand_vars,
    parse_signal,
)
from corral.agent.drivers.process import ProcessDriver
from corral.agent.logs import read_logs
from corral.model.application import Resources
from corral.testing.cgroups import real_cgroups

MiB = 1024 * 1024
PARENT = f"corral-test-{os.getpid()}-drv"
T0 = 1_700_000_000.0
PATH = "/usr/local/bin:/usr/bin:/bin"
PY = sys.executable  # no site-packages needed: plain CPython for the payloads

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cgroups() -> Iterator[CgroupRoot]:
    yield from real_cgroups(PARENT)


class Harness:
    """A driver plus per-test dirs; destroys every instance it started at the end."""

    def __init__(self, driver: ProcessDriver, tmp: Path) -> None:
        self.driver = driver
        self.tmp = tmp
        self.handles: list[TaskHandle] = []
        self._n = 0

    def config(self, *command: str, env: dict[str, str] | None = None,
               resources: Resources | None = None) -> TaskConfig:
        self._n += 1
        task_dir = self.tmp / f"task-{self._n}"
        task_dir.mkdir()
        return TaskConfig(instance_id=f"inst-{self._n}", command=command,
                          env={"PATH": PATH, **(env or {})}, task_dir=task_dir,
                          log_dir=self.tmp / f"logs-{self._n}",
                          resources=resources or Resources(memory=256 * MiB))

    async def start(self, config: TaskConfig) -> TaskHandle:
        handle = await self.driver.start(config)
        self.handles.append(handle)
        return handle

    async def run(self, *command: str, env: dict[str, str] | None = None,
                  resources: Resources | None = None) -> tuple[ExitResult, list[str]]:
        config = self.config(*command, env=env, resources=resources)
        handle = await self.start(config)
        result = await asyncio.wait_for(self.driver.wait(handle), 30)
        return result, [line.text for line in read_logs(config.log_dir)]

    async def close(self) -> None:
        for handle in self.handles:
            await self.driver.destroy(handle)


@pytest.fixture
async def h(cgroups: CgroupRoot, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(ProcessDriver(cgroups=cgroups, cgroup_parent=PARENT), tmp_path)
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(ProcessDriver(cgroups=NoCgroups("disabled by the test")), tmp_path)
    try:
        yield harness
    finally:
        await harness.close()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead; whoever inherited it has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2:].split()[0] == b"Z"


def logged(config: TaskConfig, text: str) -> Callable[[], bool]:
    return lambda: any(line.text == text for line in read_logs(config.log_dir))


# --- with cgroups ------------------------------------------------------------------------


async def test_output_reaches_the_logs_with_timestamps(cgroups: CgroupRoot,
                                                       tmp_path: Path) -> None:
    driver = ProcessDriver(cgroups=cgroups, cgroup_parent=PARENT, clock=lambda: T0 + 0.5)
    harness = Harness(driver, tmp_path)
    try:
        config = harness.config("sh", "-c", "echo hello; echo oops >&2; printf partial")
        handle = await harness.start(config)
        assert handle.started_at == T0 + 0.5
        result = await driver.wait(handle)
        assert result.exit_code == 0
        assert (config.log_dir / "stdout.log").read_text() == (
            "2023-11-14T22:13:20.500000Z hello\n2023-11-14T22:13:20.500000Z partial\n")
        assert (config.log_dir / "stderr.log").read_text() == "2023-11-14T22:13:20.500000Z oops\n"
    finally:
        await harness.close()


async def test_exit_code_and_reason(h: Harness) -> None:
    result, _ = await h.run("sh", "-c", "exit 3")
    assert result == ExitResult(exit_code=3, signal=None, oom_killed=False,
                                reason="exited with code 3")
    assert (await h.run("true"))[0].reason == "exited with code 0"


async def test_env_is_exactly_the_config_and_cwd_is_the_task_dir(h: Harness) -> None:
    config = h.config("env", env={"GREETING": "hello world"})
    handle = await h.start(config)
    assert (await h.driver.wait(handle)).exit_code == 0
    assert sorted(line.text for line in read_logs(config.log_dir)) == [
        "GREETING=hello world", f"PATH={PATH}"]
    config = h.config(PY, "-c", "import os; print(os.getcwd())")
    handle = await h.start(config)
    await h.driver.wait(handle)
    assert [line.text for line in read_logs(config.log_dir)] == [str(config.task_dir)]


async def test_port_variables_are_expanded_in_arguments(h: Harness) -> None:
    result, lines = await h.run("echo", "--port", "${PORT_HTTP}", "${UNKNOWN}",
                                env={"PORT_HTTP": "31002"})
    assert result.exit_code == 0
    assert lines == ["--port 31002 ${UNKNOWN}"]


async def test_relative_command_runs_from_the_task_dir(h: Harness) -> None:
    config = h.config("./app.sh")
    (config.task_dir / "app.sh").write_text("#!/bin/sh\necho from app\n")
    (config.task_dir / "app.sh").chmod(0o755)
    handle = await h.start(config)
    await h.driver.wait(handle)
    assert [line.text for line in read_logs(config.log_dir)] == ["from app"]


async def test_missing_command_fails_start(h: Harness, cgroups: CgroupRoot) -> None:
    with pytest.raises(DriverError, match="'no-such-command' not found in PATH"):
        await h.start(h.config("no-such-command"))
    assert cgroups.list_instance_groups(PARENT) == []


async def test_stop_sends_the_signal_then_sigkill_after_the_timeout(h: Harness) -> None:
    config = h.config(PY, "-u", "-c", (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('got TERM', flush=True))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"))
    handle = await h.start(config)
    await until(logged(config, "ready"))
    began = time.monotonic()
    result = await h.driver.stop(handle, signal=signal.SIGTERM, timeout=0.5)
    took = time.monotonic() - began
    assert result is not None
    assert (result.signal, result.oom_killed) == (signal.SIGKILL, False)
    assert result.reason == "killed by signal 9 (SIGKILL)"
    assert 0.5 <= took < 5
    assert logged(config, "got TERM")()
    assert gone(handle.pid)


async def test_stop_that_is_obeyed_returns_at_once(h: Harness) -> None:
    handle = await h.start(h.config("sleep", "300"))
    began = time.monotonic()
    result = await h.driver.stop(handle, signal=signal.SIGTERM, timeout=10)
    assert time.monotonic() - began < 2
    assert result is not None and result.reason == "killed by signal 15 (SIGTERM)"


async def test_stop_kills_double_forked_and_setsid_children(h: Harness) -> None:
    config = h.config(PY, "-c", (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"  # a classic daemon: fork, setsid, fork, parent exits
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # needs the SIGKILL
        "        open('daemon.pid', 'w').write(str(os.getpid()))\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    open('setsid.pid', 'w').write(str(os.getpid()))\n"
        "    time.sleep(300)\n"
        "time.sleep(300)\n"))
    handle = await h.start(config)
    files = [config.task_dir / "daemon.pid", config.task_dir / "setsid.pid"]
    await until(lambda: all(f.exists() and f.read_text() for f in files))
    pids = [int(f.read_text()) for f in files]
    assert not any(gone(p) for p in pids)
    # Neither is in the instance's process group: only the cgroup reaches them.
    assert all(os.getpgid(p) != handle.pid for p in pids)
    result = await h.driver.stop(handle, signal=signal.SIGTERM, timeout=0.5)
    assert result is not None and result.signal == signal.SIGTERM
    await until(lambda: all(gone(p) for p in [handle.pid, *pids]))


async def test_memory_limit_is_reported_as_oom_killed(h: Harness) -> None:
    result, _ = await h.run(PY, "-c", "s = b'x' * (200 << 20); print('survived')",
                            resources=Resources(memory=64 * MiB))
    assert result.oom_killed
    assert result.signal == signal.SIGKILL
    assert result.reason == "oom-killed (memory limit 64MiB)"


async def test_oom_in_a_child_of_a_shell(h: Harness) -> None:
    result, _ = await h.run("sh", "-c", f"{PY} -c \"s = b'x' * (200 << 20)\"",
                            resources=Resources(memory=64 * MiB))
    assert (result.exit_code, result.oom_killed) == (137, True)
    assert result.reason.startswith("oom-killed")


async def test_pids_limit_makes_fork_fail_and_the_node_is_fine(h: Harness) -> None:
    result, lines = await h.run(PY, "-c", (
        "import errno, os, time\n"
        "for n in range(500):\n"  # bounded, in case the limit did not apply
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('fork failed', errno.errorcode[e.errno], 'after', n, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"), resources=Resources(pids=20))
    assert result.exit_code == 0
    assert lines == ["fork failed EAGAIN after 19"]
    assert subprocess.run(["true"], check=False).returncode == 0


async def test_cpu_quota_limits_a_spinner(h: Harness) -> None:
    config = h.config(PY, "-c", (
        "import time\n"
        "end = time.monotonic() + 2\n"
        "while time.monotonic() < end: pass\n"), resources=Resources(cpu=0.2))
    handle = await h.start(config)
    assert (await asyncio.wait_for(h.driver.wait(handle), 30)).exit_code == 0
    usage = await h.driver.usage(handle)  # the group outlives the process until destroy
    assert usage is not None
    # Unlimited, 2 s of spinning is 2 s of cpu; at 0.2 cores about 0.4 s.
    assert 0.1 < usage.cpu_seconds < 0.9


async def test_usage_is_sane(h: Harness) -> None:
    config = h.config(PY, "-c", (
        "import time\n"
        "data = b'x' * (40 << 20)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"))
    handle = await h.start(config)
    await until(logged(config, "ready"))
    usage = await h.driver.usage(handle)
    assert usage is not None
    assert 40 * MiB < usage.memory < 200 * MiB
    assert usage.pids == 1
    assert 0 < usage.cpu_seconds < 5


async def test_signal_reaches_the_main_process(h: Harness) -> None:
    config = h.config(PY, "-u", "-c", (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\n"
        "print('ready')\n"
        "time.sleep(300)\n"))
    handle = await h.start(config)
    await until(logged(config, "ready"))
    await h.driver.signal(handle, signal.SIGHUP)
    assert (await asyncio.wait_for(h.driver.wait(handle), 10)).exit_code == 7
    await h.driver.signal(handle, signal.SIGHUP)  # after the end: nothing, no error


async def test_destroy_removes_every_cgroup_and_is_idempotent(
        h: Harness, cgroups: CgroupRoot) -> None:
    config = h.config("sh", "-c", "sleep 300 & exec sleep 300")
    handle = await h.start(config)
    group = cgroups.group(PARENT, config.instance_id)
    await until(lambda: len(group.pids()) == 2)
    pids = group.pids()
    dirs = group.dirs
    assert len(dirs) >= 2 and all(d.is_dir() for d in dirs)
    await h.driver.destroy(handle)
    assert not any(d.exists() for d in dirs)
    assert all(gone(p) for p in pids)
    await h.driver.destroy(handle)
    assert await h.driver.usage(handle) is None


async def test_destroy_right_after_start_leaves_nothing(h: Harness,
                                                        cgroups: CgroupRoot) -> None:
    # The wrapper may still be joining the groups when destroy comes: it must neither
    # escape nor keep a group busy.
    for _ in range(20):
        config = h.config("sleep", "300")
        handle = await h.start(config)
        await h.driver.destroy(handle)
        await until(lambda: gone(handle.pid))  # noqa: B023 (awaited within the iteration)
        assert not cgroups.group(PARENT, config.instance_id).exists()


async def test_a_restarted_instance_gets_a_fresh_cgroup(h: Harness,
                                                        cgroups: CgroupRoot) -> None:
    config = h.config("sh", "-c", "sleep 300 & echo started")
    first = await h.start(config)
    assert (await h.driver.wait(first)).exit_code == 0
    group = cgroups.group(PARENT, config.instance_id)
    [leftover] = group.pids()  # the background sleep outlived its parent
    # An agent that crashed before destroy: the next one starts the instance again.
    after_crash = ProcessDriver(cgroups=cgroups, cgroup_parent=PARENT)
    second = await after_crash.start(config)
    try:
        assert gone(leftover)
        assert (await after_crash.wait(second)).exit_code == 0
    finally:
        await after_crash.destroy(second)


async def test_handle_is_json(h: Harness) -> None:
    handle = await h.start(h.config("true"))
    await h.driver.wait(handle)
    saved = json.loads(json.dumps(dataclasses.asdict(handle)))
    assert TaskHandle(**saved) == handle


async def test_a_handle_from_elsewhere_can_be_stopped(h: Harness) -> None:
    handle = await h.start(h.config("sleep", "300"))
    adopted = TaskHandle(**dataclasses.asdict(handle))
    other = ProcessDriver(cgroups=h.driver._cgroups, cgroup_parent=PARENT)
    assert await other.usage(adopted) is not None
    assert await other.stop(adopted, signal=signal.SIGTERM, timeout=5) is None
    assert gone(handle.pid)
    result = await other.wait(adopted)
    assert result.exit_code is None and "unknown" in result.reason


# --- without cgroups ----------------------------------------------------------------------


async def test_without_cgroups_runs_unlimited_and_says_so(plain: Harness) -> None:
    caps = plain.driver.capabilities
    assert not caps.resource_limits and not caps.oom_detection and not caps.kills_all_processes
    assert "not enforced" in caps.notes and "disabled by the test" in caps.notes
    assert plain.driver.available() == ""
    result, lines = await plain.run("echo", "${PORT}", env={"PORT": "8080"})
    assert (result.exit_code, lines) == (0, ["8080"])


async def test_without_cgroups_stop_kills_the_process_group(plain: Harness) -> None:
    # SIGTERM ignored by both: the shell and, inherited, its child.
    config = plain.config("sh", "-c", "trap '' TERM; sleep 300 & echo $! > child.pid; wait")
    handle = await plain.start(config)
    pidfile = config.task_dir / "child.pid"
    await until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    child = int(pidfile.read_text())
    result = await plain.driver.stop(handle, signal=signal.SIGTERM, timeout=0.3)
    assert result is not None
    assert result.signal == signal.SIGKILL
    await until(lambda: gone(child))
    usage = await plain.driver.usage(handle)
    assert usage is None


async def test_without_cgroups_usage_of_the_process_tree(plain: Harness) -> None:
    config = plain.config("sh", "-c", "sleep 300 & echo ready; wait")
    handle = await plain.start(config)
    await until(logged(config, "ready"))
    usage = await plain.driver.usage(handle)
    assert usage is not None and usage.pids == 2 and usage.memory > 0


# --- shared helpers and the registry ------------------------------------------------------


async def test_registry_builds_drivers() -> None:
    driver = DRIVERS["process"](cgroups=NoCgroups("test"))
    assert isinstance(driver, Driver)
    assert driver.name == "process"
    registry = make_drivers(cgroups=NoCgroups("test"), cgroup_parent=PARENT)
    assert registry.status == {"process": ""}
    assert registry.default == "process"
    assert set(registry.usable) == {"process"}
    assert await registry.cleanup_stale() == []


async def test_registry_cleans_up_what_an_earlier_agent_left(cgroups: CgroupRoot,
                                                             tmp_path: Path) -> None:
    earlier = Harness(ProcessDriver(cgroups=cgroups, cgroup_parent=PARENT), tmp_path)
    kept = await earlier.start(earlier.config("sleep", "300"))
    stale = await earlier.start(earlier.config("sleep", "300"))
    try:
        registry = make_drivers(cgroups=cgroups, cgroup_parent=PARENT)
        assert await registry.cleanup_stale(frozenset({kept.instance_id})) == [
            stale.instance_id]
        await until(lambda: gone(stale.pid))
        assert not gone(kept.pid)
    finally:
        await earlier.close()


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
