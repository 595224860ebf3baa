"""The one conformance suite every isolation driver passes (process, sandbox, oci).

A driver's test module subclasses `DriverConformance`, names an importable factory
(`factory = "tests.agent.drivers.test_x:make_driver"`, called as `make(cgroup_parent=...)`:
the suite builds several drivers, as several agent processes would, and one in a
subprocess it kills with SIGKILL) and states the `Capabilities` it must report. Where a
capability is absent, the test of that behaviour checks that it is reported absent.

Payloads are `python3`/`sh` from /usr/bin, which every driver shows. Every instance carries
a unique `CORRAL_TEST_MARK` in its environment, so its processes are found in the host's
/proc whatever pid namespace they are in; the harness kills whatever still carries a mark
at the end, and the cgroup parent is removed, also when a test fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from corral.agent.cgroups import CgroupRoot, detect
from corral.agent.drivers.base import (
    Capabilities,
    Driver,
    DriverError,
    ExitResult,
    TaskConfig,
    TaskHandle,
)
from corral.agent.drivers.supervised import read_exit
from corral.agent.logs import read_logs
from corral.model.application import IsolationSpec, Resources
from corral.testing.cgroups import real_cgroups
from corral.testing.procs import gone, until

__all__ = ["DriverConformance", "Harness", "gone", "instance_pids", "until"]

MiB = 1024 * 1024
PATH = "/usr/bin:/bin"
REPO = Path(__file__).resolve().parents[3]
GUARD = 30.0  # turns a hang into a failure; no assertion about speed






def instance_pids(mark: str) -> set[int]:
    """Host pids of the live processes whose environment carries `mark`."""
    needle = f"CORRAL_TEST_MARK={mark}".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and not gone(int(entry.name)):
                    found.add(int(entry.name))
        except OSError:
            continue
    return found


def host_pid(mark: str, inner: int) -> int:
    """The host pid of the instance's process that sees itself as `inner`."""
    for pid in instance_pids(mark):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if int(nspid.split()[-1]) == inner:
            return pid
    raise AssertionError(f"no process of instance {mark} is pid {inner} inside")


def load_factory(path: str) -> Callable[..., Driver]:
    module, _, name = path.partition(":")
    factory: Callable[..., Driver] = getattr(importlib.import_module(module), name)
    return factory


