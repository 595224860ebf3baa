"""`corral ps [APP] [--node N] [-a] [--json]`: every instance in the cluster, one table."""

from __future__ import annotations

from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import ago, print_json, table
from corral.client import Client
from corral.model.units import format_size

__all__ = ["ps"]


def _ports(ports: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(ports.items()))


def ps(
    app: str = typer.Argument(None, help="Only this application."),
    node: str = typer.Option(None, "--node", help="Only instances on this node."),
    show_all: bool = typer.Option(False, "-a", "--all", help="Include stopped and lost."),
    namespace: str = typer.Option(None, "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List instances: node, pid, state, ports, restarts."""

    async def run(client: Client) -> list[dict[str, Any]]:
        return list(await client.list_instances(app=app, node=node, namespace=namespace,
                                                all=show_all))

    items = call(run)
    if as_json:
        print_json(items)
        return
    rows = []
    for i in items:
        mem = format_size(i["usage_memory"]) if i.get("usage_memory") is not None else None
        cpu = f"{i['usage_cpu'] * 100:.0f}%" if i.get("usage_cpu") is not None else None
        rows.append((i["id"], i["app"], i["service"], i["version"], i["node"], i["address"],
                     i["pid"], i["state"], i["health"], cpu, mem, _ports(i["ports"]),
                     i["restarts"], ago(i.get("started_at")), i["reason"][:60]))
    table(("ID", "APP", "SERVICE", "VER", "NODE", "ADDRESS", "PID", "STATE", "HEALTH", "CPU",
           "MEM", "PORTS", "RESTARTS", "UP", "REASON"), rows)
