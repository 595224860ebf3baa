"""`corral deployment list|promote|fail`: deployments and the decisions about a running one.

- `list [APP] [-n NS] [--status S] [--json]` deployments, oldest first per service.
- `promote TARGET [--json]` a running deployment whose canaries are all ready rolls on.
- `fail TARGET [--reason R] [--json]` fails a running deployment now (with
  `update.auto_revert`, the service goes back to its last successful spec).
TARGET is APP/SERVICE (its running deployment, in `-n` NAMESPACE) or a deployment id.
"""

from __future__ import annotations

from typing import Any

import typer

from corral.cli.common import call, split_target
from corral.cli.output import EXIT_USAGE, ago, console, die, print_json, table
from corral.client import ApiError, Client

__all__ = ["app"]

app = typer.Typer(help="List deployments; promote or fail a running one.",
                  no_args_is_help=True)


async def _resolve(client: Client, target: str, namespace: str) -> str:
    if "/" not in target:
        return target
    name, service, extra = split_target(target)
    if service is None or extra is not None:
        die(f"expected APP/SERVICE or a deployment id, got {target!r}", EXIT_USAGE)
    running = await client.list_deployments(app=name, namespace=namespace, service=service,
                                            status="running")
    if not running:
        raise ApiError(404, f"{name}/{service} has no running deployment; "
                            f"`corral deployment list {name}` shows them")
    return str(running[-1]["id"])


def _show(dep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(dep)
        return
    console.print(f"{dep['app']}/{dep['service']} deployment {dep['id']} "
                  f"(version {dep['version']}): {dep['status']}: {dep['reason']}",
                  markup=False)
    reverted = dep.get("reverted")
    if reverted:
        console.print(f"auto-revert: version {reverted['version']} started")


@app.command("list")
def list_(
    name: str = typer.Argument(None, help="Application name; all when omitted."),
    namespace: str = typer.Option(None, "-n", "--namespace"),
    status: str = typer.Option(None, "--status",
                               help="running, successful, failed or cancelled."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List deployments."""
    deps: list[dict[str, Any]] = call(lambda c: c.list_deployments(
        app=name, namespace=namespace, status=status))
    if as_json:
        print_json(deps)
        return
    rows = []
    for d in deps:
        canary = f"{d['canaries']}{' promoted' if d['promoted'] else ''}" \
            if d["canaries"] else ""
        rows.append((d["id"], d["app"], d["service"], d["version"], d["cause"], d["status"],
                     f"{d['healthy']}/{d['desired']}", canary, ago(d["created_at"]),
                     d["reason"][:80]))
    table(("ID", "APP", "SERVICE", "VERSION", "CAUSE", "STATUS", "HEALTHY", "CANARIES", "AGE",
           "REASON"), rows)


@app.command()
def promote(
    target: str = typer.Argument(..., help="APP/SERVICE or a deployment id."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Promote a deployment's ready canaries: replace the rest of the old instances."""

    async def run(client: Client) -> dict[str, Any]:
        result: dict[str, Any] = await client.promote_deployment(
            await _resolve(client, target, namespace))
        return result

    _show(call(run), as_json)


@app.command()
def fail(
    target: str = typer.Argument(..., help="APP/SERVICE or a deployment id."),
    reason: str = typer.Option("", "--reason", help="Why, for the record."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Fail a running deployment now (and revert it, with update.auto_revert)."""

    async def run(client: Client) -> dict[str, Any]:
        result: dict[str, Any] = await client.fail_deployment(
            await _resolve(client, target, namespace), reason)
        return result

    _show(call(run), as_json)
