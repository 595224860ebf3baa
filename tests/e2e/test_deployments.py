"""Deployments on a real single-machine cluster, through the real `corral` command: a
rolling update of 3 instances with an http health check from v1 to v2, the answers
switching from v1 to v2 while healthy capacity never drops below 3; then a v3 that never
becomes healthy fails at its healthy_deadline, `corral apply` says why and exits 1, and
`auto_revert` brings v2's spec back without touching the v2 instances; `history`,
`status`, `deployment list`, a rolling `restart` and a `scale` on the way."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "versioned"
    shutil.copytree(Path(__file__).parent / "apps" / "versioned", dest)
    return dest


def spec(tmp_path: Path, version: str, *, healthy: bool = True) -> Path:
    path = tmp_path / f"{version}.yaml"
    path.write_text(f"""
name: roll
services:
  web:
    instances: 3
    artifact: ./versioned
    command: [python3, server.py, "${{PORT_HTTP}}"]
    env: {{VERSION: {version}, HEALTHY: "{'yes' if healthy else 'no'}"}}
    resources: {{cpu: 0.05, memory: 64MiB}}
    ports: [{{name: http}}]
    health: {{http: /healthz, interval: 300ms, timeout: 1s, grace: 0s, failures: 2,
              on_unhealthy: ignore}}
    update: {{max_parallel: 1, max_surge: 1, min_healthy_time: 1s, healthy_deadline: 12s,
              auto_revert: true}}
""")
    return path


def live(cluster: LocalCluster) -> list[dict[str, Any]]:
    return [i for i in cluster.corral_json("ps", "roll") if i["desired"] == "run"]


def brief(cluster: LocalCluster) -> str:
    """One line per instance, stopped ones too: what a long failure message keeps readable
    (a CI log shows its head and tail only)."""
    return "".join(f"{i['id']} v{i['version']} g{i['generation']} {i['desired']} "
                   f"{i['state']} {i['updated_at']:.1f} {i['reason']}\n"
                   for i in cluster.corral_json("ps", "roll", "-a"))


class Watcher(threading.Thread):
    """Samples the process table and asks every live instance for its version, until
    stopped: what a load balancer over the healthy instances would have seen."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.healthy: list[int] = []  # healthy live instances, per sample
        self.seen: list[set[str]] = []  # versions answering, per sample

    def run(self) -> None:
        # The API straight away, not `corral ps` (a CLI start-up per sample): under load a
        # CLI sample took seconds, and samples that far apart could miss the mixed window.
        api = httpx.Client(base_url=self.cluster.addr, verify=self.cluster.ssl_context(),
                           headers={"Authorization": f"Bearer {self.cluster.token}"},
                           timeout=5)
        with api:
            while not self.stop.is_set():
                self.sample(api)
                time.sleep(0.1)

    def sample(self, api: httpx.Client) -> None:
        insts = [i for i in api.get("/v1/instances", params={"app": "roll"}).json()
                 if i["desired"] == "run"]
        healthy = [i for i in insts if i["state"] == "healthy"]
        self.healthy.append(len(healthy))
        versions = set()
        for inst in healthy:
            try:  # it may have been told to stop since the sample: that is no failure
                answer = httpx.get(f"http://127.0.0.1:{inst['ports']['http']}/", timeout=2)
                versions.add(answer.text.strip())
            except httpx.HTTPError:
                pass
        self.seen.append(versions)


def test_rolling_update_then_a_bad_release_reverts(cluster: LocalCluster, tmp_path: Path,
                                                    app_dir: Path) -> None:
    first = cluster.corral("apply", "-f", str(spec(tmp_path, "v1")), "--timeout", "90s")
    assert first.returncode == 0, first.stdout + first.stderr + cluster.logs()
    assert {i["state"] for i in live(cluster)} == {"healthy"}

    watcher = Watcher(cluster)
    watcher.start()
    update = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "apply", "-f", str(spec(tmp_path, "v2")),
         "--timeout", "120s"], env=cluster.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    out, err = update.communicate(timeout=180)
    time.sleep(0.5)
    watcher.stop.set()
    watcher.join(timeout=30)
    assert update.returncode == 0, out + err + cluster.logs()
    assert "roll version 2 is running" in out, out
    assert min(watcher.healthy) >= 3, watcher.healthy  # start before stop
    assert max(watcher.healthy) <= 4, watcher.healthy  # max_surge 1
    assert watcher.seen[0] == {"v1"} and watcher.seen[-1] == {"v2"}, watcher.seen
    assert {"v1", "v2"} in watcher.seen, watcher.seen  # rolling, not all at once
    v2 = {i["id"] for i in live(cluster)}
    assert len(v2) == 3 and {i["version"] for i in live(cluster)} == {2}

    [status] = cluster.corral_json("status", "roll")
    dep = status["services"][0]["deployment"]
    assert (dep["version"], dep["status"], dep["healthy"]) == (2, "successful", 3)

    bad = cluster.corral("apply", "-f", str(spec(tmp_path, "v3", healthy=False)),
                         "--timeout", "120s")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "(version 3) failed: instance" in bad.stderr, bad.stderr
    assert "not healthy within healthy_deadline 12s" in bad.stderr, bad.stderr
    assert "auto-revert started: version 4" in bad.stderr, bad.stderr

    def reverted() -> list[dict[str, Any]] | None:
        deps = cluster.corral_json("deployment", "list", "roll")
        return deps if deps[-1]["status"] == "successful" else None

    deps = cluster.wait_for(reverted, 60, "the auto-revert deployment to succeed")
    assert [(d["version"], d["cause"], d["status"]) for d in deps] == [
        (1, "apply", "successful"), (2, "apply", "successful"), (3, "apply", "failed"),
        (4, "auto-revert", "successful")]
    # The v2 instances ran the spec version 4 brought back: kept, not restarted.
    cluster.wait_for(lambda: {i["id"] for i in live(cluster)} == v2, 30,
                     "only the v2 instances left")
    for inst in live(cluster):
        assert httpx.get(f"http://127.0.0.1:{inst['ports']['http']}/",
                         timeout=5).text.strip() == "v2"
    table = cluster.corral("status", "roll", check=True).stdout
    assert "successful v4 (auto-revert)" in table, table

    history = cluster.corral_json("history", "roll")
    assert [(v["version"], v["cause"], [d["status"] for d in v["deployments"]])
            for v in history] == [(1, "apply", ["successful"]), (2, "apply", ["successful"]),
                                  (3, "apply", ["failed"]), (4, "auto-revert", ["successful"])]
    assert "auto-revert" in cluster.corral("history", "roll", check=True).stdout

    restarted = cluster.corral("restart", "roll/web", "--timeout", "120s")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    after = live(cluster)
    assert len(after) == 3 and not {i["id"] for i in after} & v2
    assert {i["version"] for i in after} == {4} and {i["generation"] for i in after} == {1}

    scaled = cluster.corral("scale", "roll/web", "4", "--timeout", "60s")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr + "\n" + brief(
        cluster) + cluster.logs()
    assert "roll/web: 3 -> 4 instances (version 5)" in scaled.stdout, scaled.stdout
    bigger = live(cluster)
    assert len(bigger) == 4 and {i["id"] for i in after} < {i["id"] for i in bigger}
    assert cluster.corral_json("history", "roll")[-1]["cause"] == "scale"
    assert cluster.corral("scale", "roll", "2").returncode == 2  # no service named
    cluster.corral("delete", "roll", check=True)
