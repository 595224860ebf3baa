"""`corral services [APP] [-n NAMESPACE] [-w] [--json]`: the service catalog: per service,
its instances in service (healthy, or running without a health check) and their addresses.

`-w/--watch` prints it again on every change until Ctrl-C, with the catalog's digest watch
(`GET /v1/services?digest=&wait=`: the server answers when the digest changes), one JSON
document per line with `--json`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import EXIT_NOT_FOUND, console, die, print_json, table
from corral.client import Client

__all__ = ["services"]

SHOWN = 4  # addresses shown per service; the rest are counted
WATCH_WAIT = "5m"  # the longest the server holds a watch


def addresses(entry: dict[str, Any], shown: int = SHOWN) -> str:
    """`host:port` (or the host, for a service without ports) of each instance, shortened
    to the first `shown` and a count of the rest."""
    addrs = [i["address"] if i["port"] is None else f"{i['address']}:{i['port']}"
             for i in entry["instances"]]
    if len(addrs) > shown:
        return ", ".join(addrs[:shown]) + f", … (+{len(addrs) - shown} more)"
    return ", ".join(addrs)


def _show(found: list[dict[str, Any]], *, as_json: bool, watching: bool) -> None:
    if as_json:
        if watching:
            sys.stdout.write(json.dumps(found, sort_keys=True) + "\n")
            sys.stdout.flush()
        else:
            print_json(found)
        return
    table(("APP", "NAMESPACE", "SERVICE", "INSTANCES", "ADDRESSES"),
          [(e["app"], e["namespace"], e["service"], len(e["instances"]), addresses(e))
           for e in found])
    if watching:
        console.print()
        console.file.flush()


def services(
    app: str = typer.Argument(None, help="Only this application."),
    namespace: str = typer.Option(None, "-n", "--namespace",
                                  help="Only this namespace (default: all; with APP: default)."),
    watch: bool = typer.Option(False, "-w", "--watch",
                               help="Print again on every change, until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with -w: one line each)."),
) -> None:
    """List services and the addresses of their healthy instances."""
    ns = namespace or ("default" if app else None)

    if not watch:
        answer = call(lambda client: client.services(namespace=ns, app=app))
        found: list[dict[str, Any]] = answer["services"]
        if app and not found:
            die(f"no application {app!r} with services in namespace {ns!r}", EXIT_NOT_FOUND)
        if not found and not as_json:
            console.print("no services; `corral apply -f app.yaml` starts some")
            return
        _show(found, as_json=as_json, watching=False)
        return

    async def follow(client: Client) -> None:
        digest: str | None = None
        while True:
            answer = await client.services(namespace=ns, app=app, digest=digest,
                                           wait=WATCH_WAIT if digest else None)
            if answer["digest"] != digest:
                digest = answer["digest"]
                _show(answer["services"], as_json=as_json, watching=True)

    call(follow)
