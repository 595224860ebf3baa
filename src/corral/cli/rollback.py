"""`corral rollback APP[/SERVICE] [--to VERSION] [-n NS] [--detach] [--timeout 5m] [--json]`

Applies a stored version's spec again as a new version (`corral history` lists them): the
whole application's, or with `/SERVICE` only that service's. Current instance counts are
kept. Without `--to`, the newest earlier version that differs. Then follows the
deployments like `corral apply` (exit 1 if one fails).
"""

from __future__ import annotations

import time
from typing import Any

import typer

from corral.cli.common import call, split_target
from corral.cli.follow import Outcome, finish, follow, wait_seconds
from corral.cli.output import EXIT_USAGE, console, die
from corral.client import Client

__all__ = ["rollback"]


def rollback(
    target: str = typer.Argument(..., help="APP or APP/SERVICE."),
    to: int = typer.Option(None, "--to", help="Version to go back to (default: the newest "
                                             "earlier one that differs)."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not wait."),
    timeout: str = typer.Option("5m", help="How long to wait for the deployments."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Apply an earlier version of an application (or one service) again."""
    app, service, extra = split_target(target)
    if extra is not None:
        die(f"expected APP or APP/SERVICE, got {target!r}", EXIT_USAGE)
    wait_s = wait_seconds(timeout)

    async def run(client: Client) -> tuple[dict[str, Any], Outcome | None]:
        started = time.time() - 1
        result: dict[str, Any] = await client.rollback(app, service=service, version=to,
                                                       namespace=namespace)
        if not as_json:
            what = f"{app}/{service}" if service else app
            if result["changed"]:
                console.print(f"{what}: back to version {result['rolled_back_to']}'s spec as "
                              f"version {result['version']}")
            else:
                console.print(f"{what} already runs version {result['rolled_back_to']}'s "
                              "spec: nothing to do")
        if detach or not result["changed"]:
            return result, None
        return result, await follow(client, app, namespace, result["deployments"],
                                    timeout=wait_s, since=started, show=not as_json)

    result, outcome = call(run)
    finish(result, outcome, as_json=as_json,
           summary=f"[green]{app} version {result['version']} is running[/green]")
