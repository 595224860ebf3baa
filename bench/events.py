"""Event stream throughput: events/s delivered to concurrent followers of
`GET /v1/events?follow=true` while a writer commits events as fast as it can, next to the
writer's own rate (the ceiling: a follower cannot get events faster than they are made).

A real `corral server` (SQLite store, plain HTTP, its own process). The writer registers
`--writers` nodes and, on each, toggles cordon/uncordon in a loop (one store transaction
and one `node` event per call), all loops concurrently, until `--events` are committed.
The followers are `--followers` NDJSON streams (`topic=node`, from the index before the
writer starts) in one process of their own; each counts what it receives until the
writer's last index, resuming with `since=N` if it ever gets `fell-behind`.

Per run: the writer alone (the ceiling), then the writer with the followers. Figures:
the writer's rate alone and with followers; each follower's delivered rate (events / time
from the writer's start to the follower receiving the last event); the slowest
follower's rate as a fraction of the writer's rate in the same run and of the ceiling;
fell-behind count. Medians over `--runs`.

Run: `.venv/bin/python bench/events.py --runs 5 --events 3000 --followers 10`.
Prints a table and, with `--json`, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

NODE = {"address": "10.0.0.1", "capacity": {"cpu": 4.0, "memory": 8 << 30},
        "port_range": [20000, 20100], "drivers": {"process": ""}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def corral_server(tmp: Path) -> Iterator[tuple[str, str]]:
    """A `corral server` child (plain HTTP, SQLite in `tmp`): (address, admin token).
    Nodes outlive the bench without heartbeats (`--node-ttl 3600`)."""
    port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "server", "--data-dir",
             str(tmp / "server"), "--port", str(port), "--insecure-http", "--node-ttl",
             "3600", "--log-level", "warning"],
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
        yield addr, (tmp / "server" / "admin-token").read_text().strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- writer ---------------------------------------------------------------------------------

async def latest_index(http: httpx.AsyncClient) -> int:
    resp = await http.get("/v1/events", params={"limit": 1})
    resp.raise_for_status()
    events = resp.json()
    return int(events[-1]["index"]) if events else 0


async def write(http: httpx.AsyncClient, nodes: dict[str, bool], count: int
                ) -> tuple[float, float, int]:
    """Commit `count` node events over the nodes' concurrent loops: (start, end, the
    highest index written). `nodes`: name -> cordoned now (kept across calls: a cordon
    of a cordoned node changes nothing and writes no event)."""
    left = count
    end = 0.0

    async def loop(name: str) -> None:
        nonlocal left, end
        while left > 0:
            left -= 1
            verb = "uncordon" if nodes[name] else "cordon"
            resp = await http.post(f"/v1/nodes/{name}/{verb}")
            resp.raise_for_status()
            nodes[name] = not nodes[name]
            end = max(end, time.time())  # the last commit's answer, not the loops' ends

    start = time.time()
    await asyncio.gather(*(loop(n) for n in nodes))
    return start, end, await latest_index(http)


# --- followers (a process of their own) -------------------------------------------------------

class Follower:
    """One follower's tally, updated as lines arrive (`last_at`: when the newest came)."""

    def __init__(self, since: int) -> None:
        self.received = 0
        self.fell_behind = 0
        self.last = since
        self.last_at = 0.0
        self.ready = asyncio.Event()

    async def run(self, addr: str, token: str) -> None:
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=addr, headers=headers,
                                     timeout=httpx.Timeout(10, read=None)) as http:
            while True:
                params = {"follow": "true", "since": self.last, "topic": "node"}
                async with http.stream("GET", "/v1/events", params=params) as resp:
                    resp.raise_for_status()
                    self.ready.set()
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        item = json.loads(line)
                        if item.get("type") == "fell-behind":
                            self.fell_behind += 1
                            self.last = int(item["index"])
                            break
                        self.received += 1
                        self.last = int(item["index"])
                        self.last_at = time.time()


async def followers_main(addr: str, token: str, since: int, count: int) -> None:
    """stdin: the writer's last index, once known; stdout: "ready", then one JSON line."""
    loop = asyncio.get_running_loop()
    followers = [Follower(since) for _ in range(count)]
    tasks = [asyncio.create_task(f.run(addr, token)) for f in followers]
    await asyncio.gather(*(f.ready.wait() for f in followers))
    print("ready", flush=True)
    until = int(await loop.run_in_executor(None, sys.stdin.readline))
    while any(f.last < until for f in followers):
        # Polled: the time that counts is `last_at`, taken when the line arrived.
        for task in tasks:
            if task.done():
                task.result()  # a follower that failed: raise, the bench sees no result
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps([{"received": f.received, "done_at": f.last_at,
                       "fell_behind": f.fell_behind} for f in followers]), flush=True)


