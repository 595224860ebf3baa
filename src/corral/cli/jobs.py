"""`corral jobs [APP]`, `corral jobs runs APP/JOB`, `corral jobs graph APP [--dot]`.

- `corral jobs [APP] [-n NS] [--json]` every job: its schedule or parents, the last run
  (number, state, when), the next run, and its succeeded / failed / missed counts.
- `corral jobs runs APP/JOB [--limit 20] [--json]` its run history, newest first: number,
  cause, attempt, state, exit code, when it was due and started, how long it ran, its
  instances (read their logs with `corral logs APP/JOB/ID`).
- `corral jobs graph APP [--dot]` its jobs by `after:` level (`jobs/dag.py`), or Graphviz.

`corral jobs APP` and the subcommands share one group: a first word that is not a
subcommand is the APP of the listing (`DefaultToList` below), so `runs` and `graph` are
never taken for an application's name; `corral jobs list runs` lists an application
named `runs`.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from corral.cli.common import call, split_target
from corral.cli.output import EXIT_NOT_FOUND, EXIT_USAGE, console, die, print_json, table
from corral.client import Client
from corral.jobs.dag import render_dot, render_text
from corral.model.application import ApplicationSpec
from corral.model.codec import from_data

__all__ = ["app"]


class DefaultToList(TyperGroup):
    """A group whose first argument, if it names no subcommand, goes to `list`."""

    # ctx: typer's vendored click Context, which typer does not export under a public name.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultToList, help="List jobs, their runs and their graph.")


def when(t: float | None, now: float) -> str:
    """`5m ago`, `in 2h`, `-`."""
    if t is None:
        return "-"
    delta = t - now
    span = abs(delta)
    if span < 60:
        text = f"{span:.0f}s"
    elif span < 3600:
        text = f"{span / 60:.0f}m"
    elif span < 86400:
        text = f"{span / 3600:.0f}h"
    else:
        text = f"{span / 86400:.0f}d"
    return f"in {text}" if delta > 0 else f"{text} ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"


def _trigger(j: dict[str, Any]) -> str:
    if j["after"]:
        text = "after " + ",".join(j["after"])
    elif j["schedule"]:
        tz = "" if j["time_zone"] == "UTC" else f" ({j['time_zone']})"
        text = j["schedule"] + tz
    else:
        text = "manual"
    return text + (" [suspended]" if j["suspend"] else "")


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


@app.command("list")
def list_jobs(
    name: str = typer.Argument(None, metavar="APP", help="Only this application's jobs."),
    namespace: str = typer.Option(None, "-n", "--namespace",
                                  help="Only this namespace (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List jobs: schedule or parents, last run, next run, counts."""

    async def go(client: Client) -> list[dict[str, Any]]:
        if name:
            await client.get_app(name, namespace or "default")  # 404 for an unknown app
            return list(await client.list_jobs(namespace=namespace or "default", app=name))
        return list(await client.list_jobs(namespace=namespace))

    jobs = call(go)
    if as_json:
        print_json(jobs)
        return
    if not jobs:
        console.print("no jobs" + (f" in {name}" if name else "")
                      + "; `jobs:` in an application's spec defines them")
        return
    now = _now()
    rows = []
    for j in jobs:
        last = j["last_run"]
        last_text = "-" if last is None else f"#{last['number']} {last['state']} " \
            f"{when(last['finished_at'] or last['scheduled_at'], now)}"
        rows.append((j["app"], j["job"], _trigger(j), last_text, when(j["next_run"], now),
                     j["succeeded"], j["failed"], j["missed"]))
    table(("APP", "JOB", "SCHEDULE/AFTER", "LAST RUN", "NEXT RUN", "OK", "FAILED", "MISSED"),
          rows)


@app.command()
def runs(
    target: str = typer.Argument(..., help="APP/JOB."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    limit: int = typer.Option(20, "--limit", min=1, help="The newest N runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A job's run history, newest first, with exit codes and instances."""
    app_name, job, extra = split_target(target)
    if job is None or extra is not None:
        die(f"expected APP/JOB, got {target!r}", EXIT_USAGE)

    async def go(client: Client) -> list[dict[str, Any]]:
        return list(await client.job_runs(app_name, job, namespace=namespace, limit=limit))

    found = call(go)
    if as_json:
        print_json(found)
        return
    if not found:
        console.print(f"{app_name}/{job} has not run yet; `corral run {app_name}/{job}` "
                      "starts it")
        return
    now = _now()
    table(("NUMBER", "CAUSE", "ATTEMPT", "STATE", "EXIT", "SCHEDULED", "STARTED", "DURATION",
           "INSTANCES", "REASON"),
          [(r["number"], r["cause"], r["attempt"], r["state"], r["exit_code"],
            when(r["scheduled_at"], now), when(r["started_at"], now),
            _duration(r["duration"]), ",".join(r["instances"]), r["reason"][:60])
           for r in found])
    newest = next((r for r in found if r["instances"]), None)
    if newest is not None:
        ns = f" -n {namespace}" if namespace != "default" else ""
        console.print(f"logs of a run: corral logs {app_name}/{job}/ID{ns} (e.g. "
                      f"{newest['instances'][-1]})")


@app.command()
def graph(
    name: str = typer.Argument(..., metavar="APP", help="Application name."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    dot: bool = typer.Option(False, "--dot", help="Graphviz DOT instead of text."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (jobs and edges)."),
) -> None:
    """The application's jobs by `after:` level, or as a Graphviz graph."""

    async def go(client: Client) -> dict[str, Any]:
        view: dict[str, Any] = await client.get_app(name, namespace)
        return view

    view = call(go)
    spec = from_data(ApplicationSpec, view["spec"])
    if as_json:
        print_json({"app": name, "namespace": namespace, "jobs": [
            {"job": n, "after": sorted(set(j.after)), "schedule": j.schedule,
             "suspend": j.suspend} for n, j in sorted(spec.jobs.items())]})
        return
    if not spec.jobs:
        die(f"application {name} has no jobs", EXIT_NOT_FOUND)
    try:
        text = render_dot(name, spec.jobs) if dot else render_text(name, spec.jobs)
    except ValueError as exc:  # a cycle: validation refuses it, so only an old spec
        die(str(exc), EXIT_USAGE)
    sys.stdout.write(text)
