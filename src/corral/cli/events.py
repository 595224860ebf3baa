"""`corral events [-f] [--since IDX] [--topic T]... [--app A] [--json]`: the cluster's event
stream, one line per event, so a rollout reads as it unfolds:

```
  INDEX TIME         TOPIC      TYPE             SUBJECT                  MESSAGE
   4121 12:04:01.532 instance   scheduled        shop/web/9f2c01ab        shop/web instance …
```

With `-f` it follows; when the server says the stream fell behind (a slow terminal), it
resumes from the index it was given, so nothing is skipped. `--json` prints one JSON object
per line while following, a JSON array otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import EXIT_USAGE, die, print_json, table
from corral.client import ApiError, Client

__all__ = ["events", "format_line", "subject"]

_HEAD = f"{'INDEX':>7} {'TIME':<12} {'TOPIC':<10} {'TYPE':<16} {'SUBJECT':<24} MESSAGE"


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def subject(ev: dict[str, Any]) -> str:
    """What the event is about, short: `app/service/instance` for instance events, the
    application for deployments, the key otherwise."""
    payload = ev.get("payload") or {}
    if ev.get("topic") in ("instance", "deployment") and payload.get("app"):
        service = payload.get("service")
        middle = f"/{service}" if service else ""
        return f"{payload['app']}{middle}/{ev.get('key', '')}"
    return str(ev.get("key", ""))


def format_line(ev: dict[str, Any]) -> str:
    return (f"{ev['index']:>7} {_time(ev['time']):<12} {ev['topic']:<10} {ev['type']:<16} "
            f"{subject(ev):<24} {ev.get('message', '')}")


def _gone(exc: ApiError) -> None:
    if exc.status == 410:
        die(exc.message, EXIT_USAGE)


def events(
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep streaming."),
    since: int = typer.Option(0, "--since", help="Only events after this index."),
    topic: list[str] = typer.Option(
        [], "--topic", help="node | app | deployment | instance | job | token (repeatable, "
                            "or comma-separated)."),
    key: str = typer.Option(None, "--key", help="Only keys starting with this."),
    app: str = typer.Option(None, "--app", help="Only events about this application."),
    namespace: str = typer.Option(None, "--namespace", "-n",
                                  help="Only events about applications of this namespace."),
    limit: int = typer.Option(0, "--limit", help="Only the newest N (with -f: of the "
                                                 "backlog)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show events (every state change), oldest first."""
    filters: dict[str, Any] = {"topic": list(topic) or None, "key": key, "app": app,
                               "namespace": namespace}

    async def run(client: Client) -> list[dict[str, Any]]:
        if not follow:
            try:
                return list(await client.events(since=since, limit=limit, **filters))
            except ApiError as exc:
                _gone(exc)
                raise
        position, first = since, True
        if not as_json:
            sys.stdout.write(_HEAD + "\n")
        while True:
            resume = None
            try:
                async for ev in client.follow_events(since=position,
                                                     limit=limit if first else 0, **filters):
                    if ev.get("type") == "fell-behind" and "topic" not in ev:
                        resume = int(ev["index"])
                        break
                    position = max(position, int(ev.get("index", position)))
                    sys.stdout.write((json.dumps(ev, sort_keys=True) if as_json
                                      else format_line(ev)) + "\n")
                    sys.stdout.flush()
            except ApiError as exc:
                _gone(exc)
                raise
            if resume is None:
                return []
            position, first = resume, False

    items = call(run)
    if follow:
        return
    if as_json:
        print_json(items)
        return
    table(("INDEX", "TIME", "TOPIC", "TYPE", "SUBJECT", "MESSAGE"),
          [(e["index"], _time(e["time"]), e["topic"], e["type"], subject(e), e["message"])
           for e in items])
