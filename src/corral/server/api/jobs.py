"""Jobs: list them, read their run history, start and cancel runs. Admin only.

- `GET /v1/jobs?namespace=&app=` every job of every (matching) application: its trigger
  (`schedule`, `time_zone`, `after`, `suspend`), `last_run` (number, state, scheduled_at,
  finished_at, exit_code), `next_run` (the schedule's next fire time; None for a job run
  only after others or by hand, or suspended), the `succeeded`, `failed`, `missed` and
  `skipped` counts and the `active_runs` (numbers), sorted by namespace, app, job.
- `GET /v1/jobs/{ns}/{app}/{job}/runs?limit=20` its runs, newest first.
- `GET /v1/jobs/{ns}/{app}/{job}/runs/{number}` one run.
- `POST /v1/jobs/{ns}/{app}/{job}/run` starts a run now (cause `manual`): 201 with the run.
  Like Nomad's `job periodic force` and `kubectl create job --from=cronjob`, it runs
  whatever `concurrency` and `suspend` say; 409 while the application is being deleted.
- `POST /v1/jobs/{ns}/{app}/{job}/runs/{number}/cancel` cancels an active run (its
  instances are stopped by the job controller); 409 if it has already ended.

Every run record carries its instances' ids: `corral logs APP/JOB/ID` reads one.
Neighbours: `server/controllers/jobs.py` runs what is written here; `model/job.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from corral.jobs.schedule import parse_schedule
from corral.model.app import Application, AppStatus
from corral.model.application import JobSpec
from corral.model.codec import to_data
from corral.model.job import JobRun, JobRunState, JobState, RunCause, RunSummary
from corral.server import keys
from corral.server.api.deps import check_name, get_ctx
from corral.server.context import ServerContext
from corral.server.controllers.jobs import job_event, run_id
from corral.server.errors import ApiError
from corral.server.records import Versioned

__all__ = ["job_view", "next_run", "router", "run_view"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def next_run(spec: JobSpec, state: JobState | None, now: float) -> float | None:
    """When the schedule fires next (None: no schedule, suspended, or used up)."""
    if spec.schedule is None or spec.suspend:
        return None
    try:
        schedule = parse_schedule(spec.schedule, spec.time_zone)
    except ValueError:
        return None
    after = now
    if state is not None and (state.schedule, state.time_zone) == (spec.schedule,
                                                                   spec.time_zone):
        after = max(now, state.last_fire if state.last_fire is not None else state.since)
    return schedule.next_after(after)


def run_view(run: JobRun) -> dict[str, Any]:
    data: dict[str, Any] = to_data(run)
    end = run.finished_at
    data["duration"] = None if run.started_at is None or end is None else \
        max(0.0, end - run.started_at)
    return data


def job_view(app: Application, name: str, state: JobState | None, active: list[int],
             now: float) -> dict[str, Any]:
    spec = app.spec.jobs[name]
    return {
        "namespace": app.namespace, "app": app.name, "job": name,
        "schedule": spec.schedule, "time_zone": spec.time_zone, "after": list(spec.after),
        "suspend": spec.suspend, "concurrency": spec.concurrency, "retries": spec.retries,
        "last_run": to_data(state.last_run) if state and state.last_run else None,
        "next_run": next_run(spec, state, now),
        "succeeded": state.succeeded if state else 0, "failed": state.failed if state else 0,
        "missed": state.missed if state else 0, "skipped": state.skipped if state else 0,
        "active_runs": sorted(active),
    }


async def _app(ctx: ServerContext, namespace: str, app: str) -> Application:
    check_name(namespace, "namespace")
    check_name(app, "application name")
    item = await ctx.records.get(Application, keys.app(namespace, app))
    if item is None:
        raise ApiError(404, f"no application {app!r} in namespace {namespace!r}")
    return item.record


async def _job(ctx: ServerContext, namespace: str, app: str, job: str) -> Application:
    record = await _app(ctx, namespace, app)
    check_name(job, "job name")
    if job not in record.spec.jobs:
        known = ", ".join(sorted(record.spec.jobs)) or "none"
        raise ApiError(404, f"application {app!r} has no job {job!r} (its jobs: {known})")
    return record


async def _runs(ctx: ServerContext, namespace: str, app: str, job: str
                ) -> list[Versioned[JobRun]]:
    items, _ = await ctx.records.scan(JobRun, keys.job_runs(namespace, app, job))
    return sorted(items, key=lambda i: i.record.number, reverse=True)


@router.get("")
async def list_jobs(ctx: Ctx, namespace: str | None = None, app: str | None = None
                    ) -> list[dict[str, Any]]:
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    states, _ = await ctx.records.scan(JobState, keys.JOBS)
    runs, _ = await ctx.records.scan(JobRun, keys.JOB_RUNS)
    by_job = {(s.record.namespace, s.record.app, s.record.job): s.record for s in states}
    active: dict[tuple[str, str, str], list[int]] = {}
    for r in runs:
        if r.record.active:
            active.setdefault((r.record.namespace, r.record.app, r.record.job),
                              []).append(r.record.number)
    now = ctx.clock.now()
    out = []
    for item in sorted(apps, key=lambda a: (a.record.namespace, a.record.name)):
        a = item.record
        if (namespace is not None and a.namespace != namespace) or \
                (app is not None and a.name != app):
            continue
        for name in sorted(a.spec.jobs):
            ident = (a.namespace, a.name, name)
            out.append(job_view(a, name, by_job.get(ident), active.get(ident, []), now))
    return out


@router.get("/{namespace}/{app}/{job}/runs")
async def list_runs(namespace: str, app: str, job: str, ctx: Ctx,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 20
                    ) -> list[dict[str, Any]]:
    record = await _app(ctx, namespace, app)
    check_name(job, "job name")
    runs = await _runs(ctx, namespace, app, job)
    if not runs and job not in record.spec.jobs:
        known = ", ".join(sorted(record.spec.jobs)) or "none"
        raise ApiError(404, f"application {app!r} has no job {job!r} (its jobs: {known})")
    return [run_view(r.record) for r in runs[:limit]]


async def _get_run(ctx: ServerContext, namespace: str, app: str, job: str, number: int
                   ) -> Versioned[JobRun]:
    await _app(ctx, namespace, app)
    check_name(job, "job name")
    item = await ctx.records.get(JobRun, keys.job_run(namespace, app, job, number))
    if item is None:
        raise ApiError(404, f"{app}/{job} has no run #{number} (`corral jobs runs "
                            f"{app}/{job}` lists those kept)")
    return item


@router.get("/{namespace}/{app}/{job}/runs/{number}")
async def get_run(namespace: str, app: str, job: str, number: int, ctx: Ctx
                  ) -> dict[str, Any]:
    return run_view((await _get_run(ctx, namespace, app, job, number)).record)


@router.post("/{namespace}/{app}/{job}/run", status_code=201)
async def start_run(namespace: str, app: str, job: str, ctx: Ctx) -> dict[str, Any]:
    for _ in range(10):
        record = await _job(ctx, namespace, app, job)
        if record.status == AppStatus.DELETING:
            raise ApiError(409, f"application {app} is being deleted")
        now = ctx.clock.now()
        item = await ctx.records.get(JobState, keys.job_state(namespace, app, job))
        state = item.record if item else JobState(namespace=namespace, app=app, job=job,
                                                  since=now)
        number = state.last_number + 1
        run = JobRun(id=run_id(namespace, app, job, number), namespace=namespace, app=app,
                     job=job, number=number, version=record.version, scheduled_at=now,
                     cause=RunCause.MANUAL, reason="started by request (corral run)",
                     created_at=now, updated_at=now)
        state = dataclasses.replace(state, last_number=number, last_run=RunSummary(
            number=number, state=run.state, scheduled_at=now))
        txn = ctx.records.txn()
        txn.put(keys.job_state(namespace, app, job), state,
                expect=item.mod_revision if item else 0)
        txn.put(keys.job_run(namespace, app, job, number), run, expect=0)
        job_event(txn, run, "run-created", f"{app}/{job} run #{number} created (manual): "
                                           f"{run.reason}")
        if await txn.commit() is not None:
            return run_view(run)
    raise ApiError(409, f"{app}/{job} kept changing while starting a run; retry")


@router.post("/{namespace}/{app}/{job}/runs/{number}/cancel")
async def cancel_run(namespace: str, app: str, job: str, number: int, ctx: Ctx
                     ) -> dict[str, Any]:
    for _ in range(10):
        item = await _get_run(ctx, namespace, app, job, number)
        run = item.record
        if not run.active:
            raise ApiError(409, f"{app}/{job} run #{number} has already ended ({run.state})",
                           {"state": run.state})
        now = ctx.clock.now()
        run = dataclasses.replace(run, state=JobRunState.CANCELLED, updated_at=now,
                                  finished_at=now, reason="cancelled by request")
        txn = ctx.records.txn().put(keys.job_run(namespace, app, job, number), run,
                                    expect=item.mod_revision)
        job_event(txn, run, "cancelled", f"{app}/{job} run #{number} cancelled by request")
        if await txn.commit() is not None:
            return run_view(run)
    raise ApiError(409, f"{app}/{job} run #{number} kept changing; retry")