# --- one run ----------------------------------------------------------------------------------

async def one_run(addr: str, token: str, nodes: dict[str, bool], events: int,
                  followers: int) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=len(nodes) + 2)
    async with httpx.AsyncClient(base_url=addr, headers=headers, timeout=30,
                                 limits=limits) as http:
        start, end, _ = await write(http, nodes, events)
        alone = events / (end - start)
        since = await latest_index(http)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--followers-process", addr, token, str(since),
             str(followers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"followers did not start: {line!r}")
            start, end, highest = await write(http, nodes, events)
            proc.stdin.write(f"{highest}\n")
            proc.stdin.flush()
            got = json.loads(await asyncio.to_thread(proc.stdout.readline))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    writer = events / (end - start)
    rates = [f["received"] / (f["done_at"] - start) for f in got]
    return {"writer_alone": alone, "writer": writer, "slowest": min(rates),
            "median_follower": statistics.median(rates),
            "delivered_total": sum(f["received"] for f in got) / (
                max(f["done_at"] for f in got) - start),
            "received_min": min(f["received"] for f in got),
            "received_max": max(f["received"] for f in got),
            "complete": all(f["received"] == events for f in got),
            "fell_behind": sum(f["fell_behind"] for f in got)}


async def bench(addr: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    names = {f"bench-{i}": False for i in range(args.writers)}
    async with httpx.AsyncClient(base_url=addr, timeout=30,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        for name in names:
            (await http.post("/v1/nodes", json={**NODE, "name": name})).raise_for_status()
    runs = [await one_run(addr, token, names, args.events, args.followers)
            for _ in range(args.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in
           ("writer_alone", "writer", "slowest", "median_follower", "delivered_total")}
    return {"runs": args.runs, "events": args.events, "followers": args.followers,
            "writers": args.writers, "cpus": os.cpu_count(),
            "writer_alone_per_s": round(med["writer_alone"]),
            "writer_with_followers_per_s": round(med["writer"]),
            "follower_median_per_s": round(med["median_follower"]),
            "follower_slowest_per_s": round(med["slowest"]),
            "delivered_total_per_s": round(med["delivered_total"]),
            "slowest_vs_writer": round(med["slowest"] / med["writer"], 3),
            "slowest_vs_ceiling": round(med["slowest"] / med["writer_alone"], 3),
            "every_follower_got_every_event": all(r["complete"] for r in runs),
            "fell_behind": sum(r["fell_behind"] for r in runs),
            "per_run": [{k: round(v, 1) if isinstance(v, float) else v
                         for k, v in r.items()} for r in runs]}


def show(r: dict[str, Any]) -> None:
    print(f"Event stream: {r['followers']} followers, {r['events']} events per run, "
          f"{r['writers']} concurrent writer loops, median of {r['runs']} runs "
          f"({r['cpus']} CPUs)")
    rows = [("writer alone (ceiling)", f"{r['writer_alone_per_s']:,} events/s"),
            ("writer with followers", f"{r['writer_with_followers_per_s']:,} events/s"),
            ("per follower, median", f"{r['follower_median_per_s']:,} events/s"),
            ("per follower, slowest", f"{r['follower_slowest_per_s']:,} events/s"),
            ("delivered, all followers", f"{r['delivered_total_per_s']:,} events/s"),
            ("slowest / writer (same run)", f"{r['slowest_vs_writer']:.2f}"),
            ("slowest / ceiling", f"{r['slowest_vs_ceiling']:.2f}"),
            ("every follower got every event", str(r["every_follower_got_every_event"])),
            ("fell-behind (resumed)", str(r["fell_behind"]))]
    for name, value in rows:
        print(f"  {name:<32} {value}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--followers-process":
        addr, token, since, count = sys.argv[2:6]
        asyncio.run(followers_main(addr, token, int(since), int(count)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--followers", type=int, default=10)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-events-") as tmp, \
            corral_server(Path(tmp)) as (addr, token):
        result = asyncio.run(bench(addr, token, args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
