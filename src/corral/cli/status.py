"""`corral status [APP] [-n NAMESPACE] [--json]`: per service desired / running / healthy,
and the state of its latest deployment (`--json`: the whole deployment record), or what
the service waits for before it starts (`waiting_for`, `reason`). Jobs follow their
application's services, one row each (`name (job)`): instances running and pending now,
and the newest run (`corral jobs` tells more)."""

from __future__ import annotations

from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import console, print_json, table
from corral.client import Client

__all__ = ["status"]


def _deployment(row: dict[str, Any]) -> str:
    dep = row.get("deployment")
    waiting = str(row.get("reason") or "")  # "waiting for dependencies: cache (0/1 healthy)"
    if not dep:
        return waiting
    if waiting:
        return f"{dep['status']} v{dep['version']}: {waiting}"
    text = f"{dep['status']} v{dep['version']}"
    if dep["cause"] not in ("apply", "reconcile"):
        text += f" ({dep['cause']})"
    if dep["waiting_for_promotion"]:
        return text + f": {dep['canaries']} canaries ready, waiting for promotion"
    if dep["status"] == "running":
        return text + f" {dep['healthy']}/{dep['desired']}"
    return text


def status(
    app: str = typer.Argument(None, help="Application name; all when omitted."),
    namespace: str = typer.Option(None, "-n", "--namespace",
                                  help="Only this namespace (default: all; with APP: default)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show applications and their services."""

    async def run(client: Client) -> list[dict[str, Any]]:
        if app:
            return [await client.get_app(app, namespace or "default")]
        return list(await client.list_apps(namespace))

    apps = call(run)
    if as_json:
        print_json([{k: v for k, v in a.items() if k != "spec"} for a in apps])
        return
    if not apps:
        console.print("no applications; `corral apply -f app.yaml` starts one")
        return
    rows = []
    for a in apps:
        for s in a["services"]:
            rows.append((a["name"], a["namespace"], a["version"], a["status"], s["service"],
                         s["desired"], s["running"], s["healthy"], s["pending"], s["failed"],
                         _deployment(s)))
        for j in a.get("jobs", []):
            last = j["last_run"]
            text = f"last run #{last['number']} {last['state']}" if last else "never run"
            rows.append((a["name"], a["namespace"], a["version"], a["status"],
                         f"{j['job']} (job)", None, j["running"], None, j["pending"], None,
                         text))
        if not a["services"] and not a.get("jobs"):
            rows.append((a["name"], a["namespace"], a["version"], a["status"], "", 0, 0, 0, 0, 0,
                         ""))
    table(("APP", "NAMESPACE", "VERSION", "STATUS", "SERVICE", "DESIRED", "RUNNING", "HEALTHY",
           "PENDING", "FAILED", "DEPLOYMENT"), rows)
