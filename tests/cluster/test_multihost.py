"""Corral across hosts (issue 4): 1 server + 3 agents, each a network namespace on one
bridge. Instances spread over the agents and are reached from other hosts at their node's
address; a host that dies is detected within a few heartbeat TTLs and its instances are
replaced elsewhere, with events telling the story."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.testing.hosts import AgentSpec, NetnsCluster
from corral.testing.netns import Proc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TTL = 3.0


def three_agents(make_cluster: Callable[..., NetnsCluster]) -> NetnsCluster:
    # One core each and 0.4-core instances: at most two fit a node, so the bin-packing
    # scheduler has to use every agent.
    return make_cluster([AgentSpec(labels={"zone": z}, cpu="1") for z in ("a", "b", "c")],
                        node_ttl=TTL)


def live(cluster: NetnsCluster, app: str) -> list[dict[str, Any]]:
    return list(cluster.api(lambda c: c.list_instances(app=app)))


def running(cluster: NetnsCluster, app: str, count: int) -> list[dict[str, Any]] | None:
    """The instances of `app`, once exactly `count` are wanted and all of them run."""
    insts = [i for i in live(cluster, app) if i["desired"] == "run"]
    if len(insts) == count and all(i["state"] == "running" for i in insts):
        return insts
    return None


def app_copies(procs: list[Proc]) -> int:
    """Copies of the web app among a host's processes (not its sandbox, not its shim)."""
    return sum(1 for p in procs
               if Path(p.argv[0]).name.startswith("python") and p.argv[1:2] == ("server.py",))


def answer(cluster: NetnsCluster, inst: dict[str, Any], where: str) -> dict[str, Any] | None:
    resp = cluster.http_get(f"http://{inst['address']}:{inst['ports']['http']}/", where=where)
    return dict(resp.json()) if resp.status_code == 200 else None


def other_host(cluster: NetnsCluster, node: str) -> str:
    """An agent host that is not `node`: the request crosses the bridge."""
    return next(h.name for h in cluster.agents if h.name != node)


def test_six_instances_spread_over_three_agents_reachable_from_other_hosts(
        make_cluster: Callable[..., NetnsCluster], web_spec: Callable[..., Path]) -> None:
    cluster = three_agents(make_cluster)
    cluster.corral("apply", "-f", str(web_spec("spread", 6, cpu=0.4)), "--timeout", "60s",
                   check=True)
    insts = cluster.wait_for(lambda: running(cluster, "spread", 6), 30, "6 running")
    per_node = Counter(i["node"] for i in insts)
    assert per_node == {"host1": 2, "host2": 2, "host3": 2}
    nodes = cluster.nodes()
    for inst in insts:
        assert inst["address"] == nodes[inst["node"]]["address"]
        where = other_host(cluster, inst["node"])
        got = cluster.wait_for(lambda i=inst, w=where: answer(cluster, i, w), 20,
                               f"{inst['id']} to answer from {where}")
        assert got == {"instance": inst["id"], "node": inst["node"],
                       "host_ip": inst["address"]}
    # Also from the server's host, and as many app processes on each host as it has
    # instances.
    assert answer(cluster, insts[0], "host0") is not None
    for host in cluster.agents:
        assert app_copies(cluster.processes(host.name)) == per_node[host.name]


def test_a_dead_host_is_detected_and_its_instances_replaced_elsewhere(
        make_cluster: Callable[..., NetnsCluster], web_spec: Callable[..., Path]) -> None:
    cluster = three_agents(make_cluster)
    cluster.corral("apply", "-f", str(web_spec("failover", 3, cpu=0.4)), "--timeout", "60s",
                   check=True)
    before = cluster.wait_for(lambda: running(cluster, "failover", 3), 30, "3 running")
    victim, _ = Counter(i["node"] for i in before).most_common(1)[0]
    lost = {i["id"] for i in before if i["node"] == victim}
    killed_at = time.monotonic()
    cluster.kill(victim)
    assert cluster.processes(victim) == []

    cluster.wait_for(lambda: cluster.nodes()[victim]["state"] == "down", 4 * TTL,
                     f"{victim} down")
    detected = time.monotonic() - killed_at
    after = cluster.wait_for(lambda: running(cluster, "failover", 3), 30,
                             "3 running again")
    replaced = time.monotonic() - killed_at
    assert {i["node"] for i in after} <= {h.name for h in cluster.agents} - {victim}
    assert not lost & {i["id"] for i in after}
    states = {i["id"]: i["state"] for i in cluster.corral_json("ps", "failover", "-a")}
    assert {states[i] for i in lost} == {"lost"}
    for inst in after:
        assert cluster.wait_for(lambda i=inst: answer(cluster, i, other_host(cluster,
                                                                             i["node"])),
                                20, f"{inst['id']} to answer")
    for host in cluster.agents:
        expected = sum(1 for i in after if i["node"] == host.name)
        assert app_copies(cluster.processes(host.name)) == expected

    node_events = cluster.corral_json("events", "--topic", "node", "--key", victim)
    assert "down" in [e["type"] for e in node_events], node_events
    instance_events = cluster.corral_json("events", "--topic", "instance")
    assert {e["key"] for e in instance_events if e["type"] == "lost"} == lost
    print(f"\n{victim} killed with {len(lost)} instances: down after {detected:.1f}s, "
          f"all replaced and running after {replaced:.1f}s (node TTL {TTL:g}s)")
