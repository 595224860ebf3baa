"""`corral restart APP[/SERVICE] [-n NS] [--detach] [--timeout 5m] [--json]`

A rolling restart without a spec change: every instance of the service (or of every
service) is replaced by the deployment rules, start before stop (`update.max_parallel`,
`max_surge`, `min_healthy_time`, deadlines). No new version. Follows the deployments like
`corral apply` (exit 1 if one fails).
"""

from __future__ import annotations

import time
from typing import Any

import typer

from corral.cli.common import call, split_target
from corral.cli.follow import Outcome, finish, follow, wait_seconds
from corral.cli.output import EXIT_USAGE, console, die
from corral.client import Client

__all__ = ["restart"]


def restart(
    target: str = typer.Argument(..., help="APP or APP/SERVICE."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not wait."),
    timeout: str = typer.Option("5m", help="How long to wait for the deployments."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replace every instance of an application (or one service), rolling."""
    app, service, extra = split_target(target)
    if extra is not None:
        die(f"expected APP or APP/SERVICE, got {target!r}", EXIT_USAGE)
    wait_s = wait_seconds(timeout)

    async def run(client: Client) -> tuple[dict[str, Any], Outcome | None]:
        started = time.time() - 1
        result: dict[str, Any] = await client.restart(app, service=service,
                                                      namespace=namespace)
        if not as_json:
            console.print(f"{app}: rolling restart of {', '.join(result['services'])}")
        if detach:
            return result, None
        return result, await follow(client, app, namespace, result["deployments"],
                                    timeout=wait_s, since=started, show=not as_json)

    result, outcome = call(run)
    finish(result, outcome, as_json=as_json, summary=f"[green]{app} restarted[/green]")
