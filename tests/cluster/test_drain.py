"""`corral node drain` across hosts (issue 4): the node's instances move to other hosts,
`update.max_parallel` at a time, each replacement running before its old instance stops,
so the service never runs fewer copies than asked; then the node is `ineligible`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.testing.hosts import AgentSpec, NetnsCluster
from tests.cluster.test_multihost import running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def test_drain_moves_instances_off_without_dropping_capacity(
        make_cluster: Callable[..., NetnsCluster], web_spec: Callable[..., Path]) -> None:
    cluster = make_cluster([AgentSpec(cpu="2") for _ in range(3)], node_ttl=3.0)
    cluster.corral("apply", "-f", str(web_spec("moving", 4, cpu=0.25)), "--timeout", "60s",
                   check=True)
    before = cluster.wait_for(lambda: running(cluster, "moving", 4), 30, "4 running")
    victim = before[0]["node"]
    on_victim = {i["id"] for i in before if i["node"] == victim}
    low = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            insts = cluster.api(lambda c: c.list_instances(app="moving"))
            n = sum(1 for i in insts if i["state"] == "running")
            if n < 4:
                low.append(n)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        node = cluster.corral_json("node", "drain", victim, "--timeout", "90s")
    finally:
        stop.set()
        watcher.join(5)
    assert node["state"] == "ineligible"
    after = cluster.wait_for(lambda: running(cluster, "moving", 4), 30, "4 running")
    assert victim not in {i["node"] for i in after}
    assert low == [], f"fewer than 4 running during the drain: {low}"
    events = cluster.corral_json("events", "--topic", "instance")
    migrating = [e for e in events if e["type"] == "migrating"]
    assert {e["key"] for e in migrating} == on_victim
    assert "drained" in [e["type"] for e in cluster.corral_json("events", "--topic", "node")]
