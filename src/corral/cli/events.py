"""`corral events [-f] [--since IDX] [--topic T] [--json]`: the cluster's event stream."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import print_json, table
from corral.client import Client

__all__ = ["events"]


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def events(
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep streaming."),
    since: int = typer.Option(0, "--since", help="Only events after this index."),
    topic: str = typer.Option(None, "--topic",
                              help="node | app | deployment | instance | job | token"),
    key: str = typer.Option(None, "--key", help="Only keys starting with this."),
    limit: int = typer.Option(0, "--limit", help="Only the newest N (without -f)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show events (every state change), oldest first."""

    async def run(client: Client) -> list[dict[str, Any]]:
        if not follow:
            return list(await client.events(since=since, topic=topic, key=key, limit=limit))
        async for ev in client.follow_events(since=since, topic=topic, key=key):
            if as_json:
                sys.stdout.write(json.dumps(ev) + "\n")
            else:
                sys.stdout.write(f"{ev['index']:>7} {_time(ev['time'])} {ev['topic']:<8} "
                                 f"{ev['type']:<16} {ev['message']}\n")
            sys.stdout.flush()
        return []

    items = call(run)
    if follow:
        return
    if as_json:
        print_json(items)
        return
    table(("INDEX", "TIME", "TOPIC", "TYPE", "KEY", "MESSAGE"),
          [(e["index"], _time(e["time"]), e["topic"], e["type"], e["key"], e["message"])
           for e in items])
