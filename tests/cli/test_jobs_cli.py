"""`corral jobs`, `corral jobs runs`, `corral jobs graph` and `corral run`: the real command,
as a child process, against the in-process server on a loopback socket, while the test
runs the controllers and plays the agent (`tests/server/jobagent.py`)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing.server import TOKEN, ServerHarness, server_harness
from tests.cli.test_services import served
from tests.server.jobagent import NODE, exit_with, job, jobs_app, pass_, start

CHAIN = jobs_app(extract=job(schedule="0 2 * * *", time_zone="Europe/Berlin"),
                 transform=job(after=["extract"], retries=1, backoff="0s"),
                 load=job(after=["transform"]))


@pytest.fixture
async def addr(tmp_path: Path) -> AsyncIterator[tuple[ServerHarness, dict[str, str]]]:
    async with server_harness(tmp_path) as srv, served(srv) as url:
        await srv.client.register_node(NODE)
        await srv.client.apply(CHAIN)
        await pass_(srv)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update(CORRAL_ADDR=url, CORRAL_TOKEN=TOKEN,
                   CORRAL_CONFIG_DIR=str(tmp_path / "cfg"), COLUMNS="200")
        yield srv, env


async def spawn(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli.main", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def corral(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await spawn(env, *args)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_jobs_lists_with_or_without_an_app_and_the_subcommands_still_work(
        addr: tuple[ServerHarness, dict[str, str]]) -> None:
    _, env = addr
    code, out, err = await corral(env, "jobs")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["APP", "JOB", "SCHEDULE/AFTER", "LAST", "RUN", "NEXT", "RUN",
                                "OK", "FAILED", "MISSED"]
    assert "0 2 * * * (Europe/Berlin)" in out and "after extract" in out
    code, out, _ = await corral(env, "jobs", "shop", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [j["job"] for j in listed] == ["extract", "load", "transform"]
    assert listed[0]["next_run"] is not None and listed[1]["next_run"] is None
    code, _, err = await corral(env, "jobs", "nope")
    assert code == 4 and "no application 'nope'" in err

    code, out, _ = await corral(env, "jobs", "graph", "shop")
    assert code == 0
    assert out == ("shop: 3 jobs in 3 levels\nlevel 0\n"
                   "  extract    schedule 0 2 * * * (Europe/Berlin)\n"
                   "level 1\n  transform  after extract\nlevel 2\n  load       after transform\n")
    code, out, _ = await corral(env, "jobs", "graph", "shop", "--dot")
    assert code == 0 and out.startswith('digraph "shop" {')
    assert '"extract" -> "transform";' in out and '"transform" -> "load";' in out

    code, out, _ = await corral(env, "jobs", "runs", "shop/extract")
    assert code == 0 and "has not run yet" in out
    code, _, err = await corral(env, "jobs", "runs", "shop")
    assert code == 2 and "expected APP/JOB" in err


async def test_run_follows_the_chain_job_through_its_retry(
        addr: tuple[ServerHarness, dict[str, str]]) -> None:
    srv, env = addr
    proc = await spawn(env, "run", "shop/transform", "--json")
    failed = False
    for _ in range(400):
        if proc.returncode is not None:
            break
        await pass_(srv)
        if await start(srv, "transform"):
            await exit_with(srv, "transform", 0 if failed else 5)
            failed = True
        await asyncio.sleep(0.02)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    answer: dict[str, Any] = json.loads(out)
    assert answer["ok"] is True
    assert [(a["number"], a["state"], a["attempt"]) for a in answer["attempts"]] == \
        [(1, "failed", 1), (2, "succeeded", 2)]
    assert answer["run"]["cause"] == "retry"

    code, out, _ = await corral(env, "jobs", "runs", "shop/transform", "--json")
    assert [(r["number"], r["cause"], r["state"], r["exit_code"]) for r in json.loads(out)] \
        == [(2, "retry", "succeeded", 0), (1, "manual", "failed", 5)]
    code, out, _ = await corral(env, "jobs", "runs", "shop/transform")
    assert code == 0 and "corral logs shop/transform/ID" in out
    # its success triggered load
    await pass_(srv)
    code, out, _ = await corral(env, "jobs", "runs", "shop/load", "--json")
    assert [(r["cause"], r["reason"]) for r in json.loads(out)] == [
        ("after", "started")]


async def test_run_exits_1_when_the_run_fails_and_detach_returns_at_once(
        addr: tuple[ServerHarness, dict[str, str]]) -> None:
    srv, env = addr
    code, out, _ = await corral(env, "run", "shop/load", "--detach", "--json")
    assert code == 0 and json.loads(out)["run"]["state"] == "pending"
    await pass_(srv)
    await start(srv, "load")
    proc = await spawn(env, "run", "shop/extract")
    for _ in range(400):
        if proc.returncode is not None:
            break
        await pass_(srv)
        if await start(srv, "extract"):
            await exit_with(srv, "extract", 3)
        await asyncio.sleep(0.02)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "shop/extract run #1 failed (exit 3): instance" in err.decode()
    assert "logs: corral logs shop/extract/" in out.decode()
    code, _, stderr = await corral(env, "run", "shop/nope")
    assert code == 4 and "has no job 'nope'" in stderr
