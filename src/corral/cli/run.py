"""`corral run APP/JOB [-n NS] [--detach] [--timeout 10m] [--json]`: start a job's run now.

The run is created with cause `manual` and starts whatever the job's `concurrency` and
`suspend` say (Nomad's `job periodic force`). Without `--detach` the command follows it,
printing each change of state on stderr, and follows its retries too: it ends when the
last attempt ends. Exit 0 when that attempt succeeded; 1 when it failed, was cancelled or
missed, or on `--timeout` (the run goes on). `--json` prints `{ok, run, attempts}`: the
final run record and every attempt followed, oldest first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer
from rich.markup import escape

from corral.cli.common import call, split_target
from corral.cli.follow import wait_seconds
from corral.cli.output import EXIT_FAILED, EXIT_USAGE, console, die, err_console, print_json
from corral.client import Client

__all__ = ["follow_run", "run"]

ACTIVE = ("pending", "running")


def _describe(r: dict[str, Any], now: float) -> str:
    text = f"run #{r['number']} {r['state']}"
    if r["state"] == "pending" and r["scheduled_at"] > now:
        text += f" (attempt {r['attempt']}, starts in {r['scheduled_at'] - now:.0f}s)"
    elif r["state"] == "pending" and r["instances"]:
        text += ": waiting for placement"
    elif r["state"] == "running":
        text += f" in {', '.join(r['instances'])}"
    if r["state"] not in ACTIVE:
        if r["exit_code"] is not None:
            text += f" (exit {r['exit_code']})"
        if r["reason"]:
            text += f": {r['reason']}"
    return text


async def follow_run(client: Client, app: str, job: str, number: int, *, namespace: str,
                     timeout: float, show: bool, poll: float = 0.25
                     ) -> tuple[bool, list[dict[str, Any]], str]:
    """Until run `number` and its retries end, or `timeout`: (ok, attempts, problem)."""
    deadline = time.monotonic() + timeout
    attempts: list[dict[str, Any]] = []
    shown = ""
    while True:
        current = await client.job_run(app, job, number, namespace=namespace)
        if attempts and attempts[-1]["number"] == number:
            attempts[-1] = current
        else:
            attempts.append(current)
        line = _describe(current, time.time())
        if show and line != shown:
            err_console.print(escape(f"{app}/{job} {line}"))
            shown = line
        if current["state"] == "succeeded":
            return True, attempts, ""
        if current["state"] not in ACTIVE:
            retry = await _retry_of(client, app, job, current, namespace)
            if retry is None:
                return False, attempts, f"{app}/{job} {line}"
            number = retry["number"]
            continue
        if time.monotonic() > deadline:
            return False, attempts, (f"timed out after {timeout:g}s; {app}/{job} run "
                                     f"#{number} goes on (`corral jobs runs {app}/{job}`)")
        await asyncio.sleep(poll)


async def _retry_of(client: Client, app: str, job: str, run: dict[str, Any],
                    namespace: str) -> dict[str, Any] | None:
    """The next attempt, created with the failure (same transaction), if there is one."""
    if run["state"] != "failed":
        return None
    first = run["retry_of"] or run["number"]
    for r in await client.job_runs(app, job, namespace=namespace, limit=100):
        if r["cause"] == "retry" and r["retry_of"] == first and \
                r["attempt"] == run["attempt"] + 1:
            return dict(r)
    return None


def run(
    target: str = typer.Argument(..., help="APP/JOB."),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start it; do not wait."),
    timeout: str = typer.Option("10m", help="How long to follow the run and its retries."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start a job's run now and follow it to its end (retries included)."""
    app, job, extra = split_target(target)
    if job is None or extra is not None:
        die(f"expected APP/JOB, got {target!r}", EXIT_USAGE)
    wait_s = wait_seconds(timeout)

    async def go(client: Client) -> tuple[dict[str, Any], bool, list[dict[str, Any]], str]:
        started: dict[str, Any] = await client.start_job(app, job, namespace=namespace)
        if not as_json:
            console.print(f"{app}/{job} run #{started['number']} started")
        if detach:
            return started, True, [started], ""
        ok, attempts, problem = await follow_run(client, app, job, started["number"],
                                                 namespace=namespace, timeout=wait_s,
                                                 show=not as_json)
        return started, ok, attempts, problem

    _, ok, attempts, problem = call(go)
    final = attempts[-1]
    if as_json:
        print_json({"ok": ok, "run": final, "attempts": attempts})
    elif not detach:
        tries = f" after {len(attempts)} attempts" if len(attempts) > 1 else ""
        if ok:
            console.print(f"[green]{escape(app)}/{escape(job)} run #{final['number']} "
                          f"succeeded{tries}[/green]")
        elif final["state"] in ACTIVE:  # timed out: the problem says so
            err_console.print(f"[red]{escape(problem)}[/red]")
        else:  # the progress above said why
            err_console.print(f"[red]{escape(app)}/{escape(job)} run #{final['number']} "
                              f"{final['state']}{tries}[/red]")
        ids = [i for a in attempts for i in a["instances"]]
        if ids:
            console.print(f"logs: corral logs {app}/{job}/{ids[-1]}"
                          + (f" -n {namespace}" if namespace != "default" else ""))
    if not ok:
        raise SystemExit(EXIT_FAILED)
