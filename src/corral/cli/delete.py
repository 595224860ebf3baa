"""`corral delete APP [-n NS] [--detach] [--json]`: stop every instance, then forget the
application. Waits until it is gone unless `--detach`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import EXIT_FAILED, console, err_console, print_json
from corral.client import ApiError, Client

__all__ = ["delete"]


def delete(
    app: str = typer.Argument(..., help="Application name."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not wait."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for every instance to stop."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Delete an application and stop all its instances."""

    async def run(client: Client) -> dict[str, Any]:
        result: dict[str, Any] = await client.delete_app(app, namespace)
        if detach:
            return result
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            try:
                current = await client.get_app(app, namespace)
            except ApiError as exc:
                if exc.status == 404:
                    return {"name": app, "namespace": namespace, "status": "deleted"}
                raise
            left = sum(1 for i in current["instances"])
            if left != last and not as_json:
                err_console.print(f"waiting for {left} instance(s) to stop")
                last = left
            await asyncio.sleep(0.25)
        return {"name": app, "namespace": namespace, "status": "timeout"}

    result = call(run)
    if as_json:
        print_json(result)
    else:
        console.print(f"application {app}: {result['status']}")
    if result["status"] == "timeout":
        raise SystemExit(EXIT_FAILED)
