"""`depends_on` and the service catalog on a real single-machine cluster, through the real
`corral` command: a Python `web` that depends on a redis `cache` (tcp health check) starts
only once the cache is healthy, finds it through `CACHE_ADDR` in its env and talks to it;
`corral services` lists both; a delete stops web before cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "depweb"
    shutil.copytree(Path(__file__).parent / "apps" / "depweb", dest)
    return dest


def spec(tmp_path: Path) -> Path:
    path = tmp_path / "deps.yaml"
    path.write_text("""
name: deps
services:
  web:
    artifact: ./depweb
    command: [python3, server.py, "${PORT_HTTP}"]
    resources: {cpu: 0.05, memory: 64MiB}
    ports: [{name: http}]
    depends_on: [cache]
  cache:
    command: [redis-server, --port, "${PORT_MAIN}", --save, "", --appendonly, "no",
              --bind, 127.0.0.1]
    resources: {cpu: 0.2, memory: 128MiB}
    ports: [{name: main}]
    health: {tcp: main, interval: 300ms, grace: 1s}
""")
    return path


def events(cluster: LocalCluster, *args: str) -> list[dict[str, Any]]:
    return list(cluster.corral_json("events", *args))


def test_web_waits_for_its_healthy_cache_and_reaches_it(cluster: LocalCluster,
                                                        tmp_path: Path,
                                                        app_dir: Path) -> None:
    result = cluster.corral("apply", "-f", str(spec(tmp_path)), "--timeout", "90s")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    insts = {i["service"]: i for i in cluster.corral_json("ps", "deps")}
    cache, web = insts["cache"], insts["web"]
    assert cache["state"] == "healthy"
    assert web["created_at"] >= cache["healthy_at"]  # created once the cache was healthy
    app_events = events(cluster, "--topic", "app", "--key", "default/deps")
    waiting = [e for e in app_events if e["type"] == "waiting"]
    assert [e["payload"]["service"] for e in waiting] == ["web"], app_events
    assert "waiting for dependencies: cache (0/1 healthy)" in waiting[0]["message"]
    assert [e["type"] for e in app_events].count("dependencies-ready") == 1

    addr = f"127.0.0.1:{cache['ports']['main']}"
    assert web["dependency_env"]["CACHE_ADDR"] == addr
    url = f"http://127.0.0.1:{web['ports']['http']}/"
    first = httpx.get(url, timeout=10).json()
    second = httpx.get(url, timeout=10).json()
    assert first == {"cache_addr": addr, "ping": "+PONG", "hits": ":1", "addrs": addr}
    assert second["hits"] == ":2"  # the same redis kept count

    listed = cluster.corral_json("services", "deps")
    assert [(s["service"], [i["id"] for i in s["instances"]]) for s in listed] == [
        ("cache", [cache["id"]]), ("web", [web["id"]])]
    table = cluster.corral("services", check=True).stdout
    assert addr in table and f"127.0.0.1:{web['ports']['http']}" in table, table

    since = max(e["index"] for e in events(cluster, "--limit", "1"))
    cluster.corral("delete", "deps", "--timeout", "60", check=True)
    stops = [e for e in events(cluster, "--since", str(since), "--topic", "instance")
             if e["type"] == "stop-requested"]
    assert [e["key"] for e in stops] == [web["id"], cache["id"]], stops
    assert stops[0]["index"] < stops[1]["index"]
    assert all(s["app"] != "deps" for s in cluster.corral_json("services"))
