"""Following an application after a change until it is done, with a progress bar per
service: shared by `apply`, `rollback` and `restart`.

A service with a deployment started by the change is followed through that deployment:
done when it is `successful` (or its canaries are ready and wait for a promotion), failed
when it is `failed` or `cancelled`, saying why (and which auto-revert started). Any other
service is done once its desired count of current instances is ready and nothing old is
left. An instance that cannot be placed fails the wait, and so does one that fails after
the change started, unless a deployment with old instances to fall back on judges it. A
service that waits for its dependencies before it starts just waits (its deployment stays
`running`, with the wait as its reason).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from corral.cli.output import EXIT_FAILED, EXIT_USAGE, console, die, err_console, print_json
from corral.client import Client
from corral.model.units import parse_duration

__all__ = ["Outcome", "finish", "follow", "json_outcome", "report", "wait_seconds"]

RUNNING = ("running", "healthy")


@dataclass(slots=True, kw_only=True)
class Outcome:
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # done, but someone has to act
    app: dict[str, Any] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)


def _instance_problems(app: dict[str, Any], rolling: set[str], since: float) -> list[str]:
    """Instances that failed since `since`, or cannot be placed. In a service in `rolling`
    (a deployment with old instances to keep) a failing new instance is the deployment's to
    judge: it fails at `healthy_deadline`, and may revert. One that cannot be placed while
    an old instance of its service is still stopping waits: the stop frees resources
    (a surge instance on a full cluster, an old one in its `shutdown_delay`)."""
    problems = []
    stopping = {i["service"] for i in app["instances"]
                if i["desired"] == "stop" and i["state"] not in ("stopped", "lost", "failed")}
    for inst in app["instances"]:
        if inst["desired"] != "run" or inst.get("kind") == "job":
            continue  # a job's instances are its runs' to judge (`corral run` follows them)
        if inst["state"] == "failed" and inst["updated_at"] >= since and \
                inst["service"] not in rolling:
            problems.append(f"{inst['service']}/{inst['id']}: failed: {inst['reason']}")
        if inst["state"] == "pending" and inst["service"] not in stopping and \
                inst["reason"] not in ("", "waiting for placement"):
            problems.append(f"{inst['service']}/{inst['id']}: pending: {inst['reason']}")
    return problems


def _settled(app: dict[str, Any], row: dict[str, Any]) -> bool:
    """Every wanted instance of the current version ready; nothing old still stopping."""
    mine = [i for i in app["instances"] if i["service"] == row["service"]]
    live = [i for i in mine if i["desired"] == "run"]
    leftovers = [i for i in mine if i["desired"] == "stop"]
    return bool(row["ready"] == row["desired"] == len(live) and not leftovers)


def _deployment_problem(dep: dict[str, Any], all_deps: Sequence[dict[str, Any]]) -> str:
    text = (f"{dep['service']}: deployment {dep['id']} (version {dep['version']}) "
            f"{dep['status']}: {dep['reason']}")
    revert = [d for d in all_deps if d["service"] == dep["service"]
              and d["cause"] == "auto-revert" and (d["version"], d["generation"]) >
              (dep["version"], dep["generation"])]
    if revert:
        r = revert[0]
        text += (f"; auto-revert started: version {r['version']} (deployment {r['id']}); "
                 f"`corral status {dep['app']}` follows it")
    return text


def _assess(app: dict[str, Any], deps: list[dict[str, Any]], mine: dict[str, dict[str, Any]],
            since: float) -> tuple[bool, list[str], list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    done = True
    for svc, dep in sorted(mine.items()):
        if dep["status"] in ("failed", "cancelled"):
            problems.append(_deployment_problem(dep, deps))
        elif dep["waiting_for_promotion"]:
            notes.append(f"{svc}: {dep['canaries']} canaries of version {dep['version']} "
                         f"ready beside the old instances; `corral deployment promote "
                         f"{dep['app']}/{svc}` rolls on, `corral deployment fail "
                         f"{dep['app']}/{svc}` gives up")
        elif dep["status"] != "successful":
            done = False
    others = {r["service"] for r in app["services"]} - set(mine)
    rolling = {svc for svc, dep in mine.items() if dep["previous_version"] is not None}
    problems += _instance_problems(app, rolling, since)
    done = done and all(_settled(app, r) for r in app["services"] if r["service"] in others)
    return done, problems, notes


async def follow(client: Client, name: str, namespace: str,
                 started: Sequence[dict[str, Any]], *, timeout: float, since: float,
                 show: bool, poll: float = 0.25) -> Outcome:
    """Until every service is done, one fails, or `timeout` passes. `started`: the
    deployments the change started (`[{service, id}]`)."""
    deadline = time.monotonic() + timeout
    ids = {s["id"] for s in started}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[state]}", markup=False), console=err_console,
                  disable=not show, transient=False) as progress:
        tasks: dict[str, Any] = {}
        while True:
            app = await client.get_app(name, namespace)
            deps = list(await client.list_deployments(app=name, namespace=namespace))
            mine = {d["service"]: d for d in deps if d["id"] in ids}
            for row in app["services"]:
                svc = row["service"]
                dep = mine.get(svc)
                if dep is not None:
                    done, total = dep["healthy"], max(dep["desired"], 1)
                    state = f"{dep['status']}: {dep['reason']}" if dep["reason"] \
                        else dep["status"]
                else:
                    done, total = row["ready"], max(row["desired"], 1)
                    states = sorted({i["state"] for i in app["instances"]
                                     if i["service"] == svc and i["desired"] == "run"
                                     and i["state"] not in RUNNING})
                    state = "ready" if _settled(app, row) else \
                        row.get("reason") or ", ".join(states)
                if svc not in tasks:
                    tasks[svc] = progress.add_task(svc, total=total, state="")
                progress.update(tasks[svc], completed=done, total=total, state=state)
            finished, problems, notes = _assess(app, deps, mine, since)
            followed = [mine[s] for s in sorted(mine)]
            if problems:
                return Outcome(ok=False, problems=problems, app=app, deployments=followed)
            if finished:
                return Outcome(ok=True, notes=notes, app=app, deployments=followed)
            if time.monotonic() > deadline:
                return Outcome(ok=False, problems=[f"timed out after {timeout:g}s"], app=app,
                               deployments=followed)
            await asyncio.sleep(poll)


def report(outcome: Outcome, summary: str) -> None:
    """What `apply`, `rollback` and `restart` print once they stop following."""
    if outcome.ok:
        rows = ", ".join(f"{r['service']} {r['ready']}/{r['desired']}"
                         for r in outcome.app["services"])
        console.print(f"{summary}: {rows}" if rows else summary)  # none: only jobs
        for note in outcome.notes:
            err_console.print(f"[yellow]{escape(note)}[/yellow]")
    else:
        for p in outcome.problems:
            err_console.print(f"[red]{escape(p)}[/red]")


def json_outcome(result: dict[str, Any], outcome: Outcome | None) -> dict[str, Any]:
    out = dict(result)
    if outcome is not None:
        out.update(ok=outcome.ok, problems=outcome.problems, notes=outcome.notes,
                   services=outcome.app["services"], deployments=outcome.deployments)
    return out


def wait_seconds(timeout: str) -> float:
    """`--timeout` of a following command, or exit with a usage error."""
    try:
        return parse_duration(timeout)
    except ValueError as exc:
        die(f"--timeout: {exc}", EXIT_USAGE)


def finish(result: dict[str, Any], outcome: Outcome | None, *, as_json: bool,
           summary: str) -> None:
    """Print what a following command ends with; exit 1 if what it followed failed."""
    if as_json:
        print_json(json_outcome(result, outcome))
    elif outcome is not None:
        report(outcome, summary)
    if outcome is not None and not outcome.ok:
        raise SystemExit(EXIT_FAILED)
