"""Start latency: from `apply` accepted by the server to the instance's first line of
output, on a real single-machine cluster (`corral up`: server, agent, SQLite, cgroups), next
to the floor measured in the same run: a bare `subprocess` spawn of the same command,
timed to its first line.

Two figures:
- sequential: N applies, each adding one instance (scale +1), timed one at a time;
- batch: one apply creating N instances at once, each timed from the same acceptance;
for each driver (`--drivers process,sandbox,oci`), plus the memory (PSS) of the
per-instance supervisor processes while the batch runs.

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


def spec(name: str, instances: int, driver: str) -> dict[str, Any]:
    return {"name": name, "services": {"s": {
        "instances": instances, "command": COMMAND,
        "resources": {"cpu": 0.01, "memory": "16MiB"},
        "isolation": {"driver": driver},
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


async def sequential(client: Client, n: int, driver: str) -> list[float]:
    out = []
    known: set[str] = set()
    for i in range(1, n + 1):
        await client.apply(spec("seq", i, driver))
        accepted = time.time()
        ids = await new_ids(client, "seq", known, 1)
        times = await first_lines(client, "seq", ids)
        out += [t - accepted for t in times.values()]
        known |= ids
    await client.delete_app("seq")
    return out


async def batch(client: Client, n: int, driver: str) -> tuple[list[float], list[int]]:
    await client.apply(spec("batch", n, driver))
    accepted = time.time()
    ids = await new_ids(client, "batch", set(), n)
    times = await first_lines(client, "batch", ids)
    memory = supervisor_memory(ids)
    await client.delete_app("batch")
    return [t - accepted for t in times.values()], memory


def supervisor_memory(ids: set[str]) -> list[int]:
    """Proportional set size (bytes) of each instance's supervisor (`corral.agent.shim`)
    process: what one more instance costs the node beyond the instance itself."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if not any(a.endswith(b"shim.py") for a in cmdline) or \
                    not any(i.encode() in a for a in cmdline for i in ids):
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out.append(int(line.split()[1]) * 1024)
        except OSError:
            continue
    return out


async def wait_gone(client: Client, app: str) -> None:
    while any(a["name"] == app for a in await client.list_apps()):
        await asyncio.sleep(0.05)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the whole run")
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--drivers", default="process,sandbox,oci")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    drivers = [d for d in args.drivers.split(",") if d]
    results: dict[str, list[float]] = {"floor": []}
    per_run: dict[str, list[float]] = {"floor": []}
    memory: dict[str, list[int]] = {}
    for d in drivers:
        for kind in ("sequential", "batch"):
            results[f"{d} {kind}"] = []
            per_run[f"{d} {kind}"] = []
        memory[d] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp, \
            local_cluster(Path(tmp)) as cluster:
        async def run() -> None:
            async with cluster.client() as client:
                for _ in range(args.runs):
                    floor = [floor_once() for _ in range(args.instances)]
                    results["floor"] += floor
                    per_run["floor"].append(statistics.median(floor))
                    for d in drivers:
                        seq = await sequential(client, args.instances, d)
                        await wait_gone(client, "seq")
                        bat, mem = await batch(client, args.instances, d)
                        await wait_gone(client, "batch")
                        memory[d] += mem
                        for kind, values in (("sequential", seq), ("batch", bat)):
                            results[f"{d} {kind}"] += values
                            per_run[f"{d} {kind}"].append(statistics.median(values))
        asyncio.run(run())
    floor = statistics.median(results["floor"])
    summary: dict[str, Any] = {
        name: {"median_ms": statistics.median(v) * 1000, "p90_ms": p90(v) * 1000,
               "samples": len(v), "ratio_to_floor": statistics.median(v) / floor,
               "median_of_run_medians_ms": statistics.median(per_run[name]) * 1000}
        for name, v in results.items()}
    summary["supervisor_pss_kib"] = {
        d: {"median": statistics.median(m) / 1024, "samples": len(m)} if m else None
        for d, m in memory.items()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"start latency, apply accepted -> first output line; {args.runs} runs x "
          f"{args.instances} instances")
    print(f"{'what':<22}{'median ms':>11}{'p90 ms':>10}{'x floor':>9}{'samples':>9}")
    for name, s in summary.items():
        if name == "supervisor_pss_kib":
            continue
        print(f"{name:<22}{s['median_ms']:>11.1f}{s['p90_ms']:>10.1f}"
              f"{s['ratio_to_floor']:>9.1f}{s['samples']:>9}")
    for d, m in summary["supervisor_pss_kib"].items():
        if m:
            print(f"supervisor PSS per instance ({d}): {m['median']:.0f} KiB "
                  f"({m['samples']} samples)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
