"""`corral ps` latency with 1,000 instances: the `GET /v1/instances` call and the whole
`corral ps --json` command (a new Python process, as a user runs it), median of several runs.

A real `corral server` (SQLite store, plain HTTP, its own process) and `--nodes` hollow
nodes (`corral.testing.hollow`, their own process: the real agent protocol, no processes
started) that take the instances and report them running, so every record is what a real
cluster holds (node, ports, state history). One application, `--services` services of
`--instances / --services` instances each. Timed once every instance runs:
- `GET /v1/instances` (what `corral ps` asks), one keep-alive client, `--runs` times;
- `corral ps --json` and `corral ps` (the table) as child processes, `--runs` times each;
- the floor of the command: `corral --help` (interpreter and CLI start-up, no request).

Run: `.venv/bin/python bench/ps_latency.py --runs 7 --instances 1000`.
Prints a table and, with `--json`, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from events import corral_server  # the same `corral server` child (bench/ is no package)


def spec(services: int, per_service: int) -> dict[str, Any]:
    return {"name": "pslat", "services": {f"s{i:02d}": {
        "instances": per_service, "command": ["sleep", "infinity"],
        "resources": {"cpu": 0.02, "memory": "16MiB"}, "ports": [{"name": "http"}]}
        for i in range(services)}}


async def populate(addr: str, token: str, services: int, per_service: int,
                   timeout: float) -> float:
    """Apply the app and wait until every instance runs; seconds it took."""
    total = services * per_service
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=addr, headers=headers, timeout=120) as http:
        start = time.monotonic()
        (await http.post("/v1/apps", json={"spec": spec(services, per_service)})
         ).raise_for_status()
        while True:
            resp = await http.get("/v1/instances", params={"app": "pslat"})
            resp.raise_for_status()
            running = sum(1 for i in resp.json() if i["state"] == "running")
            if running >= total:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{running}/{total} instances running after {timeout}s")
            await asyncio.sleep(0.5)


async def time_api(addr: str, token: str, runs: int) -> tuple[list[float], int, int]:
    """Each `GET /v1/instances` (after one warm-up): seconds, instances, response bytes."""
    headers = {"authorization": f"Bearer {token}"}
    times: list[float] = []
    async with httpx.AsyncClient(base_url=addr, headers=headers, timeout=120) as http:
        resp = await http.get("/v1/instances")
        for _ in range(runs):
            start = time.perf_counter()
            resp = await http.get("/v1/instances")
            resp.raise_for_status()
            body = resp.json()
            times.append(time.perf_counter() - start)
    return times, len(body), len(resp.content)


def time_command(args: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "corral.cli.main", *args], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 1),
            "min_ms": round(min(values) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    per_service = args.instances // args.services
    with corral_server(tmp) as (addr, token):
        hollow = subprocess.Popen(
            [sys.executable, "-m", "corral.testing.hollow", "--server", addr, f"--token={token}",
             "--nodes", str(args.nodes), "--interval", "5"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "hollow.log", "wb"),  # noqa: SIM115
            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            took = asyncio.run(populate(addr, token, args.services, per_service, 300))
            api, count, size = asyncio.run(time_api(addr, token, args.runs))
            env = {**os.environ, "CORRAL_ADDR": addr, "CORRAL_TOKEN": token,
                   "CORRAL_CONFIG_DIR": str(tmp / "config")}
            as_json = time_command(["ps", "--json"], env, args.runs)
            table = time_command(["ps"], env, args.runs)
            floor = time_command(["--help"], env, args.runs)
        finally:
            hollow.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                hollow.wait(timeout=30)
            if hollow.poll() is None:
                hollow.kill()
                hollow.wait()
    return {"instances": count, "nodes": args.nodes, "runs": args.runs,
            "cpus": os.cpu_count(), "populate_seconds": round(took, 1),
            "response_bytes": size, "api": ms(api), "ps_json": ms(as_json),
            "ps_table": ms(table), "cli_floor": ms(floor)}


def show(r: dict[str, Any]) -> None:
    print(f"corral ps latency: {r['instances']:,} instances on {r['nodes']} hollow nodes, "
          f"median of {r['runs']} runs ({r['cpus']} CPUs); response "
          f"{r['response_bytes'] / 1e6:.2f} MB")
    for name, key in (("GET /v1/instances", "api"), ("corral ps --json", "ps_json"),
                      ("corral ps (table)", "ps_table"), ("corral --help (floor)",
                                                          "cli_floor")):
        v = r[key]
        print(f"  {name:<24} {v['median_ms']:>8.1f} ms  (min {v['min_ms']:.1f}, "
              f"max {v['max_ms']:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-ps-") as tmp:
        result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
