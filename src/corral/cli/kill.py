"""`corral kill TARGET [--signal SIG]`: send a signal to an instance (ID), a service
(APP/SERVICE) or every instance of an application (APP), through the agents that run them.

The desired state does not change: an instance that dies of the signal exits like any
crash, and its restart policy decides whether it starts again (as `docker kill` and
`nomad alloc signal`). To stop an application for good, `corral delete` or `corral scale`.
Prints one line per instance (delivered, not running, node unreachable) and exits 1 if
any was not delivered.
"""

from __future__ import annotations

from typing import Any

import typer

from corral.agent.drivers.base import parse_signal, signal_name
from corral.cli.common import call
from corral.cli.output import EXIT_FAILED, EXIT_USAGE, die, print_json, table
from corral.client import Client

__all__ = ["kill"]


def kill(
    target: str = typer.Argument(..., help="ID, APP, APP/SERVICE or APP/SERVICE/ID"),
    signal: str = typer.Option("SIGTERM", "-s", "--signal",
                               help="A name (SIGHUP, hup) or a number (1)."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Send a signal to instances (their restart policy decides what follows)."""
    try:
        number = parse_signal(signal)
    except ValueError as exc:
        die(f"--signal: {exc}", EXIT_USAGE)

    async def run(client: Client) -> dict[str, Any]:
        answer: dict[str, Any] = await client.signal(target, number, namespace=namespace)
        return answer

    answer = call(run)
    results = answer["results"]
    failed = [r for r in results if r["outcome"] != "delivered"]
    if as_json:
        print_json(answer)
    elif results:
        table(("ID", "APP", "SERVICE", "NODE", "RESULT", "DETAIL"),
              [(r["id"], r["app"], r["service"], r["node"], r["outcome"], r["message"])
               for r in results])
    if not results:
        die(f"{target}: no instance to send {signal_name(number)} to", EXIT_FAILED)
    if failed:
        raise SystemExit(EXIT_FAILED)
