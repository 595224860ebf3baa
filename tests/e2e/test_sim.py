"""`corral sim` against a real server process: the hollow nodes register with their labels,
take the instances an apply places on them and report them running; Ctrl-C ends it with
a summary. Also `bench/c1m.py --quick`, run as a correctness check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.client import Client, ClientConfig
from corral.testing.cluster import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout  # a hang guard, not a claim about speed
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClientConfig]:
    port = free_port()
    data = tmp_path / "server"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "server", "--data-dir", str(data),
         "--port", str(port), "--insecure-http"], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        addr = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{addr}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # ended: fail below rather than wait
        wait_for(up, "the server")
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        yield ClientConfig(addr=addr, token=(data / "admin-token").read_text().strip())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def api(config: ClientConfig, call: Any) -> Any:
    import asyncio

    async def run() -> Any:
        async with Client(config) as client:
            return await call(client)
    return asyncio.run(run())


def test_sim_nodes_register_take_instances_and_report_them_running(
        server: ClientConfig, tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_ADDR": server.addr, "CORRAL_TOKEN": server.token,
           "CORRAL_CONFIG_DIR": str(tmp_path / "config")}
    sim = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "sim", "--nodes", "4", "--labels",
         "zone=a,b", "--cpu", "2", "--memory", "4GiB", "--interval", "0.5", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        nodes = wait_for(lambda: len(got := api(server, lambda c: c.list_nodes())) == 4
                         and got, "four sim nodes")
        assert {n["name"]: n["labels"]["zone"] for n in nodes} == {
            "sim-00000": "a", "sim-00001": "b", "sim-00002": "a", "sim-00003": "b"}
        assert {n["capacity"]["cpu"] for n in nodes} == {2.0}
        api(server, lambda c: c.apply({"name": "plan", "services": {"web": {
            "instances": 6, "command": ["sleep", "1"], "ports": [{"name": "http"}],
            "resources": {"cpu": 1, "memory": "1GiB"}, "placement": {"spread": "zone"}}}}))

        def all_running() -> list[dict[str, Any]] | None:
            insts = api(server, lambda c: c.list_instances(app="plan"))
            return insts if len(insts) == 6 and {i["state"] for i in insts} == {
                "running"} else None
        insts = wait_for(all_running, "six instances running")
        zones = {"sim-00000": "a", "sim-00001": "b", "sim-00002": "a", "sim-00003": "b"}
        per_zone = [sum(1 for i in insts if zones[i["node"]] == z) for z in "ab"]
        assert per_zone == [3, 3]
    finally:
        sim.send_signal(signal.SIGINT)
        out, err = sim.communicate(timeout=60)
    assert sim.returncode == 0, err.decode()
    figures = json.loads(out)
    assert figures["registered"] == 4 and figures["running"] == 6
    assert figures["verdict"]["ok"]


@pytest.mark.bench
def test_c1m_quick_is_correct(tmp_path: Path) -> None:
    """`bench/c1m.py --quick` (1,000 hollow nodes, 20,000 instances) as a correctness
    check: every instance placed once, no node over capacity, no port twice on a node,
    all running. No timing is asserted."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "c1m.py"), "--quick",
                             "--json", "--timeout", "1200"],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert figures["ok"] and figures["check_agents"]["ok"] and figures["check_server"]["ok"]
    assert figures["check_agents"]["instances"] == 20_000
