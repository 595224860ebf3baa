"""`corral scale APP/SERVICE N [-n NS] [--detach] [--timeout 5m] [--json]`

Sets a service's instance count as a new application version (cause `scale`), without a
spec file: instances are added or stopped at once, with no deployment (a scale replaces
nothing). Then follows the service like `corral apply` until N instances are ready.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from corral.cli.common import call, split_target
from corral.cli.follow import Outcome, finish, follow, wait_seconds
from corral.cli.output import EXIT_USAGE, console, die
from corral.client import Client

__all__ = ["scale"]


def scale(
    target: str = typer.Argument(..., help="APP/SERVICE."),
    instances: int = typer.Argument(..., min=0, help="How many instances to run."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not wait."),
    timeout: str = typer.Option("5m", help="How long to wait for the instances."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Set how many instances of a service run."""
    app, service, extra = split_target(target)
    if service is None or extra is not None:
        die(f"expected APP/SERVICE, got {target!r}", EXIT_USAGE)
    wait_s = wait_seconds(timeout)

    async def run(client: Client) -> tuple[dict[str, Any], Outcome | None]:
        started = time.time() - 1
        result: dict[str, Any] = await client.scale(app, service=service, instances=instances,
                                                    namespace=namespace)
        if not as_json:
            if result["changed"]:
                console.print(f"{app}/{service}: {result['from']} -> {result['to']} instances "
                              f"(version {result['version']})")
            else:
                console.print(f"{app}/{service} already has {instances} instances")
        if detach or not result["changed"]:
            return result, None
        return result, await follow(client, app, namespace, [], timeout=wait_s,
                                    since=started, show=not as_json)

    result, outcome = call(run)
    finish(result, outcome, as_json=as_json, summary=f"[green]{app}/{service} scaled[/green]")
