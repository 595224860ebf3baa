"""`corral logs APP[/SERVICE[/ID]] [-f] [--since 5m] [--tail N] [--stderr] [--json]`: one
merged stream of every matching instance on every node, ordered by time, each line
prefixed by its instance. Instances that have ended are included while their agent keeps
their logs (`corral agent --log-retention`); `-f` also follows the instances that appear
while it runs (a rollout's new ones). The merging is the server's (`server/logs.py`)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer

from corral.cli.common import call, split_target
from corral.cli.output import EXIT_USAGE, die
from corral.client import Client
from corral.model.units import parse_duration

__all__ = ["logs"]


def logs(
    target: str = typer.Argument(..., help="APP, APP/SERVICE or APP/SERVICE/ID"),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep streaming new lines."),
    since: str = typer.Option(None, "--since", help="Only lines newer than this (5m, 1h)."),
    tail: int = typer.Option(None, "--tail", min=0, help="Only the last N lines."),
    stderr: bool = typer.Option(False, "--stderr", help="Only stderr."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Print the logs of an application, service or instance."""
    app, service, instance = split_target(target)
    since_ts = None
    if since:
        try:
            since_ts = time.time() - parse_duration(since)
        except ValueError as exc:
            die(f"--since: {exc}", EXIT_USAGE)

    async def run(client: Client) -> None:
        stream = client.logs(app=app, instance=instance, namespace=namespace, service=service,
                             since=since_ts, tail=tail, follow=follow,
                             stream="stderr" if stderr else None)
        async for line in stream:
            _print(line, as_json)

    call(run)


def _print(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(line) + "\n")
    else:
        prefix = f"{line.get('service', '?')}/{line.get('instance', '?')}"
        sys.stdout.write(f"{prefix} | {line['text']}\n")
    sys.stdout.flush()
