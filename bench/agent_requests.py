"""What the server spends on each of an agent's hot requests: server CPU per request for
the heartbeat, the long poll (with nothing new, and with a node's whole assignment) and the
status batch, served by the lean agent path (`server/api/agent_path.py`) and, in the same
run, by FastAPI (`corral server --no-agent-path`): the peer it replaced.

Per run and per path (the two interleaved), a real `corral server` (SQLite store, plain
HTTP, its own process) with `--nodes` registered nodes and one application of
`--per-node` instances per node, all placed. Then, one kind at a time, `--requests`
requests from `--concurrency` concurrent clients (the admin token, which may act for any
node); the server's CPU time (user + system, from /proc) over the phase, divided by the
requests, is the figure. Long polls ask with `wait=0`: "nothing new" from the current
index (the answer most polls get), "whole" from 0 (`changes=true`: every record of the
node). Each status batch reports `--per-node` instances of one node, alternating healthy
and unhealthy, so every report is a real write.

Run: `.venv/bin/python bench/agent_requests.py --runs 3`. Prints a table and, with
`--json`, one JSON object (medians over the runs, and each run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

KINDS = ("heartbeat", "poll, nothing new", "poll, whole", "status batch")
PATHS = ("lean", "fastapi")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


@contextlib.contextmanager
def corral_server(tmp: Path, lean: bool) -> Iterator[tuple[str, str, int]]:
    """A `corral server` child: (address, admin token, pid)."""
    port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "server", "--data-dir",
             str(tmp / "server"), "--port", str(port), "--insecure-http", "--node-ttl",
             "3600", "--log-level", "warning", "--agent-path" if lean else "--no-agent-path"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    addr = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{addr}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + log.read_text()[-4000:])
            time.sleep(0.1)
        yield addr, (tmp / "server" / "admin-token").read_text().strip(), proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _node(name: str, per_node: int) -> dict[str, Any]:
    return {"name": name, "address": "10.0.0.1",
            "capacity": {"cpu": float(per_node), "memory": per_node << 30},
            "port_range": [20000, 20000 + 4 * per_node], "drivers": {"process": ""}}


async def _ok(answer: Awaitable[httpx.Response]) -> Any:
    response = await answer
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url}: "
                           f"{response.status_code} {response.text[:300]}")
    return response.json()


async def setup(http: httpx.AsyncClient, nodes: int, per_node: int
                ) -> tuple[dict[str, int], dict[str, list[str]], int]:
    """Registers the nodes and places the application; (leases, node -> ids, index)."""
    leases = {}
    for n in range(nodes):
        name = f"n{n:04d}"
        leases[name] = (await _ok(http.post("/v1/nodes", json=_node(name, per_node))))[
            "lease_id"]
    spec = {"name": "bench", "services": {"web": {
        "instances": nodes * per_node, "command": ["sleep", "1"],
        "resources": {"cpu": 0.5, "memory": "256MiB"}, "ports": [{"name": "http"}]}}}
    await _ok(http.post("/v1/apps", json={"spec": spec}))
    deadline = time.monotonic() + 120
    while True:
        placed: dict[str, list[str]] = {}
        index = 0
        for name in leases:
            answer = await _ok(http.get(f"/v1/nodes/{name}/instances",
                                        params={"index": 0, "wait": 0}))
            placed[name] = [i["id"] for i in answer["instances"]]
            index = max(index, answer["index"])
        if sum(map(len, placed.values())) == nodes * per_node:
            return leases, placed, index
        if time.monotonic() > deadline:
            raise RuntimeError("the application was not placed within 120 s")
        await asyncio.sleep(0.5)


async def phase(requests: int, concurrency: int,
                make: Callable[[int], Awaitable[Any]]) -> float:
    """Sends `requests` requests, `concurrency` at a time; the wall time."""
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < requests:
            await make(n)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def one_path(addr: str, token: str, pid: int, args: argparse.Namespace
                   ) -> dict[str, dict[str, float]]:
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=addr, headers={"authorization": f"Bearer {token}"},
                                 limits=limits, timeout=60) as http:
        leases, placed, index = await setup(http, args.nodes, args.per_node)
        names = sorted(leases)
        flips: dict[str, str] = {}

        def heartbeat(n: int) -> Awaitable[Any]:
            name = names[n % len(names)]
            return _ok(http.put(f"/v1/nodes/{name}/heartbeat",
                                params={"lease_id": leases[name]}))

        def poll_nothing(n: int) -> Awaitable[Any]:
            return _ok(http.get(f"/v1/nodes/{names[n % len(names)]}/instances",
                                params={"index": index, "wait": 0, "changes": "true"}))

        def poll_whole(n: int) -> Awaitable[Any]:
            return _ok(http.get(f"/v1/nodes/{names[n % len(names)]}/instances",
                                params={"index": 0, "wait": 0, "changes": "true"}))

        locks = {name: asyncio.Lock() for name in names}

        async def status(n: int) -> None:
            name = names[n % len(names)]
            # Every node's instances go running once, then flip between healthy and
            # unhealthy: each report a real change (one batch per node at a time, so
            # they arrive in the order sent).
            async with locks[name]:
                state = flips[name] = {None: "running", "healthy": "unhealthy"}.get(
                    flips.get(name), "healthy")
                answer = await _ok(http.put(f"/v1/nodes/{name}/status", json={"reports": [
                    {"id": iid, "state": state, "pid": 1000} for iid in placed[name]]}))
            if not all(r.get("changed") for r in answer["results"]):
                raise RuntimeError(f"a status report changed nothing: {answer}")

        # every node reports running first, outside the measured phases
        for n in range(len(names)):
            await status(n)
        figures = {}
        for kind, make in zip(KINDS, (heartbeat, poll_nothing, poll_whole, status),
                              strict=True):
            before = cpu_seconds(pid)
            wall = await phase(args.requests, args.concurrency, make)
            cpu = cpu_seconds(pid) - before
            figures[kind] = {"cpu_us_per_request": round(cpu / args.requests * 1e6, 1),
                             "requests_per_second": round(args.requests / wall)}
        return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, dict[str, dict[str, float]]]] = []
    for _ in range(args.runs):
        this: dict[str, dict[str, dict[str, float]]] = {}
        for path in PATHS:
            with tempfile.TemporaryDirectory(prefix="corral-agentreq-") as tmp, \
                    corral_server(Path(tmp), path == "lean") as (addr, token, pid):
                this[path] = asyncio.run(one_path(addr, token, pid, args))
        runs.append(this)
    median: dict[str, dict[str, dict[str, float]]] = {}
    for path in PATHS:
        median[path] = {kind: {figure: statistics.median(r[path][kind][figure] for r in runs)
                               for figure in runs[0][path][kind]} for kind in KINDS}
    # None: too few requests for the CPU clock's 10 ms ticks to see the peer's time
    ratios = {kind: round(statistics.median(
        r["lean"][kind]["cpu_us_per_request"] / r["fastapi"][kind]["cpu_us_per_request"]
        for r in runs), 2) if all(r["fastapi"][kind]["cpu_us_per_request"] for r in runs)
        else None for kind in KINDS}
    return {"nodes": args.nodes, "per_node": args.per_node, "requests": args.requests,
            "concurrency": args.concurrency, "runs": args.runs, "median": median,
            "lean_over_fastapi_cpu": ratios, "each_run": runs}


def show(result: dict[str, Any]) -> None:
    print(f"{result['nodes']} nodes x {result['per_node']} instances, "
          f"{result['requests']} requests per kind, {result['concurrency']} at a time, "
          f"medians of {result['runs']} runs (server CPU per request)")
    print(f"{'request':<20} {'lean us':>9} {'fastapi us':>11} {'lean/fastapi':>13} "
          f"{'lean req/s':>11} {'fastapi req/s':>14}")
    for kind in KINDS:
        lean, ref = result["median"]["lean"][kind], result["median"]["fastapi"][kind]
        print(f"{kind:<20} {lean['cpu_us_per_request']:>9.0f} "
              f"{ref['cpu_us_per_request']:>11.0f} "
              f"{result['lean_over_fastapi_cpu'][kind] or float('nan'):>13.2f} "
              f"{lean['requests_per_second']:>11.0f} {ref['requests_per_second']:>14.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--per-node", type=int, default=20)
    parser.add_argument("--requests", type=int, default=4000, help="per kind")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
