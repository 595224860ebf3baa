"""The per-instance shim (agent/shim.py) and the agent's side of it (drivers/supervised.py),
without any driver: what the shim reports, records and survives, that it stops with its
command (not with the pipes), how identity protects against pid reuse, and that it imports
nothing it does not need. Needs no root."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.agent import shim
from corral.agent.drivers.base import DriverError
from corral.agent.drivers.supervised import (
    SHIM_PATH,
    Launched,
    clear_state,
    is_alive,
    launch,
    read_exit,
    shim_alive,
    start_ticks,
    wait_exit,
)
from corral.agent.logfile import format_time
from corral.agent.logs import read_logs

pytestmark = pytest.mark.timeout(60)
ENV = {"PATH": "/usr/bin:/bin"}


async def start(tmp: Path, *argv: str) -> Launched:
    (tmp / "task").mkdir(exist_ok=True)
    return await launch(argv=argv, env=ENV, cwd=tmp / "task", log_dir=tmp / "logs",
                        state_dir=tmp / "run")


def texts(tmp: Path) -> list[str]:
    return [line.text for line in read_logs(tmp / "logs")]


async def test_runs_the_command_logs_its_output_and_records_its_exit(tmp_path: Path) -> None:
    launched = await start(tmp_path, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert launched.pid == launched.child_pid != launched.shim_pid
    assert await asyncio.wait_for(wait_exit(tmp_path / "run", launched.shim_pid,
                                            launched.shim_ticks), 10) == 3
    assert sorted(texts(tmp_path)) == ["err", "out"]
    recorded = json.loads((tmp_path / "run" / "exit.json").read_text())
    assert recorded["exit_code"] == 3 and recorded["signal"] is None
    assert recorded["status"] == 3 << 8 and recorded["pid"] == launched.pid
    assert recorded["shim_pid"] == launched.shim_pid
    assert not shim_alive(tmp_path / "run")
    assert not Path(f"/proc/{launched.shim_pid}").exists()  # reaped: no zombie left


async def test_a_signal_death_is_recorded_as_such(tmp_path: Path) -> None:
    launched = await start(tmp_path, "/bin/sh", "-c", "kill -9 $$")
    assert await wait_exit(tmp_path / "run", launched.shim_pid, launched.shim_ticks) == -9
    recorded = read_exit(tmp_path / "run")
    assert recorded is not None and (recorded.returncode, recorded.status) == (-9, 9)
    assert read_exit(tmp_path / "run", shim_pid=launched.shim_pid + 1) is None


async def test_exec_failure_is_reported_by_launch(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match=r"cannot start '/no/such/program'.*No such file"):
        await start(tmp_path, "/no/such/program")
    (tmp_path / "task" / "data.txt").write_text("not a program")
    with pytest.raises(DriverError, match="Permission denied"):
        await start(tmp_path, str(tmp_path / "task" / "data.txt"))
    assert read_exit(tmp_path / "run") is None


async def test_stops_when_the_command_ends_even_if_a_daemon_holds_the_pipes(
        tmp_path: Path) -> None:
    launched = await start(tmp_path, "/bin/sh", "-c",
                           "sleep 300 & echo $! > daemon.pid; echo bye; exit 4")
    try:
        began = time.monotonic()
        assert await asyncio.wait_for(wait_exit(tmp_path / "run", launched.shim_pid,
                                                launched.shim_ticks), 10) == 4
        assert time.monotonic() - began < 5
        assert texts(tmp_path) == ["bye"]
    finally:
        daemon = int((tmp_path / "task" / "daemon.pid").read_text())
        os.kill(daemon, signal.SIGKILL)


async def test_the_shim_ignores_the_signals_meant_for_the_agent(tmp_path: Path) -> None:
    launched = await start(tmp_path, "/bin/sh", "-c", "echo ready; exec sleep 300")
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            os.kill(launched.shim_pid, sig)
        await asyncio.sleep(0.2)
        assert shim_alive(tmp_path / "run")
        # Its command got none of them, and starts with default dispositions.
        status = Path(f"/proc/{launched.pid}/status").read_text()
        ignored = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("SigIgn:")), 16)
        # glibc's posix_spawn leaves its two internal signals (32, 33) ignored in every
        # child it spawns; the program's own libc takes them over.
        assert ignored & ~(0b11 << 31) == 0, hex(ignored)
        os.kill(launched.pid, signal.SIGTERM)
        assert await asyncio.wait_for(wait_exit(tmp_path / "run", launched.shim_pid,
                                                launched.shim_ticks), 10) == -signal.SIGTERM
    finally:
        if is_alive(launched.pid, launched.start_ticks):
            os.kill(launched.pid, signal.SIGKILL)


async def test_a_new_launch_ends_an_earlier_shim_of_the_same_state_dir(tmp_path: Path
                                                                       ) -> None:
    first = await start(tmp_path, "/bin/sleep", "300")
    try:
        second = await start(tmp_path, "/bin/sh", "-c", "exit 0")
        assert not is_alive(first.shim_pid, first.shim_ticks)
        assert await wait_exit(tmp_path / "run", second.shim_pid, second.shim_ticks) == 0
        assert read_exit(tmp_path / "run", first.shim_pid) is None
    finally:
        os.kill(first.pid, signal.SIGKILL)


async def test_a_shim_killed_without_recording_gives_none(tmp_path: Path) -> None:
    launched = await start(tmp_path, "/bin/sleep", "300")
    try:
        os.kill(launched.shim_pid, signal.SIGKILL)
        assert await wait_exit(tmp_path / "run", launched.shim_pid, launched.shim_ticks) is None
        assert is_alive(launched.pid, launched.start_ticks)  # the instance outlives it
    finally:
        os.kill(launched.pid, signal.SIGKILL)


async def test_identity_is_pid_and_start_time(tmp_path: Path) -> None:
    ticks = start_ticks(os.getpid())
    assert ticks is not None and is_alive(os.getpid(), ticks)
    assert not is_alive(os.getpid(), ticks + 1)  # same pid, another process: not ours
    assert not is_alive(os.getpid(), None)
    # A recorded shim pid that is now someone else's is not alive, and waiting for it
    # returns at once.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "shim.pid").write_text(f"{os.getpid()} {ticks + 1}\n")
    assert not shim_alive(tmp_path / "run")
    assert await asyncio.wait_for(wait_exit(tmp_path / "run", os.getpid(), ticks + 1), 1) \
        is None
    clear_state(tmp_path / "run")
    assert not (tmp_path / "run").exists()


async def test_main_pid_file_mode_adopts_what_a_detached_runtime_leaves(tmp_path: Path
                                                                       ) -> None:
    # A "runtime" that starts the real process in the background, writes its pid and
    # exits 0, as `runc run -d --pid-file` does; the shim, a subreaper, adopts it.
    (tmp_path / "task").mkdir()
    pid_file = tmp_path / "task" / "main.pid"
    launched = await launch(
        argv=["/bin/sh", "-c", f"sleep 300 & echo $! > {pid_file}; echo runtime done"],
        env=ENV, cwd=tmp_path / "task", log_dir=tmp_path / "logs", state_dir=tmp_path / "run",
        main_pid_file=pid_file)
    try:
        assert launched.pid == int(pid_file.read_text()) != launched.child_pid
        cmdline = Path(f"/proc/{launched.pid}/cmdline")
        deadline = time.monotonic() + 10  # the forked shell may not have exec'd yet
        while cmdline.read_bytes() != b"sleep\x00300\x00":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        status = Path(f"/proc/{launched.pid}/status").read_text()
        assert f"PPid:\t{launched.shim_pid}\n" in status
        os.kill(launched.pid, signal.SIGTERM)
        # The real wait status, not a shell's 128+N.
        assert await asyncio.wait_for(wait_exit(tmp_path / "run", launched.shim_pid,
                                                launched.shim_ticks), 10) == -signal.SIGTERM
        assert texts(tmp_path) == ["runtime done"]
    finally:
        if is_alive(launched.pid, launched.start_ticks):
            os.kill(launched.pid, signal.SIGKILL)


async def test_main_pid_file_mode_reports_a_failing_runtime(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    with pytest.raises(DriverError, match="exited with code 2 before the main process"):
        await launch(argv=["/bin/sh", "-c", "echo no such container >&2; exit 2"], env=ENV,
                     cwd=tmp_path / "task", log_dir=tmp_path / "logs",
                     state_dir=tmp_path / "run", main_pid_file=tmp_path / "pid")
    assert texts(tmp_path) == ["no such container"]


def test_the_shim_imports_only_what_it_needs() -> None:
    code = (f"import sys; sys.argv = ['shim']; sys.path.insert(0, {str(SHIM_PATH.parents[2])!r})\n"
            f"exec(compile(open({str(SHIM_PATH)!r}).read(), 'shim', 'exec'), "
            "{'__name__': 'not_main'})\n"
            "from corral.agent import logfile\n"
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    heavy = {"asyncio", "typing", "pathlib", "json", "re", "enum", "datetime", "signal",
             "subprocess", "ctypes"}
    assert heavy.isdisjoint(out), heavy & set(out)
    assert not any(m.startswith("corral.") and m not in ("corral.agent", "corral.agent.logfile")
                   for m in out)


def test_shim_usage_error() -> None:
    done = subprocess.run([sys.executable, "-S", "-I", str(SHIM_PATH)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and "usage" in done.stderr
    assert shim.read_start_ticks(os.getpid()) == start_ticks(os.getpid())


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_format_time_is_datetimes_text(t: float) -> None:
    assert format_time(t) == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
