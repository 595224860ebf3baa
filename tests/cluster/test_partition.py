"""Partition safety (issue 4): a host cut off from the server stops its instances on its
own once the heartbeat TTL has passed, while the server marks it down after the same TTL
and replaces them elsewhere; so after TTL + grace there are never more running copies of
a service than asked for, counted from the processes on every host. After healing, the
cluster converges: the node is ready again and exactly the desired copies run."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.testing.hosts import AgentSpec, NetnsCluster
from tests.cluster.test_multihost import app_copies, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

TTL = 3.0
GRACE = 2.0  # the agent checks once a second; stopping takes a moment


def copies(cluster: NetnsCluster) -> int:
    return sum(app_copies(cluster.processes(h.name)) for h in cluster.agents)


def test_a_partitioned_host_never_leaves_extra_copies_and_the_cluster_converges(
        make_cluster: Callable[..., NetnsCluster], web_spec: Callable[..., Path]) -> None:
    cluster = make_cluster([AgentSpec(labels={"zone": z}, cpu="1") for z in ("a", "b", "c")],
                           node_ttl=TTL)
    cluster.corral("apply", "-f", str(web_spec("safe", 3, cpu=0.4)), "--timeout", "60s",
                   check=True)
    before = cluster.wait_for(lambda: running(cluster, "safe", 3), 30, "3 running")
    victim, cut = Counter(i["node"] for i in before).most_common(1)[0]
    assert cut >= 1
    cluster.partition(victim)
    cut_at = time.monotonic()
    overlap = []
    # Watch every host's processes for a while: after TTL + grace, never more than 3.
    while time.monotonic() - cut_at < 4 * TTL + GRACE:
        n = copies(cluster)
        if time.monotonic() - cut_at > TTL + GRACE and n > 3:
            overlap.append((round(time.monotonic() - cut_at, 1), n))
        time.sleep(0.2)
    assert overlap == [], f"more than 3 copies after TTL + grace: {overlap}"
    assert app_copies(cluster.processes(victim)) == 0  # it stopped them on its own
    cluster.wait_for(lambda: running(cluster, "safe", 3), 30, "replacements running")
    assert cluster.nodes()[victim]["state"] == "down"

    cluster.heal(victim)
    cluster.wait_for(lambda: cluster.nodes()[victim]["state"] == "ready", 30,
                     f"{victim} ready again")
    after = cluster.wait_for(lambda: running(cluster, "safe", 3), 30, "3 running")
    time.sleep(TTL)  # long enough for any stale copy to show up
    assert copies(cluster) == 3
    per_host = Counter(i["node"] for i in after)
    for host in cluster.agents:
        assert app_copies(cluster.processes(host.name)) == per_host.get(host.name, 0)
    # The partitioned agent reports, once it gets through, why it stopped its instances.
    cluster.wait_for(lambda: any(e["type"] == "stopped" and "lost contact" in e["message"]
                                 for e in cluster.corral_json("events", "--topic",
                                                              "instance")),
                     45, "the stop report of the partitioned agent")
