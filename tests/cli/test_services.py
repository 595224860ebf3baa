"""`corral services`: the real command, as a child process, against the in-process server
served on a loopback socket (plain HTTP) while the test plays the agent: the table, the
JSON, a not-found exit code, and `--watch --json` printing a line per change until
interrupted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from corral.serving import EmbeddedServer, bind_socket
from corral.testing.server import TOKEN, ServerHarness, server_harness
from tests.server.fakeagent import NODE, app, bring, svc


@asynccontextmanager
async def served(srv: ServerHarness) -> AsyncIterator[str]:
    """The harness's API on 127.0.0.1 (no lifespan: the harness runs the watch hub)."""
    sock = bind_socket("127.0.0.1", 0)
    server = EmbeddedServer(uvicorn.Config(srv.app, log_config=None, access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        server.force_exit = True  # watches still open do not hold the shutdown
        await task
        sock.close()


@pytest.fixture
async def addr(tmp_path: Path) -> AsyncIterator[tuple[ServerHarness, dict[str, str]]]:
    async with server_harness(tmp_path) as srv, served(srv) as url:
        await srv.client.register_node(NODE)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update(CORRAL_ADDR=url, CORRAL_TOKEN=TOKEN,
                   CORRAL_CONFIG_DIR=str(tmp_path / "cfg"))
        yield srv, env


async def corral(env: dict[str, str], *args: str, verb: str = "services"
                 ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli.main", verb, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


SHOP = app(web=svc(instances=6), cache=svc(check=False, ports=()))


async def test_table_json_and_not_found(addr: tuple[ServerHarness, dict[str, str]]) -> None:
    srv, env = addr
    code, out, _ = await corral(env)
    assert code == 0 and "no services" in out
    await srv.client.apply(SHOP)
    await srv.reconcile()
    webs = await bring(srv, "web")
    await bring(srv, "cache", "running")
    code, out, err = await corral(env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["APP", "NAMESPACE", "SERVICE", "INSTANCES", "ADDRESSES"]
    assert lines[1].split() == ["shop", "default", "cache", "1", "10.0.0.1"]
    ports = sorted(w["ports"]["main"] for w in webs)
    shown = ", ".join(f"10.0.0.1:{p}" for p in ports[:4])
    assert lines[2].split()[:4] == ["shop", "default", "web", "6"]
    assert f"{shown}, … (+2 more)" in lines[2]

    code, out, err = await corral(env, "shop", "--json")
    assert code == 0, err
    found: list[dict[str, Any]] = json.loads(out)
    assert [(s["service"], len(s["instances"])) for s in found] == [("cache", 1), ("web", 6)]
    assert found == (await srv.client.services(app="shop"))["services"]

    code, out, err = await corral(env, "nope")
    assert code == 4 and "no application 'nope'" in err
    code, out, err = await corral(env, "shop", "-n", "team")
    assert code == 4


async def test_watch_prints_a_line_per_change(addr: tuple[ServerHarness, dict[str, str]]
                                              ) -> None:
    srv, env = addr
    await srv.client.apply(SHOP)
    await srv.reconcile()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli.main", "services", "shop", "--watch", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert [len(s["instances"]) for s in first] == [0, 0]
        await bring(srv, "cache", "running")
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert [len(s["instances"]) for s in second] == [1, 0]
        await bring(srv, "web", limit=1)  # starting and running change nothing listed
        third = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        assert [len(s["instances"]) for s in third] == [1, 1]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 130
    finally:
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def test_status_shows_what_a_service_waits_for(
        addr: tuple[ServerHarness, dict[str, str]]) -> None:
    srv, env = addr
    await srv.client.apply(app(db=svc(), api=svc(deps=["db"])))
    await srv.reconcile()
    code, out, err = await corral(env, "shop", verb="status")
    assert code == 0, err
    [api] = [line for line in out.splitlines() if " api " in line]
    assert api.rstrip().endswith("running v1: waiting for dependencies: db (0/1 healthy)")
    code, out, err = await corral(env, "shop", "--json", verb="status")
    [shop] = json.loads(out)
    rows = {r["service"]: r for r in shop["services"]}
    assert rows["api"]["waiting_for"] == ["db"] and rows["db"]["waiting_for"] == []
