"""Failover: kill a host running K instances and time how long until all K replacements
run elsewhere, on the network-namespace harness (`corral.testing.hosts`): a real server
and real agents on their own addresses, the host killed the way a machine dies (every
process of its namespace SIGKILLed, its link left up but silent).

Each trial kills the agent host with the most instances of the service, measures the time
to `down` (detection) and to all replacements `running` (recovery), then starts the host
again, empty, for the next trial. Reports medians with the heartbeat TTL used, beside the
peers' default detection times.

Run as root: `.venv/bin/python bench/failover.py --trials 5 --ttl 3`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from corral.testing.hosts import AgentSpec, NetnsCluster

WEB = Path(__file__).resolve().parent.parent / "tests" / "cluster" / "apps" / "web"

# Published defaults, for context (time from a node dying to its work being rescheduled):
PEERS = {
    "Nomad (heartbeat TTL >= 10 s + 10 s grace)": "~20-30 s",
    "Kubernetes (40 s node-monitor-grace + 300 s eviction toleration)": "~5 min 40 s",
    "Marathon on Mesos (agent ping timeout 75 s x 5 + reregistration)": "~6 min",
}


def spec(dir: Path, instances: int) -> Path:
    path = dir / "failover.yaml"
    path.write_text(f"""
name: failover
services:
  web:
    instances: {instances}
    artifact: ./web
    command: [python3, server.py, "${{PORT_HTTP}}"]
    resources: {{cpu: 0.25, memory: 32MiB}}
    ports: [{{name: http}}]
    on_disconnect: keep
""")
    return path


def running(cluster: NetnsCluster, count: int) -> list[dict[str, Any]] | None:
    insts = [i for i in cluster.api(lambda c: c.list_instances(app="failover"))
             if i["desired"] == "run"]
    if len(insts) == count and all(i["state"] == "running" for i in insts):
        return insts
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=3.0, help="server --node-ttl (s)")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="corral-failover-") as tmp:
        shutil.copytree(WEB, Path(tmp) / "web")
        agents = [AgentSpec(cpu="2") for _ in range(args.agents)]
        with NetnsCluster(agents, node_ttl=args.ttl) as cluster:
            cluster.corral("apply", "-f", str(spec(Path(tmp), args.instances)),
                           "--timeout", "120s", check=True)
            cluster.wait_for(lambda: running(cluster, args.instances), 60, "all running")
            for _ in range(args.trials):
                before = cluster.wait_for(lambda: running(cluster, args.instances), 60,
                                          "all running")
                victim, k = Counter(i["node"] for i in before).most_common(1)[0]
                t0 = time.monotonic()
                cluster.kill(victim)
                cluster.wait_for(lambda v=victim: cluster.nodes()[v]["state"] == "down",
                                 20 * args.ttl, "down")
                detected = time.monotonic() - t0
                cluster.wait_for(lambda v=victim: (r := running(cluster, args.instances))
                                 is not None and v not in {i["node"] for i in r},
                                 60, "replacements running")
                recovered = time.monotonic() - t0
                results.append({"k": k, "detected_s": detected, "recovered_s": recovered})
                cluster.start_agent(victim)  # back, empty, for the next trial
                cluster.wait_nodes_ready()
    summary = {
        "ttl_s": args.ttl, "trials": results,
        "median_detected_s": statistics.median(r["detected_s"] for r in results),
        "median_recovered_s": statistics.median(r["recovered_s"] for r in results),
        "median_k": statistics.median(r["k"] for r in results), "peers": PEERS,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"failover on {args.agents} netns agents, node TTL {args.ttl:g}s, "
          f"{args.trials} trials")
    for r in results:
        print(f"  killed a host with {r['k']:.0f} instances: down after "
              f"{r['detected_s']:.1f}s, all replacements running after {r['recovered_s']:.1f}s")
    print(f"median: detection {summary['median_detected_s']:.1f}s, recovery "
          f"{summary['median_recovered_s']:.1f}s")
    for peer, figure in PEERS.items():
        print(f"  peer default: {peer}: {figure}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
