"""`corral sim --nodes N [--labels zone=a,b,c] [--cpu 4] [--memory 8GiB] [--server URL]`:
hollow nodes for capacity planning, against a running server.

Runs N simulated agents (`testing/hollow.py`) in this process until Ctrl-C: each registers
with the given capacity and labels, heartbeats, long-polls its assignments and reports every
instance placed on it `starting` then `running` (and `stopped` when asked), without running
anything. So `corral apply` against the real server shows where a workload would land, how
full the nodes get, what fits nowhere and why, and how fast the control plane keeps up.

It talks to the server with the CLI's own address and token (`CORRAL_ADDR`, `CORRAL_TOKEN`,
`CORRAL_CACERT`, or the config `corral up` wrote); `--server` overrides the address. The
nodes are registered with the admin token, like `corral agent --server`, not joined. After
Ctrl-C they stop heartbeating, so the server marks them `down` one heartbeat TTL later and
replaces their instances, as it would for machines that died: simulate against a cluster
kept for that, not against production.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import typer

from corral.cli.output import EXIT_UNREACHABLE, EXIT_USAGE, console, die, print_json
from corral.client import load_config
from corral.gc_tuning import tune_for_large_heaps
from corral.model.units import parse_size
from corral.testing.hollow import FleetSpec, HollowFleet, parse_labels, summary

__all__ = ["sim"]


def sim(
    nodes: int = typer.Option(..., "--nodes", min=1, max=20_000,
                              help="How many simulated nodes."),
    labels: list[str] = typer.Option(
        [], "--labels", help="KEY=V1,V2,...: node i gets value i mod count (repeatable)."),
    cpu: float = typer.Option(4.0, "--cpu", help="Cores per node."),
    memory: str = typer.Option("8GiB", "--memory", help="Memory per node."),
    prefix: str = typer.Option("sim", "--prefix", help="Node names: PREFIX-00000, ..."),
    first: int = typer.Option(0, "--first", min=0, help="Index of the first node."),
    server: str = typer.Option("", "--server", help="Server URL (default: CORRAL_ADDR)."),
    per_instance_status: bool = typer.Option(
        False, "--per-instance-status",
        help="One status request per instance transition, as agents without the batched "
             "endpoint send them."),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between progress lines."),
    as_json: bool = typer.Option(False, "--json", help="Print the final figures as JSON."),
) -> None:
    """Run hollow nodes (simulated agents, no processes) against a server."""
    try:
        spec = FleetSpec(count=nodes, prefix=prefix, first=first, cpu=cpu,
                         memory=parse_size(memory), labels=parse_labels(labels),
                         batch_status=not per_instance_status)
    except ValueError as exc:
        die(str(exc), EXIT_USAGE)
    if cpu <= 0:
        die("--cpu must be above 0", EXIT_USAGE)
    config = load_config()
    if server:
        config = dataclasses.replace(config, addr=server)
    fleet = HollowFleet(config, spec)

    async def run() -> None:
        task = asyncio.create_task(fleet.run())
        started = time.monotonic()
        try:
            while not task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), interval)
                if not as_json:
                    s = fleet.stats
                    console.print(f"{time.monotonic() - started:6.0f}s  {s.registered}/{nodes} "
                                  f"nodes registered, {s.running} running, {s.stopped} "
                                  f"stopped, {s.errors} errors")
            task.result()  # only ends by raising (a refused registration)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fleet.close()

    try:
        tune_for_large_heaps()  # the fleet keeps every node's assignments (gc_tuning.py)
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # a registration the server refused
        die(f"hollow nodes stopped: {exc}", EXIT_UNREACHABLE)
    figures = summary(fleet)
    if as_json:
        print_json(figures)
        return
    verdict = figures["verdict"]
    console.print(f"{figures['registered']} nodes, {figures['running']} instances reported "
                  f"running, {figures['stopped']} stopped; requests p50 {figures['p50_ms']} "
                  f"ms, p99 {figures['p99_ms']} ms; placements "
                  f"{'consistent' if verdict['ok'] else 'INCONSISTENT: ' + str(verdict)}")
