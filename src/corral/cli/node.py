"""`corral node drain|cordon|uncordon|revoke NODE`: take a node out of service and back.

`drain` moves the node's instances elsewhere (replacements first, `update.max_parallel` at a
time per service) and waits until none is left and the node is `ineligible`, with
progress; `--deadline 30m` stops whatever is left after that long; `--detach` returns at
once. `cordon` stops new placements only; `uncordon` makes the node eligible again (and
cancels a drain). `revoke` withdraws a joined node's identity: its agent is refused at once,
the node turns `down` and its instances are replaced; the name can join again (a machine
that lost its data dir, or one that must never come back).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import EXIT_FAILED, EXIT_USAGE, console, die, err_console, print_json
from corral.client import Client
from corral.model.units import parse_duration

__all__ = ["app"]

app = typer.Typer(help="Drain, cordon, uncordon or revoke a node.", no_args_is_help=True)


def _show(node: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(node)
    else:
        console.print(f"node {node['name']}: {node['state']}")


@app.command()
def drain(
    name: str = typer.Argument(..., help="Node name."),
    deadline: str = typer.Option(None, "--deadline",
                                 help="Stop what is left after this long (30m, 1h)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not wait."),
    timeout: str = typer.Option("1h", "--timeout", help="How long to wait."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Move every instance off a node, then make it ineligible."""
    try:
        limit = parse_duration(deadline) if deadline else None
        wait_s = parse_duration(timeout)
    except ValueError as exc:
        die(str(exc), EXIT_USAGE)

    async def run(client: Client) -> dict[str, Any]:
        node: dict[str, Any] = await client.drain_node(name, limit)
        end = time.monotonic() + wait_s
        last = -1
        while not detach and node["state"] == "draining" and time.monotonic() < end:
            left = node["allocated"]["instances"]
            if left != last and not as_json:
                err_console.print(f"draining {name}: {left} instance(s) left")
                last = left
            await asyncio.sleep(0.5)
            node = await client.get_node(name)
        return node

    node = call(run)
    _show(node, as_json)
    if not detach and node["state"] == "draining":
        raise SystemExit(EXIT_FAILED)


@app.command()
def cordon(name: str = typer.Argument(..., help="Node name."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """No new placements on a node; its instances stay."""
    _show(call(lambda c: c.cordon_node(name)), as_json)


@app.command()
def uncordon(name: str = typer.Argument(..., help="Node name."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Make a node eligible for placements again (cancels a drain)."""
    _show(call(lambda c: c.uncordon_node(name)), as_json)


@app.command()
def revoke(name: str = typer.Argument(..., help="Node name."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Withdraw a joined node's identity (it must join again with a new token)."""
    answer: dict[str, Any] = call(lambda c: c.revoke_node(name))
    if as_json:
        print_json(answer)
    else:
        console.print(f"node {name}: identity revoked; its agent must join again")
