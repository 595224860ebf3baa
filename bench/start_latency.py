"""Start latency: from `apply` accepted by the server to the instance's first line of
output, on a real single-machine cluster (`corral up`: server, agent, SQLite, cgroups), next
to the floor measured in the same run: a bare `subprocess` spawn of the same command,
timed to its first line.

Two figures:
- sequential: N applies, each adding one instance (scale +1), timed one at a time;
- batch: one apply creating N instances at once, each timed from the same acceptance.

Run as root: `.venv/bin/python bench/start_latency.py --runs 5 --instances 20`.
Prints a table and, with `--json`, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.client import Client
from corral.testing.cluster import local_cluster

COMMAND = ["sh", "-c", "echo ready; exec sleep 3600"]


def spec(name: str, instances: int) -> dict[str, Any]:
    return {"name": name, "services": {"s": {
        "instances": instances, "command": COMMAND,
        "resources": {"cpu": 0.01, "memory": "16MiB"},
        "restart": {"policy": "never"}}}}


def floor_once() -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(COMMAND, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.kill()
    proc.wait()
    return elapsed


async def first_lines(client: Client, app: str, want: set[str], timeout: float = 60
                      ) -> dict[str, float]:
    """instance id -> time of its first output line (agent timestamp)."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while want - set(found) and time.monotonic() < deadline:
        for inst in await client.list_instances(app=app):
            if inst["id"] in want and inst["id"] not in found and inst["state"] == "running":
                async for line in client.logs(instance=inst["id"], tail=1):
                    found[inst["id"]] = line["time"]
                    break
        await asyncio.sleep(0.002)
    if want - set(found):
        raise RuntimeError(f"instances never printed: {sorted(want - set(found))}")
    return found


async def new_ids(client: Client, app: str, known: set[str], count: int) -> set[str]:
    while True:
        ids = {i["id"] for i in await client.list_instances(app=app)} - known
        if len(ids) >= count:
            return ids
        await asyncio.sleep(0.001)


async def sequential(client: Client, n: int) -> list[float]:
    out = []
    known: set[str] = set()
    for i in range(1, n + 1):
        await client.apply(spec("seq", i))
        accepted = time.time()
        ids = await new_ids(client, "seq", known, 1)
        times = await first_lines(client, "seq", ids)
        out += [t - accepted for t in times.values()]
        known |= ids
    await client.delete_app("seq")
    return out


async def batch(client: Client, n: int) -> list[float]:
    await client.apply(spec("batch", n))
    accepted = time.time()
    ids = await new_ids(client, "batch", set(), n)
    times = await first_lines(client, "batch", ids)
    await client.delete_app("batch")
    return [t - accepted for t in times.values()]


async def wait_gone(client: Client, app: str) -> None:
    while any(a["name"] == app for a in await client.list_apps()):
        await asyncio.sleep(0.05)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the whole run")
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"floor": [], "sequential": [], "batch": []}
    per_run: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp, \
            local_cluster(Path(tmp)) as cluster:
        async def run() -> None:
            async with cluster.client() as client:
                for _ in range(args.runs):
                    floor = [floor_once() for _ in range(args.instances)]
                    seq = await sequential(client, args.instances)
                    await wait_gone(client, "seq")
                    bat = await batch(client, args.instances)
                    await wait_gone(client, "batch")
                    results["floor"] += floor
                    results["sequential"] += seq
                    results["batch"] += bat
                    per_run.append({k: statistics.median(v) for k, v in
                                    (("floor", floor), ("sequential", seq), ("batch", bat))})
        asyncio.run(run())
    summary = {
        name: {"median_ms": statistics.median(v) * 1000, "p90_ms": p90(v) * 1000,
               "samples": len(v),
               "median_of_run_medians_ms": statistics.median(r[name] for r in per_run) * 1000}
        for name, v in results.items()}
    floor = summary["floor"]["median_ms"]
    for name in ("sequential", "batch"):
        summary[name]["ratio_to_floor"] = summary[name]["median_ms"] / floor
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"start latency, apply accepted -> first output line; {args.runs} runs x "
          f"{args.instances} instances; driver: process (cgroups)")
    print(f"{'what':<12}{'median ms':>11}{'p90 ms':>10}{'x floor':>9}{'samples':>9}")
    for name, s in summary.items():
        ratio = f"{s.get('ratio_to_floor', 1.0):.1f}"
        print(f"{name:<12}{s['median_ms']:>11.1f}{s['p90_ms']:>10.1f}{ratio:>9}"
              f"{s['samples']:>9}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
