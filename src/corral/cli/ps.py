"""`corral ps [APP] [--node N] [--state S] [-a] [--json]`: every instance in the cluster,
one table; `corral ps --processes ID`: the processes inside one instance, from its cgroup,
as its agent sees them (pid on the host, parent, user, cpu, resident memory, command)."""

from __future__ import annotations

import time
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import ago, print_json, table
from corral.client import Client
from corral.model.units import format_size

__all__ = ["ROW_COLUMNS", "ps", "row"]

ROW_COLUMNS = ("ID", "APP", "SERVICE", "VER", "NODE", "ADDRESS", "PORTS", "PID", "STATE",
               "HEALTH", "CPU", "MEM", "RESTARTS", "UP", "REASON")
_UP_STATES = frozenset({"running", "healthy", "unhealthy"})


def _ports(ports: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(ports.items()))


def row(i: dict[str, Any], now: float) -> tuple[Any, ...]:
    """One instance as the table shows it (`ROW_COLUMNS`): cpu in percent of one core,
    uptime only while its process runs."""
    mem = format_size(i["usage_memory"]) if i.get("usage_memory") is not None else None
    cpu = f"{i['usage_cpu'] * 100:.0f}%" if i.get("usage_cpu") is not None else None
    up = ago(i.get("started_at"), now) if i["state"] in _UP_STATES else None
    return (i["id"], i["app"], i["service"], i["version"], i["node"], i["address"],
            _ports(i["ports"]), i["pid"], i["state"], i["health"], cpu, mem, i["restarts"],
            up, i["reason"][:60])


def ps(
    app: str = typer.Argument(None, help="Only this application."),
    node: str = typer.Option(None, "--node", help="Only instances on this node."),
    state: str = typer.Option(None, "--state", help="Only these states, comma-separated "
                              "(running,healthy); stopped and lost ones too if named."),
    processes: str = typer.Option(None, "--processes", metavar="ID",
                                  help="The processes inside instance ID instead."),
    show_all: bool = typer.Option(False, "-a", "--all", help="Include stopped and lost."),
    namespace: str = typer.Option(None, "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List instances: node, address, ports, pid, state, health, cpu, memory, restarts."""
    if processes:
        _processes(processes, as_json)
        return

    async def run(client: Client) -> list[dict[str, Any]]:
        return list(await client.list_instances(app=app, node=node, namespace=namespace,
                                                all=show_all, state=state))

    items = call(run)
    if as_json:
        print_json(items)
        return
    now = time.time()
    table(ROW_COLUMNS, [row(i, now) for i in items])


def _processes(instance_id: str, as_json: bool) -> None:
    async def run(client: Client) -> dict[str, Any]:
        answer: dict[str, Any] = await client.instance_processes(instance_id)
        return answer

    answer = call(run)
    if as_json:
        print_json(answer["processes"])
        return
    table(("PID", "PPID", "USER", "CPU", "RSS", "COMMAND"),
          [(p["pid"], p["ppid"], p["user"], f"{p['cpu']:.1f}%", format_size(p["rss"]),
            p["command"]) for p in answer["processes"]],
          title=f"{answer['app']}/{answer['service']} instance {answer['instance']} on "
                f"{answer['node']} (main pid {answer['pid']})")
