"""`corral history APP [-n NAMESPACE] [--json]`: every stored version of an application,
oldest first: when, why (`apply`, `rollback`, `auto-revert`), what changed, and how each of
its deployments (restarts included) ended. `--json` prints the versions as the API gives
them (`GET /v1/apps/{name}/history`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import console, print_json, table

__all__ = ["history"]


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _changes(version: dict[str, Any]) -> str:
    parts = []
    for c in version["changes"]:
        fields = f" ({', '.join(c['fields'])})" if c["fields"] else ""
        parts.append(f"{c['name']} {c['change']}{fields}")
    return "; ".join(parts)


def _deployments(version: dict[str, Any]) -> str:
    parts = []
    for d in version["deployments"]:
        what = f"{d['service']} {d['status']}"
        if d["cause"] == "restart":
            what += " (restart)"
        parts.append(what)
    return ", ".join(parts)


def history(
    app: str = typer.Argument(..., help="Application name."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show an application's versions and how their deployments went."""
    versions: list[dict[str, Any]] = call(lambda c: c.history(app, namespace))
    if as_json:
        print_json(versions)
        return
    rows = []
    for v in versions:
        cause = v["cause"] + (f": {v['reason']}" if v["reason"] else "")
        rows.append((f"{v['version']}{' *' if v['current'] else ''}", _when(v["created_at"]),
                     cause, _changes(v), _deployments(v)))
    table(("VERSION", "CREATED", "CAUSE", "CHANGES", "DEPLOYMENTS"), rows)
    console.print("* current version; `corral rollback APP[/SERVICE] --to VERSION` applies "
                  "an earlier one again", markup=False)
