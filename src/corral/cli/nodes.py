"""`corral nodes [--json]`: every node, its state and allocated vs capacity."""

from __future__ import annotations

from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import ago, print_json, table
from corral.client import Client
from corral.model.units import format_size

__all__ = ["nodes"]


def nodes(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List nodes."""

    async def run(client: Client) -> list[dict[str, Any]]:
        return list(await client.list_nodes())

    items = call(run)
    if as_json:
        print_json(items)
        return
    table(("NAME", "ADDRESS", "STATE", "CPU (USED/ALLOC/CAP)", "MEMORY (USED/ALLOC/CAP)",
           "INSTANCES",
           "DRIVERS", "LABELS", "AGE"),
          [(n["name"], n["address"], n["state"],
            f"{n['used']['cpu']:g}/{n['allocated']['cpu']:g}/{n['capacity']['cpu']:g}",
            f"{format_size(n['used']['memory'])}/{format_size(n['allocated']['memory'])}/"
            f"{format_size(n['capacity']['memory'])}",
            n["allocated"]["instances"],
            ",".join(sorted(d for d, why in n["drivers"].items() if not why)) or
            n["default_driver"],
            ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
            ago(n["registered_at"])) for n in items])