# An agent in its own process: starts one instance, prints its handle, then waits to be
# killed; what outlives it is what an agent restart would leave.
_AGENT = """
import asyncio, importlib, json, sys
from pathlib import Path
from corral.agent.drivers.base import TaskConfig
module, _, name = sys.argv[1].partition(":")
make = getattr(importlib.import_module(module), name)
raw = json.loads(sys.argv[3])
config = TaskConfig(instance_id=raw["id"], command=tuple(raw["command"]), env=raw["env"],
                    task_dir=Path(raw["task_dir"]), log_dir=Path(raw["log_dir"]))
async def main():
    handle = await make(cgroup_parent=sys.argv[2]).start(config)
    print(handle.to_json(), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


class Harness:
    """Drivers plus per-test dirs; destroys every instance it started and kills every
    process still carrying one of its marks at the end."""

    def __init__(self, make: Callable[[], Driver], tmp: Path, inside_task_dir: str | None
                 ) -> None:
        self.make = make
        self.driver = make()
        self.tmp = tmp
        self.inside = inside_task_dir
        self.handles: list[tuple[Driver, TaskHandle]] = []
        self.marks: list[str] = []
        self.agents: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def config(self, *command: str, env: dict[str, str] | None = None,
               resources: Resources | None = None,
               isolation: IsolationSpec | None = None) -> TaskConfig:
        self._n += 1
        task_dir = self.tmp / f"task-{self._n}"
        task_dir.mkdir()
        mark = uuid.uuid4().hex
        self.marks.append(mark)
        return TaskConfig(instance_id=f"inst-{self._n}", command=command,
                          env={"PATH": PATH, "CORRAL_TEST_MARK": mark,
                               "CORRAL_TASK_DIR": str(task_dir), **(env or {})},
                          task_dir=task_dir, log_dir=self.tmp / f"logs-{self._n}",
                          resources=resources or Resources(memory=256 * MiB),
                          isolation=isolation or IsolationSpec())

    def task_dir_inside(self, config: TaskConfig) -> str:
        return self.inside or str(config.task_dir)

    async def start(self, config: TaskConfig, driver: Driver | None = None) -> TaskHandle:
        driver = driver or self.driver
        handle = await driver.start(config)
        self.handles.append((driver, handle))
        return handle

    async def run(self, *command: str, env: dict[str, str] | None = None,
                  resources: Resources | None = None, isolation: IsolationSpec | None = None
                  ) -> tuple[ExitResult, list[str]]:
        config = self.config(*command, env=env, resources=resources, isolation=isolation)
        handle = await self.start(config)
        result = await asyncio.wait_for(self.driver.wait(handle), GUARD)
        return result, [line.text for line in read_logs(config.log_dir)]

    def start_in_agent_process(self, factory: str, parent: str,
                               config: TaskConfig) -> TaskHandle:
        """Start `config` from a separate agent process, then kill that process with
        SIGKILL; the instance's handle as that agent saved it."""
        raw = json.dumps({"id": config.instance_id, "command": config.command,
                          "env": dict(config.env), "task_dir": str(config.task_dir),
                          "log_dir": str(config.log_dir)})
        agent = subprocess.Popen([sys.executable, "-c", _AGENT, factory, parent, raw],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"})
        self.agents.append(agent)
        assert agent.stdout is not None and agent.stderr is not None
        line = agent.stdout.readline()
        agent.kill()
        agent.wait()
        assert line, f"the agent process did not start the instance: {agent.stderr.read()!r}"
        return TaskHandle.from_json(line.decode())

    async def close(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        errors = []
        for driver, handle in self.handles:
            try:
                await driver.destroy(handle)
            except Exception as exc:  # clean up the rest, then fail
                errors.append(exc)
        for mark in self.marks:
            for pid in instance_pids(mark):
                os.kill(pid, signal.SIGKILL)
        assert not errors, errors


def logged(config: TaskConfig, text: str) -> Callable[[], bool]:
    return lambda: any(line.text == text for line in read_logs(config.log_dir))


def texts(config: TaskConfig) -> list[str]:
    return [line.text for line in read_logs(config.log_dir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.02; done"


class DriverConformance:
    """Subclass as `Test<Driver>`; set `factory`, `expected` and, for drivers that show the
    task dir elsewhere inside, `inside_task_dir` (and `added_env`). `needs_root`: skip
    (with the reason) when not root."""

    factory: ClassVar[str]
    expected: ClassVar[Capabilities]
    inside_task_dir: ClassVar[str | None] = None
    # What the runtime adds to `config.env`, documented by the driver (bwrap sets PWD).
    added_env: ClassVar[dict[str, str]] = {}
    needs_root: ClassVar[bool] = True

    @pytest.fixture(scope="class")
    @classmethod
    def cgroup_parent(cls) -> Iterator[str]:
        parent = f"corral-test-{os.getpid()}-{cls.__name__.lower()}"
        if not cls.needs_root:
            yield parent
            return
        for _ in real_cgroups(parent):  # skips when not root; removes the parent after
            yield parent

    @pytest.fixture
    def make_driver(self, cgroup_parent: str) -> Callable[[], Driver]:
        """Builds a fresh driver, as a freshly started agent process would."""
        factory = load_factory(self.factory)
        return lambda: factory(cgroup_parent=cgroup_parent)

    @pytest.fixture
    async def h(self, make_driver: Callable[[], Driver], tmp_path: Path
                ) -> AsyncIterator[Harness]:
        harness = Harness(make_driver, tmp_path, self.inside_task_dir)
        try:
            yield harness
        finally:
            await harness.close()

    def caps(self, h: Harness) -> Capabilities:
        return h.driver.capabilities

    # --- what it says about itself ------------------------------------------------------

    async def test_reports_its_capabilities(self, h: Harness) -> None:
        assert isinstance(h.driver, Driver)
        assert h.driver.available() == ""
        reported = dataclasses.replace(h.driver.capabilities, notes="")
        assert reported == dataclasses.replace(self.expected, notes="")

    # --- running a command ----------------------------------------------------------------

    async def test_output_reaches_the_logs(self, h: Harness) -> None:
        before = time.time()
        config = h.config("sh", "-c", "echo hello; echo oops >&2; printf partial")
        handle = await h.start(config)
        assert before <= handle.started_at <= time.time()
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0
        lines = read_logs(config.log_dir)
        assert sorted((line.stream, line.text) for line in lines) == [
            ("stderr", "oops"), ("stdout", "hello"), ("stdout", "partial")]
        assert all(before <= line.time <= time.time() for line in lines)

    async def test_exit_code_and_reason(self, h: Harness) -> None:
        result, _ = await h.run("sh", "-c", "exit 3")
        assert result == ExitResult(exit_code=3, signal=None, oom_killed=False,
                                    reason="exited with code 3")
        assert (await h.run("true"))[0].reason == "exited with code 0"
        assert await h.driver.wait(h.handles[0][1]) == result  # again: the same answer

    async def test_env_is_exactly_the_config_and_cwd_is_the_task_dir(self, h: Harness
                                                                     ) -> None:
        config = h.config("env", env={"GREETING": "hello world"})
        handle = await h.start(config)
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0
        inside = h.task_dir_inside(config)
        expected = {**config.env, "CORRAL_TASK_DIR": inside, **self.added_env}
        assert sorted(texts(config)) == sorted(f"{k}={v}" for k, v in expected.items())
        config = h.config("python3", "-c", "import os; print(os.getcwd())")
        await asyncio.wait_for(h.driver.wait(await h.start(config)), GUARD)
        assert texts(config) == [h.task_dir_inside(config)]

    async def test_port_variables_are_expanded_in_arguments(self, h: Harness) -> None:
        result, lines = await h.run("echo", "--port", "${PORT_HTTP}", "${UNKNOWN}",
                                    env={"PORT_HTTP": "31002"})
        assert (result.exit_code, lines) == (0, ["--port 31002 ${UNKNOWN}"])

    async def test_relative_command_runs_from_the_task_dir(self, h: Harness) -> None:
        config = h.config("./app.sh")
        (config.task_dir / "app.sh").write_text("#!/bin/sh\necho from app\n")
        (config.task_dir / "app.sh").chmod(0o755)
        handle = await h.start(config)
        await asyncio.wait_for(h.driver.wait(handle), GUARD)
        assert texts(config) == ["from app"]

    async def test_missing_command_fails_start_and_leaves_nothing(self, h: Harness) -> None:
        config = h.config("no-such-command")
        with pytest.raises(DriverError, match="'no-such-command' not found"):
            await h.driver.start(config)
        assert await h.driver.recover(TaskHandle(
            driver=h.driver.name, instance_id=config.instance_id, pid=1, started_at=0)) is False
        # Started again with a command that exists: the instance id is free.
        handle = await h.start(h.config("true"))
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0

    async def test_no_new_privileges(self, h: Harness) -> None:
        _, lines = await h.run("grep", "NoNewPrivs", "/proc/self/status")
        assert lines == ["NoNewPrivs:\t1"]

    # --- signals and stop -------------------------------------------------------------------

    async def test_signal_reaches_the_main_process(self, h: Harness) -> None:
        config = h.config("python3", "-u", "-c", (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\n"
            "print('ready')\n"
            "time.sleep(300)\n"))
        handle = await h.start(config)
        await until(logged(config, "ready"))
        await h.driver.signal(handle, signal.SIGHUP)
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 7
        await h.driver.signal(handle, signal.SIGHUP)  # after the end: nothing, no error

    async def test_stop_sends_the_signal_then_sigkill_after_the_timeout(self, h: Harness
                                                                         ) -> None:
        config = h.config("python3", "-u", "-c", (
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
        assert 0.5 <= took < 10
        assert logged(config, "got TERM")()
        assert gone(handle.pid)
        assert instance_pids(config.env["CORRAL_TEST_MARK"]) == set()

    async def test_stop_that_is_obeyed_returns_at_once(self, h: Harness) -> None:
        handle = await h.start(h.config("sleep", "300"))
        began = time.monotonic()
        result = await h.driver.stop(handle, signal=signal.SIGTERM, timeout=20)
        assert time.monotonic() - began < 5
        assert result is not None and result.reason == "killed by signal 15 (SIGTERM)"

    async def test_stop_kills_double_forked_and_setsid_children(self, h: Harness) -> None:
        config = h.config("python3", "-c", (
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
        mark = config.env["CORRAL_TEST_MARK"]
        # The pids in the files are as seen inside the instance (maybe a pid namespace).
        escaped = {host_pid(mark, int(f.read_text())) for f in files}
        assert not any(gone(p) for p in escaped)
        # Neither is in the main process's session any more: only a cgroup reaches them.
        assert _session(handle.pid) not in {_session(p) for p in escaped}
        result = await h.driver.stop(handle, signal=signal.SIGTERM, timeout=0.5)
        assert result is not None and result.signal in (signal.SIGTERM, signal.SIGKILL)
        if not self.expected.kills_all_processes:
            assert not self.caps(h).kills_all_processes
            assert instance_pids(mark) == escaped  # what the capability being absent means
            return
        await until(lambda: instance_pids(mark) == set())

    # --- limits ---------------------------------------------------------------------------

    async def test_memory_limit_is_reported_as_oom_killed(self, h: Harness) -> None:
        result, _ = await h.run("python3", "-c", "s = b'x' * (200 << 20); print('survived')",
                                resources=Resources(memory=64 * MiB))
        if not self.expected.oom_detection:
            assert not self.caps(h).oom_detection
            return
        assert result.oom_killed
        assert result.signal == signal.SIGKILL
        assert result.reason == "oom-killed (memory limit 64MiB)"

    async def test_oom_in_a_child_of_a_shell(self, h: Harness) -> None:
        result, _ = await h.run("sh", "-c", "python3 -c \"s = b'x' * (200 << 20)\"",
                                resources=Resources(memory=64 * MiB))
        if not self.expected.oom_detection:
            assert not self.caps(h).oom_detection
            return
        assert result.oom_killed and result.reason.startswith("oom-killed")

    async def test_pids_limit_makes_fork_fail_and_the_node_is_fine(self, h: Harness) -> None:
        result, lines = await h.run("python3", "-c", (
            "import errno, os, time\n"
            "for n in range(200):\n"  # bounded, in case the limit did not apply
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError as e:\n"
            "        print('fork failed', errno.errorcode[e.errno], 'after', n, flush=True)\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(30)\n"
            "        os._exit(0)\n"), resources=Resources(pids=20))
        assert subprocess.run(["true"], check=False).returncode == 0
        if not self.expected.resource_limits:
            assert not self.caps(h).resource_limits
            return
        assert result.exit_code == 0
        [line] = lines
        words = line.split()
        # The runtime's own processes (a wrapper, bwrap...) count against the limit too.
        assert words[:3] == ["fork", "failed", "EAGAIN"] and 10 <= int(words[-1]) < 20

    async def test_cpu_quota_limits_a_spinner(self, h: Harness) -> None:
        config = h.config("python3", "-c", (
            "import time\n"
            "end = time.monotonic() + 2\n"
            "while time.monotonic() < end: pass\n"), resources=Resources(cpu=0.2))
        handle = await h.start(config)
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0
        if not self.expected.resource_limits:
            assert not self.caps(h).resource_limits
            return
        usage = await h.driver.usage(handle)  # measured until destroy
        assert usage is not None
        # Unlimited, 2 s of spinning is 2 s of cpu; at 0.2 cores about 0.4 s.
        assert 0.1 < usage.cpu_seconds < 0.9

    async def test_usage_is_sane(self, h: Harness) -> None:
        config = h.config("python3", "-c", (
            "import time\n"
            "data = b'x' * (40 << 20)\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n"))
        handle = await h.start(config)
        await until(logged(config, "ready"))
        usage = await h.driver.usage(handle)
        assert usage is not None
        assert 40 * MiB < usage.memory < 200 * MiB
        assert 1 <= usage.pids <= 4  # the command, plus the runtime's helpers if any
        assert 0 < usage.cpu_seconds < 5

    # --- cleanup -------------------------------------------------------------------------

    async def test_destroy_kills_everything_and_is_idempotent(self, h: Harness) -> None:
        config = h.config("sh", "-c", "sleep 300 & echo started; exec sleep 300")
        handle = await h.start(config)
        await until(logged(config, "started"))
        mark = config.env["CORRAL_TEST_MARK"]
        await until(lambda: len(instance_pids(mark)) >= 2)
        dirs = self.cgroup_dirs(h, handle)
        assert all(d.is_dir() for d in dirs)
        await h.driver.destroy(handle)
        assert instance_pids(mark) == set()
        assert not any(d.exists() for d in dirs)
        await h.driver.destroy(handle)
        assert await h.driver.usage(handle) is None

    def cgroup_dirs(self, h: Harness, handle: TaskHandle) -> tuple[Path, ...]:
        """The instance's cgroup directories (none without cgroups)."""
        if not self.expected.resource_limits:
            return ()
        found = detect()
        assert isinstance(found, CgroupRoot)
        return found.group(str(handle.data["cgroup_parent"]), handle.instance_id).dirs

    async def test_destroy_right_after_start_leaves_nothing(self, h: Harness) -> None:
        # The wrapper may still be joining the groups when destroy comes: it must neither
        # escape nor keep a group busy.
        for _ in range(10):
            config = h.config("sleep", "300")
            handle = await h.start(config)
            await h.driver.destroy(handle)
            assert instance_pids(config.env["CORRAL_TEST_MARK"]) == set()
            assert not any(d.exists() for d in self.cgroup_dirs(h, handle))

    async def test_start_after_an_agent_crash_starts_fresh(self, h: Harness) -> None:
        config = h.config("sh", "-c", "sleep 300 & echo started; exec sleep 300")
        await h.start(config)
        await until(logged(config, "started"))
        mark = config.env["CORRAL_TEST_MARK"]
        earlier = instance_pids(mark)
        # The agent died without destroy; the next one starts the instance again.
        after_crash = h.make()
        handle = await h.start(dataclasses.replace(config, command=("echo", "again")),
                               after_crash)
        assert (await asyncio.wait_for(after_crash.wait(handle), GUARD)).exit_code == 0
        if self.expected.kills_all_processes:
            assert not instance_pids(mark) & earlier

    # --- adoption: instances outlive the agent ---------------------------------------------

    async def test_handle_is_json(self, h: Harness) -> None:
        handle = await h.start(h.config("true"))
        await asyncio.wait_for(h.driver.wait(handle), GUARD)
        assert TaskHandle.from_json(handle.to_json()) == handle
        assert TaskHandle(**json.loads(json.dumps(dataclasses.asdict(handle)))) == handle

    async def test_a_running_instance_is_adopted_after_the_agent_is_killed(
            self, h: Harness, cgroup_parent: str) -> None:
        config = h.config("sh", "-c", f"echo one; {WAIT_FOR_GO}; echo two; exec sleep 300")
        handle = h.start_in_agent_process(self.factory, cgroup_parent, config)
        adopter = h.make()
        h.handles.append((adopter, handle))
        await until(logged(config, "one"))
        (config.task_dir / "go").touch()
        await until(logged(config, "two"))  # written after its agent is gone
        assert not gone(handle.pid)
        assert await adopter.recover(handle) is True
        usage = await adopter.usage(handle)
        assert usage is not None and usage.pids >= 1
        result = await adopter.stop(handle, signal=signal.SIGTERM, timeout=10)
        assert result is not None and result.signal == signal.SIGTERM
        assert gone(handle.pid)
        assert (await adopter.wait(handle)) == result

    async def test_an_exit_while_no_agent_runs_is_known_to_the_next(
            self, h: Harness, cgroup_parent: str) -> None:
        config = h.config("sh", "-c", f"echo one; {WAIT_FOR_GO}; echo two; exit 7")
        handle = h.start_in_agent_process(self.factory, cgroup_parent, config)
        await until(logged(config, "one"))
        (config.task_dir / "go").touch()
        state_dir = Path(str(handle.data["state_dir"]))
        await until(lambda: read_exit(state_dir) is not None)
        adopter = h.make()
        h.handles.append((adopter, handle))
        assert await adopter.recover(handle) is True
        result = await asyncio.wait_for(adopter.wait(handle), GUARD)
        assert (result.exit_code, result.reason) == (7, "exited with code 7")
        assert texts(config) == ["one", "two"]

    async def test_an_instance_in_process_is_adopted_by_another_driver(self, h: Harness
                                                                        ) -> None:
        config = h.config("sh", "-c", f"echo one; {WAIT_FOR_GO}; echo two; exit 5")
        handle = await h.start(config)
        adopter = h.make()
        saved = TaskHandle.from_json(handle.to_json())
        assert await adopter.recover(saved) is True
        (config.task_dir / "go").touch()
        assert (await asyncio.wait_for(adopter.wait(saved), GUARD)).exit_code == 5
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 5

    async def test_recover_of_an_instance_nobody_knows_is_false(self, h: Harness) -> None:
        config = h.config("true")
        handle = await h.start(config)
        await asyncio.wait_for(h.driver.wait(handle), GUARD)
        await h.driver.destroy(handle)  # its record is gone with it
        assert await h.make().recover(handle) is False

    # --- isolation (drivers with fs_isolation / network_isolation) -----------------------

    async def test_sees_only_its_own_processes(self, h: Harness) -> None:
        _, lines = await h.run("sh", "-c", "ls /proc | grep '^[0-9]*$'")
        if not self.expected.fs_isolation:
            assert not self.caps(h).fs_isolation
            return
        pids = {int(p) for p in lines}
        assert 1 in pids and len(pids) <= 4  # an init or reaper, the shell, ls
        assert os.getpid() not in pids

    async def test_host_files_are_read_only_and_tmp_is_private(self, h: Harness) -> None:
        if not self.expected.fs_isolation:  # it would write the host's /usr and /etc
            assert not self.caps(h).fs_isolation
            return
        name = f"corral-probe-{uuid.uuid4().hex}"
        config = h.config("sh", "-c", (
            f"touch /usr/{name} 2>/dev/null; echo usr $?; "
            f"touch /etc/{name} 2>/dev/null; echo etc $?; "
            f"echo secret > /tmp/{name}; echo tmp $?; "
            f'echo data > "$CORRAL_TASK_DIR/{name}"; echo task $?'))
        await asyncio.wait_for(h.driver.wait(await h.start(config)), GUARD)
        try:
            status = dict(line.split() for line in texts(config))
            assert status["usr"] != "0" and status["etc"] != "0"
            assert not Path(f"/usr/{name}").exists() and not Path(f"/etc/{name}").exists()
            assert status["tmp"] == "0" and not Path(f"/tmp/{name}").exists()
            assert status["task"] == "0"
            assert (config.task_dir / name).read_text() == "data\n"
        finally:
            Path(f"/tmp/{name}").unlink(missing_ok=True)

    async def test_binds_its_port_on_the_host(self, h: Harness) -> None:
        port = free_port()
        config = h.config("python3", "-u", "-c", (
            "import os, socket\n"
            "s = socket.create_server(('0.0.0.0', int(os.environ['PORT'])))\n"
            "print('listening', flush=True)\n"
            "c, _ = s.accept(); c.sendall(b'hello from inside'); c.close()\n"),
            env={"PORT": str(port)})
        handle = await h.start(config)
        await until(logged(config, "listening"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), GUARD) == b"hello from inside"
        writer.close()
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0

    async def test_isolated_network_cannot_reach_host_loopback(self, h: Harness) -> None:
        if not self.expected.network_isolation:
            assert not self.caps(h).network_isolation
            return
        host = socket.create_server(("127.0.0.1", 0))
        try:
            port = host.getsockname()[1]
            _, lines = await h.run("python3", "-c", (
                "import socket\n"
                "own = socket.create_server(('127.0.0.1', 0))\n"  # loopback works inside
                "socket.create_connection(own.getsockname(), timeout=5).close()\n"
                "print('loopback ok')\n"
                "try:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "    print('reached the host')\n"
                "except OSError as e:\n"
                "    print('unreachable', type(e).__name__)\n"),
                isolation=IsolationSpec(network="isolated"))
        finally:
            host.close()
        assert lines[0] == "loopback ok"
        assert lines[1].startswith("unreachable"), lines

    async def test_runs_as_the_given_user(self, h: Harness) -> None:
        if os.geteuid() != 0:
            pytest.skip(f"needs root to change user (euid {os.geteuid()})")
        # Relative: the cwd is the task dir, whatever the dirs above it let the user reach.
        config = h.config("sh", "-c", "id -u; id -g; echo x > mine; echo $?",
                          isolation=IsolationSpec(user="65534:65534"))
        handle = await h.start(config)
        assert (await asyncio.wait_for(h.driver.wait(handle), GUARD)).exit_code == 0
        assert texts(config) == ["65534", "65534", "0"]
        assert (config.task_dir / "mine").stat().st_uid == 65534


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[3])
