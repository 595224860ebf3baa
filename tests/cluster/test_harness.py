"""The multi-host harness itself: hosts come up as registered nodes at their own
addresses, partitions cut a host off and heal, hosts and the server die and come back, and
nothing is ever left behind, also after a run that was killed outright."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.agent.cgroups import CgroupRoot, detect
from corral.testing.hosts import AGENT_HTTP_PORT, SERVER_PORT, AgentSpec, NetnsCluster
from corral.testing.netns import RUN_DIR, list_netns, sweep
from corral.testing.procs import gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def cgroup_dirs(parent: str) -> list[Path]:
    root = detect()
    assert isinstance(root, CgroupRoot)
    return [d for d in root.parent_dirs(parent) if d.exists()]


def running(cluster: NetnsCluster, app: str) -> list[dict[str, Any]]:
    return [i for i in cluster.corral_json("ps", app) if i["state"] == "running"]


def leftovers(prefix: str, parents: list[str], root: Path) -> list[str]:
    found = [f"netns {n}" for n in list_netns() if n.startswith(f"{prefix}-")]
    found += [f"cgroup {d}" for p in parents for d in cgroup_dirs(p)]
    found += [f"runc state {RUN_DIR / p}" for p in parents if (RUN_DIR / p).exists()]
    found += [f"dir {root}"] if root.exists() else []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if prefix.encode() + b"-" in cmdline or f"{root}/".encode() in cmdline:
            found.append(f"process {pid}: {cmdline!r}")
    return found


def test_hosts_register_at_their_addresses_and_cleanup_leaves_nothing(
        netns_ok: None, web_spec: Callable[..., Path]) -> None:
    # One instance fits per agent: each agent gets cgroups whose removal is then checked.
    specs = [AgentSpec(labels={"zone": z}, cpu="0.1") for z in ("a", "b")]
    with NetnsCluster(specs) as cluster:
        nodes = cluster.nodes()
        assert {n: (v["state"], v["address"], v["labels"]) for n, v in nodes.items()} == {
            "host1": ("ready", "10.77.1.2", {"zone": "a"}),
            "host2": ("ready", "10.77.1.3", {"zone": "b"})}
        # The CLI in the client namespace sees the same cluster.
        assert {n["name"] for n in cluster.corral_json("nodes")} == {"host1", "host2"}
        cluster.corral("apply", "-f", str(web_spec("clean", 2)), "--timeout", "60s",
                       check=True)
        insts = cluster.wait_for(lambda: len(running(cluster, "clean")) == 2 and
                                 running(cluster, "clean"), 30, "2 running instances")
        assert {i["node"] for i in insts} == {"host1", "host2"}
        prefix, root = cluster.prefix, cluster.root
        parents = [h.cgroup_parent for h in cluster.agents]
        assert all(cgroup_dirs(p) for p in parents)
        pids = [p.pid for h in cluster.hosts for p in cluster.processes(h.index)]
        instance_pids = [i["pid"] for i in insts]
        assert set(instance_pids) <= set(pids)
        assert len(pids) >= 5  # server, 2 agents, 2 instances (and their sandboxes)
    assert leftovers(prefix, parents, root) == []
    assert [p for p in pids if not gone(p)] == []


def test_partition_cuts_a_host_off_and_heal_brings_it_back(
        make_cluster: Callable[..., NetnsCluster]) -> None:
    cluster = make_cluster(2)
    host1, host2 = cluster.agents
    server = cluster.server.address
    assert cluster.can_connect(host1.address, AGENT_HTTP_PORT, where="host0")
    cluster.partition("host1")
    assert not cluster.can_connect(host1.address, AGENT_HTTP_PORT, where="host0")
    assert not cluster.can_connect(server, SERVER_PORT, where="host1")
    assert cluster.can_connect(host2.address, AGENT_HTTP_PORT, where="host0")
    # Corral sees it too: the cut-off node misses its heartbeats.
    cluster.wait_for(lambda: cluster.nodes()["host1"]["state"] == "down", 20,
                     "host1 down while partitioned")
    assert cluster.nodes()["host2"]["state"] == "ready"
    cluster.heal("host1")
    cluster.wait_for(lambda: cluster.can_connect(host1.address, AGENT_HTTP_PORT,
                                                 where="host0"), 10, "host1 reachable")
    assert cluster.can_connect(server, SERVER_PORT, where="host1")
    cluster.wait_nodes_ready(["host1"], timeout=30)


def test_kill_a_host_and_the_server_then_bring_them_back(
        make_cluster: Callable[..., NetnsCluster]) -> None:
    cluster = make_cluster(1)
    assert [p for p in cluster.processes("host1") if "agent" in p.argv]
    cluster.kill("host1")
    assert cluster.processes("host1") == []
    cluster.wait_for(lambda: cluster.nodes()["host1"]["state"] == "down", 20, "host1 down")
    cluster.start_agent("host1")  # waits until the node is ready again
    cluster.kill_server()
    assert not cluster.server_healthy()
    assert cluster.processes("host0") == []
    cluster.restart_server()
    cluster.wait_nodes_ready(timeout=30)
    cluster.restart_agent("host1")
    assert cluster.nodes()["host1"]["state"] == "ready"


def test_sweep_removes_what_a_killed_run_left(netns_ok: None) -> None:
    # A run SIGKILLed with its cluster up: nothing of its own cleanup ran.
    script = ("import os\n"
              "from corral.testing.hosts import NetnsCluster\n"
              "c = NetnsCluster(1)\nc.start()\n"
              "print(c.prefix, c.root, c.agents[0].cgroup_parent, c.agents[0].proc.pid,"
              " flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == -9, done.stdout + done.stderr
    prefix, root, parent, agent_pid = done.stdout.split()
    try:
        assert not gone(int(agent_pid))
        assert len(leftovers(prefix, [parent], Path(root))) > 3
    finally:
        removed = sweep(Path(tempfile.gettempdir()))
    assert f"{prefix}-h1" in removed and root in removed
    assert leftovers(prefix, [parent], Path(root)) == []
    assert gone(int(agent_pid))
