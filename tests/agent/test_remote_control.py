"""The agent's half of `corral exec`, `kill` and `ps --processes`, with real processes:
an exec session over an in-memory channel (pipes and a terminal, exit codes, a client that
leaves), the processes of a running instance, the agent API routes over a real `process`
driver instance, and the retention of ended instances' directories (pure, fake clock)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.agent.api import create_agent_app
from corral.agent.cgroups import NoCgroups
from corral.agent.drivers.base import Driver, TaskConfig, TaskHandle
from corral.agent.drivers.process import ProcessDriver
from corral.agent.drivers.supervised import Command
from corral.agent.exec_session import run_exec
from corral.agent.processes import describe_processes
from corral.agent.retention import expired_dirs
from corral.exec_protocol import (
    STDERR,
    STDIN,
    STDOUT,
    ExecRequest,
    ProtocolError,
    data_frame,
    exit_code_of,
    parse_request,
    split_frame,
    status_of,
)

pytestmark = pytest.mark.timeout(60)
TOKEN = "agent-secret"


class Pipe:
    """Both ends of an exec channel in memory: the test plays the client."""

    def __init__(self) -> None:
        self.to_agent: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self.sent: list[bytes | str] = []
        self.got_output = asyncio.Event()

    async def receive(self) -> bytes | str | None:
        return await self.to_agent.get()

    async def send(self, frame: bytes | str) -> None:
        self.sent.append(frame)
        self.got_output.set()

    def output(self, channel: int) -> bytes:
        return b"".join(d for n, d in (split_frame(f) for f in self.sent
                                       if isinstance(f, bytes)) if n == channel)

    def control(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.sent if isinstance(f, str)]


def shell(script: str, tmp: Path) -> Command:
    return Command(argv=("/bin/sh", "-c", script), env={"PATH": os.defpath, "A": "b"},
                   cwd=tmp)


async def test_exec_with_pipes_streams_stdin_stdout_stderr_and_returns_the_code(
        tmp_path: Path) -> None:
    pipe = Pipe()
    pipe.to_agent.put_nowait(data_frame(STDIN, b"hello\n"))
    pipe.to_agent.put_nowait(data_frame(STDIN, b"world\n"))
    pipe.to_agent.put_nowait(json.dumps({"type": "eof"}))
    code = await run_exec(pipe, shell('cat; echo "err $A" >&2; pwd; exit 3', tmp_path),
                          ExecRequest(command=("x",)))
    assert code == 3
    assert pipe.output(STDOUT) == f"hello\nworld\n{tmp_path}\n".encode()
    assert pipe.output(STDERR) == b"err b\n"
    assert pipe.control()[-1] == {"type": "exit", "code": 3}


async def test_a_command_killed_by_a_signal_exits_128_plus_it(tmp_path: Path) -> None:
    pipe = Pipe()
    pipe.to_agent.put_nowait(json.dumps({"type": "eof"}))
    code = await run_exec(pipe, shell("kill -TERM $$", tmp_path), ExecRequest(command=("x",)))
    assert code == 128 + signal.SIGTERM == exit_code_of(-signal.SIGTERM)


async def test_exec_with_a_terminal_gets_a_controlling_tty_of_the_clients_size(
        tmp_path: Path) -> None:
    pipe = Pipe()
    code = await run_exec(
        pipe, shell('test -t 0 && test -t 1 && stty size && echo "term=$TERM" && exit 5',
                    tmp_path),
        ExecRequest(command=("x",), tty=True, rows=33, cols=101, term="xterm-test"))
    assert code == 5
    text = pipe.output(STDOUT).decode()
    assert "33 101" in text and "term=xterm-test" in text, text
    assert pipe.output(STDERR) == b""  # one stream on a terminal


async def test_a_terminal_session_reads_input_and_follows_resizes(tmp_path: Path) -> None:
    pipe = Pipe()
    session = asyncio.create_task(run_exec(
        pipe, shell("read line; stty size; echo \"got $line\"", tmp_path),
        ExecRequest(command=("x",), tty=True, rows=10, cols=20)))
    pipe.to_agent.put_nowait(json.dumps({"type": "resize", "rows": 40, "cols": 120}))
    pipe.to_agent.put_nowait(data_frame(STDIN, b"abc\r"))
    assert await session == 0
    text = pipe.output(STDOUT).decode()
    assert "40 120" in text and "got abc" in text, text


async def test_a_client_that_leaves_ends_the_whole_session(tmp_path: Path) -> None:
    pipe = Pipe()
    pidfile = tmp_path / "child"
    session = asyncio.create_task(run_exec(
        pipe, shell(f"sleep 300 & echo $! > {pidfile}; echo up; wait", tmp_path),
        ExecRequest(command=("x",))))
    await pipe.got_output.wait()
    child = int(pidfile.read_text())
    pipe.to_agent.put_nowait(None)
    assert await session == -1
    assert not any(isinstance(f, str) for f in pipe.sent)  # no exit frame for no one
    for _ in range(200):
        if not _alive(child):
            break
        await asyncio.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_first_frame_is_checked() -> None:
    ok = parse_request(json.dumps({"command": ["ls", "-l"], "tty": True, "rows": 3}))
    assert ok == ExecRequest(command=("ls", "-l"), tty=True, rows=3, cols=0)
    assert parse_request(ok.to_text()) == ok
    for bad in ("nope", "[]", '{"command": []}', '{"command": [""]}', '{"command": "ls"}',
                '{"command": ["a\\u0000b"]}', '{"command": ["ls"], "tty": "yes"}',
                '{"command": ["ls"], "rows": -1}', '{"command": ["ls"], "cols": 1e9}'):
        with pytest.raises(ProtocolError):
            parse_request(bad)
    assert status_of(4404) == 404 and status_of(1000) is None and status_of(None) is None


def test_processes_are_described_from_proc() -> None:
    procs = describe_processes([os.getpid(), 999_999_999], now=__import__("time").time())
    assert [p.pid for p in procs] == [os.getpid()]  # a pid that does not exist is left out
    me = procs[0]
    assert me.ppid == os.getppid() and me.rss > 0 and me.cpu >= 0
    assert me.user == "root" or me.user == str(os.getuid()) or me.user
    assert sys.executable.rsplit("/", 1)[-1] in me.command or "python" in me.command


# --- the agent API over a real `process` driver instance --------------------------------

class Control:
    def __init__(self) -> None:
        self.running_now: dict[str, tuple[Driver, TaskHandle]] = {}

    def running(self, instance_id: str) -> tuple[Driver, TaskHandle] | None:
        return self.running_now.get(instance_id)


@pytest.fixture
async def agent_api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Control,
                                                             ProcessDriver, TaskHandle]]:
    driver = ProcessDriver(cgroups=NoCgroups("not needed here"), cgroup_parent="unused")
    task = tmp_path / "task"
    task.mkdir()
    script = "trap 'echo got-usr1; exit 0' USR1; sleep 300 & wait; sleep 300 & wait"
    handle = await driver.start(TaskConfig(
        instance_id="i1", command=("/bin/sh", "-c", script), env={"PATH": os.defpath},
        task_dir=task, log_dir=tmp_path / "logs"))
    control = Control()
    control.running_now["i1"] = (driver, handle)
    app = create_agent_app(token=TOKEN, log_dir_of=lambda iid: tmp_path / iid / "logs",
                           control=control)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a",
                                 headers={"authorization": f"Bearer {TOKEN}"}) as http:
        try:
            yield http, control, driver, handle
        finally:
            await driver.destroy(handle)


async def test_the_agent_lists_an_instances_processes_and_signals_its_main_one(
        agent_api: tuple[httpx.AsyncClient, Control, ProcessDriver, TaskHandle]) -> None:
    http, _, driver, handle = agent_api
    answer = (await http.get("/v1/agent/instances/i1/processes")).json()
    assert answer["pid"] == handle.pid
    for _ in range(100):  # the shell starts its sleep
        pids = [p["pid"] for p in answer["processes"]]
        if len(pids) >= 2:
            break
        await asyncio.sleep(0.05)
        answer = (await http.get("/v1/agent/instances/i1/processes")).json()
    assert handle.pid in pids and len(pids) >= 2
    sleep = next(p for p in answer["processes"] if p["pid"] != handle.pid)
    assert sleep["ppid"] == handle.pid and sleep["command"] == "sleep 300"
    resp = await http.post("/v1/agent/instances/i1/signal", json={"signal": signal.SIGUSR1})
    assert resp.status_code == 200 and resp.json()["pid"] == handle.pid
    result = await asyncio.wait_for(driver.wait(handle), 30)
    assert result.exit_code == 0  # its trap ran: the signal reached the main process


async def test_the_agent_refuses_what_it_cannot_do(
        agent_api: tuple[httpx.AsyncClient, Control, ProcessDriver, TaskHandle]) -> None:
    http, control, _, _ = agent_api
    assert (await http.post("/v1/agent/instances/i1/signal",
                            json={"signal": 0})).status_code == 400
    assert (await http.post("/v1/agent/instances/i1/signal",
                            json={"signal": "TERM"})).status_code == 422
    assert (await http.get("/v1/agent/instances/BAD!/processes")).status_code == 400
    control.running_now.clear()
    for resp in (await http.get("/v1/agent/instances/i1/processes"),
                 await http.post("/v1/agent/instances/i1/signal", json={"signal": 15})):
        assert resp.status_code == 409
        assert "not running" in resp.json()["error"]["message"]
    resp = await http.get("/v1/agent/instances/i1/processes",
                          headers={"authorization": "Bearer wrong"})
    assert resp.status_code == 401


# --- retention of ended instances' directories (pure) -----------------------------------

def test_ended_instances_keep_their_dirs_for_the_retention_then_lose_them() -> None:
    changed = {"live": 0.0, "recent": 900.0, "old": 100.0, "forgotten": 990.0}
    gone = expired_dirs(changed, now=1000.0, retention=600.0, live={"live"},
                        known={"live", "recent", "old"})
    assert [(g.instance, g.why) for g in gone] == [
        ("forgotten", "unknown to the server"), ("old", "ended over 600s ago")]
    # Without an answer from the server, only the retention decides.
    gone = expired_dirs(changed, now=1000.0, retention=600.0, live={"live"}, known=None)
    assert [g.instance for g in gone] == ["old"]
    # A longer retention keeps them all but the forgotten one.
    gone = expired_dirs(changed, now=1000.0, retention=3600.0, live=set(),
                        known={"live", "recent", "old"})
    assert [g.instance for g in gone] == ["forgotten"]
