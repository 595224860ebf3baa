"""Limits enforced by the kernel on a real cluster, seen the way a user sees them: the
event stream says `oom-killed`, a fork bomb stays inside its pids limit while the node
keeps working, and `corral ps` shows each instance's cpu and memory from its cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e


def apply(cluster: LocalCluster, tmp_path: Path, name: str, body: str, *,
          ok: bool = True) -> None:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(body)
    result = cluster.corral("apply", "-f", str(spec), "--timeout", "60s")
    assert (result.returncode == 0) == ok, result.stdout + result.stderr


def instances(cluster: LocalCluster, app: str) -> list[dict]:  # type: ignore[type-arg]
    return list(cluster.corral_json("ps", app, "-a"))


def test_memory_hog_is_oom_killed_and_the_event_says_so(cluster: LocalCluster,
                                                        tmp_path: Path) -> None:
    apply(cluster, tmp_path, "hog", """
name: hog
services:
  eat:
    command: [python3, -c, "b = bytearray(200 * 1024 * 1024); import time; time.sleep(60)"]
    resources: {cpu: 0.5, memory: 64MiB}
    restart: {policy: never}
""", ok=False)
    inst = cluster.wait_for(lambda: [i for i in instances(cluster, "hog")
                                     if i["state"] == "failed"], 60, "the OOM kill")[0]
    assert "oom-killed" in inst["reason"]
    events = cluster.corral_json("events", "--topic", "instance", "--key", inst["id"])
    assert any(e["type"] == "exited" and "oom-killed" in e["message"] for e in events)
    cluster.corral("delete", "hog", check=True)


def test_fork_bomb_stops_at_the_pids_limit_and_the_node_stays_healthy(
        cluster: LocalCluster, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "bomb", """
name: bomb
services:
  forks:
    command:
      - python3
      - -c
      - |
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(120)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("fork refused after", n, e.errno, flush=True)
        time.sleep(120)
    resources: {cpu: 0.2, memory: 256MiB, pids: 32}
    restart: {policy: never}
""")
    lines = cluster.wait_for(
        lambda: cluster.corral("logs", "bomb", check=True).stdout.count("fork refused"), 60,
        "the pids limit")
    assert lines == 1
    log = cluster.corral("logs", "bomb", check=True).stdout
    assert " 11" in log  # EAGAIN
    [inst] = instances(cluster, "bomb")
    assert inst["state"] == "running"
    assert len(Path(f"/sys/fs/cgroup/pids/{cluster.cgroup_parent}/{inst['id']}/cgroup.procs")
               .read_text().split()) <= 32
    # the node still works: another application starts and answers
    apply(cluster, tmp_path, "after", """
name: after
services:
  ok:
    command: [sh, -c, "echo alive; sleep 60"]
    resources: {cpu: 0.05, memory: 16MiB}
""")
    assert "alive" in cluster.corral("logs", "after", check=True).stdout
    cluster.corral("delete", "bomb", check=True)
    cluster.corral("delete", "after", check=True)


def test_ps_shows_cpu_and_memory_from_cgroups(cluster: LocalCluster, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "busy", """
name: busy
services:
  spin:
    command: [python3, -c, "b = bytearray(40 * 1024 * 1024)\\nwhile True: pass"]
    resources: {cpu: 0.3, memory: 128MiB}
""")
    inst = cluster.wait_for(
        lambda: [i for i in instances(cluster, "busy")
                 if (i["usage_cpu"] or 0) > 0.05 and (i["usage_memory"] or 0) > 30 << 20],
        60, "usage to be reported")[0]
    assert inst["usage_cpu"] < 0.3 * 1.5  # the quota holds (generous bound)
    table = cluster.corral("ps", "busy", check=True).stdout
    assert "MiB" in table and "%" in table
    nodes = cluster.corral_json("nodes")
    # The node's figure is a later sample than the instance's: it holds at least the
    # 40 MiB the instance allocated, not necessarily the very bytes of the earlier sample.
    assert nodes[0]["used"]["memory"] >= 30 << 20
    cluster.corral("delete", "busy", check=True)
