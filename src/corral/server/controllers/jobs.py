"""The job controller: runs each application's jobs (`jobs:` in the spec) to completion, on
their schedules, after their parents, and when asked (`corral run`).

Level-triggered, one pass per application and one transaction per pass, so the job
states, runs and instances it writes never disagree, whatever it was woken by (a change
of applications, instances, job states or runs; the next fire time, retry, deadline or
timeout, returned to the loop):

```
 per job of an active application
   active runs ──► jobs/runs.advance ──► instances to create (kind job, parallelism at a
   (+ instances)                         time), completed ones stopped, started / succeeded /
                                         failed (+ a retry run, after its backoff) / missed
   schedule ──────► jobs/cron.decide ──► pending / missed / skipped runs, runs to cancel
 per application
   every run ─────► jobs/dag.triggered ► pending runs (cause after), runs to cancel
 then, per job: new due runs get instances; instances of final runs are stopped; history
 pruned to history_limit; JobState (last_number, counters, last_run) ──► one txn
```

Manual runs are created `pending` by the API (`server/api/jobs.py`), cancels are written
there as `cancelled`: this controller picks both up like any other run. Instances are
placed by the scheduling controller like services' (no ports) and run by agents, which
never restart them (`agent/runner.py`): each ends `exited` (0) or `failed`, and this
controller stops it (directly: nothing runs any more) once it has counted it.

An application being deleted has its active runs cancelled; the application controller
stops the instances and, once none is left and no run is active, removes the job states and
runs with the application. A job removed from the spec has its runs cancelled and, once its
instances are gone, its state and runs removed.

Neighbours: `jobs/` (the pure decisions), `model/job.py` (records), the application
controller (ignores instances of kind job), `server/api/jobs.py`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from corral.jobs import cron, dag
from corral.jobs.runs import RunStep, advance, ended, history
from corral.model.app import Application, AppStatus
from corral.model.application import JobSpec, job_hash
from corral.model.instance import (
    TERMINAL_STATES,
    DesiredState,
    Instance,
    InstanceId,
    InstanceState,
)
from corral.model.job import JobRun, JobRunId, JobRunState, JobState, RunCause, RunSummary
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.index import IdsInUse
from corral.server.records import Txn, Versioned

__all__ = ["CONTROLLER", "job_event", "reconcile_jobs", "run_id"]

R = JobRunState
S = InstanceState


def run_id(namespace: str, app: str, job: str, number: int) -> JobRunId:
    return JobRunId(f"{namespace}/{app}/{job}/{number}")


def job_event(txn: Txn, run: JobRun, type: str, message: str) -> None:
    """An event on topic `job`, keyed `<ns>/<app>/<job>`, about one run."""
    txn.event("job", f"{run.namespace}/{run.app}/{run.job}", type, message, {
        "app": run.app, "namespace": run.namespace, "job": run.job, "run": run.number,
        "state": run.state, "cause": run.cause, "attempt": run.attempt,
        "exit_code": run.exit_code, "reason": run.reason})


@dataclass(slots=True)
class _Job:
    """One job's records during a pass: what was read, and what changed."""

    name: str
    spec: JobSpec | None  # None: removed from the application
    state: JobState
    state_rev: int  # 0: not stored yet
    stored_state: JobState | None
    runs: dict[int, JobRun] = field(default_factory=dict)
    revs: dict[int, int] = field(default_factory=dict)  # stored runs' mod_revision
    changed: set[int] = field(default_factory=set)

    def active(self) -> list[JobRun]:
        return sorted((r for r in self.runs.values() if r.active), key=lambda r: r.number)


class _AppPass:
    """One application's pass: reads are given, writes collect in one transaction."""

    def __init__(self, ctx: ServerContext, app: Application, jobs: dict[str, _Job],
                 instances: list[Versioned[Instance]], taken: IdsInUse, now: float) -> None:
        self.ctx = ctx
        self.app = app
        self.jobs = jobs
        self.now = now
        self.txn = ctx.records.txn()
        self.taken = taken
        self.instances: dict[str, Instance] = {i.record.id: i.record for i in instances}
        self.inst_revs: dict[str, int] = {i.record.id: i.mod_revision for i in instances}
        self.inst_dirty: set[str] = set()
        self.wake: list[float] = []

    # --- records ---------------------------------------------------------------------------

    def put_run(self, job: _Job, run: JobRun) -> None:
        if job.runs.get(run.number) != run:
            job.runs[run.number] = run
            job.changed.add(run.number)

    def new_run(self, job: _Job, *, scheduled_at: float, cause: RunCause, reason: str,
                state: JobRunState = R.PENDING, number: int | None = None, attempt: int = 1,
                retry_of: int | None = None) -> JobRun:
        if number is None:
            number = job.state.last_number + 1
            job.state = dataclasses.replace(job.state, last_number=number)
        final = state != R.PENDING
        run = JobRun(id=run_id(self.app.namespace, self.app.name, job.name, number),
                     namespace=self.app.namespace, app=self.app.name, job=job.name,
                     number=number, version=self.app.version, scheduled_at=scheduled_at,
                     cause=cause, attempt=attempt, retry_of=retry_of, state=state,
                     reason=reason, created_at=self.now, updated_at=self.now,
                     finished_at=self.now if final else None)
        self.put_run(job, run)
        what = f"{run.app}/{run.job} run #{number}"
        if state == R.PENDING:
            when = "" if scheduled_at <= self.now else f", due in {scheduled_at - self.now:g}s"
            job_event(self.txn, run, "run-created", f"{what} created ({cause}{when}): {reason}")
        else:
            job_event(self.txn, run, str(state), f"{what} {state}: {reason}")
        return run

    def instances_of(self, job: str, number: int | None = None) -> list[Instance]:
        return sorted((i for i in self.instances.values() if i.service == job
                       and (number is None or i.run == number)),
                      key=lambda i: (i.run, i.slot, i.created_at, i.id))

    def _put_instance(self, inst: Instance) -> None:
        self.instances[inst.id] = inst
        self.inst_dirty.add(inst.id)

    def create_instances(self, job: _Job, run: JobRun, indexes: Iterable[int]) -> JobRun:
        assert job.spec is not None
        spec = job.spec
        created: list[str] = []
        for index in indexes:
            iid = self.ctx.new_id()
            while iid in self.taken:
                iid = self.ctx.new_id()
            self.taken.add(iid)
            inst = Instance(
                id=InstanceId(iid), namespace=run.namespace, app=run.app, service=job.name,
                kind="job", slot=index, run=run.number, attempt=run.attempt,
                version=self.app.version, spec_hash=job_hash(spec), resources=spec.resources,
                driver=spec.isolation.driver, created_at=self.now, updated_at=self.now,
                reason="waiting for placement")
            self.inst_revs[inst.id] = 0
            self._put_instance(inst)
            created.append(iid)
            self.txn.event("instance", iid, "pending", f"{run.app}/{job.name} instance {iid} "
                           f"created for run #{run.number} (completion index {index})",
                           {"app": run.app, "namespace": run.namespace, "service": job.name,
                            "kind": "job", "run": run.number, "version": self.app.version,
                            "slot": index})
        version = run.version if run.instances else self.app.version
        return dataclasses.replace(run, instances=(*run.instances, *created), version=version,
                                   updated_at=self.now)

    def stop(self, inst: Instance, reason: str) -> None:
        """Stop one instance of a job: at once if nothing runs (never placed, or ended),
        else by asking its agent."""
        if inst.state in TERMINAL_STATES or \
                (inst.desired == DesiredState.STOP and not ended(inst)):
            return
        payload = {"app": inst.app, "namespace": inst.namespace, "service": inst.service,
                   "kind": "job", "run": inst.run, "reason": reason}
        if inst.node is None or inst.state == S.PENDING or ended(inst):
            self._put_instance(dataclasses.replace(
                inst, desired=DesiredState.STOP, state=S.STOPPED, reason=reason,
                updated_at=self.now))
            self.txn.event("instance", inst.id, "stopped", f"{inst.app}/{inst.service} "
                           f"instance {inst.id} stopped: {reason}",
                           {**payload, "state": "stopped", "exit_code": inst.exit_code})
            return
        self._put_instance(dataclasses.replace(inst, desired=DesiredState.STOP, reason=reason,
                                               updated_at=self.now))
        self.txn.event("instance", inst.id, "stop-requested", f"{inst.app}/{inst.service} "
                       f"instance {inst.id} on {inst.node}: stop requested ({reason})",
                       {**payload, "node": inst.node})

    def cancel(self, job: _Job, run: JobRun, reason: str) -> None:
        if not run.active:
            return
        run = dataclasses.replace(run, state=R.CANCELLED, reason=reason, finished_at=self.now,
                                  updated_at=self.now)
        self.put_run(job, run)
        job_event(self.txn, run, "cancelled", f"{run.app}/{run.job} run #{run.number} "
                                              f"cancelled: {reason}")

    # --- steps -----------------------------------------------------------------------------

    def step(self, job: _Job, run: JobRun) -> None:
        assert job.spec is not None
        result: RunStep = advance(run=run, spec=job.spec,
                                  instances=self.instances_of(job.name, run.number),
                                  now=self.now)
        new = result.run
        for iid in result.completed:
            self.stop(self.instances[iid], f"completed (exit 0); run #{run.number}")
        if result.create:
            new = self.create_instances(job, new, result.create)
        self.put_run(job, new)
        for type_, message in result.events:
            job_event(self.txn, new, type_, message)
        if run.state != new.state:
            counts = {R.SUCCEEDED: "succeeded", R.FAILED: "failed", R.MISSED: "missed"}
            counter = counts.get(new.state)
            if counter is not None:
                job.state = dataclasses.replace(
                    job.state, **{counter: getattr(job.state, counter) + 1})
        if result.retry is not None:
            retry = result.retry
            self.new_run(job, scheduled_at=retry.scheduled_at, cause=RunCause.RETRY,
                         reason=retry.reason, attempt=retry.attempt, retry_of=retry.retry_of)
        if result.wake_at is not None:
            self.wake.append(result.wake_at)

    def schedule(self, job: _Job) -> None:
        assert job.spec is not None
        decision = cron.decide(job=job.spec, state=job.state, active=job.active(),
                               now=self.now)
        for rid in decision.cancel:
            for run in job.active():
                if run.id == rid:
                    self.cancel(job, run, decision.cancel_reason)
        job.state = dataclasses.replace(decision.state, last_run=job.state.last_run)
        for planned in decision.runs:
            reason = planned.reason
            if decision.note and planned.state == R.MISSED:
                reason = f"{reason} ({decision.note})"
            self.new_run(job, scheduled_at=planned.scheduled_at, cause=planned.cause,
                         reason=reason, state=planned.state, number=planned.number)
        if decision.wake_at is not None:
            self.wake.append(decision.wake_at)

    def trigger(self) -> None:
        specs = {n: j.spec for n, j in self.jobs.items() if j.spec is not None}
        runs = [r for j in self.jobs.values() for r in j.runs.values()]
        states = {n: j.state for n, j in self.jobs.items()}
        for trig in dag.triggered(specs, runs, states=states):
            job = self.jobs[trig.job]
            number = job.state.last_number + 1
            for run in job.active():
                if run.id in trig.cancel:
                    self.cancel(job, run, f"replaced by run #{number} (concurrency: replace)")
            self.new_run(job, scheduled_at=self.now, cause=RunCause.AFTER, reason=trig.reason)

    def sweep(self, job: _Job) -> None:
        """Instances of final runs, or of runs that no longer exist, are stopped."""
        for inst in self.instances_of(job.name):
            run = job.runs.get(inst.run)
            if run is None:
                self.stop(inst, f"run #{inst.run} no longer exists")
            elif not run.active:
                self.stop(inst, f"run #{run.number} {run.state}: {run.reason}")

    def prune(self, job: _Job) -> None:
        assert job.spec is not None
        for run in history(list(job.runs.values()), job.spec.history_limit):
            if run.number in job.changed or run.number not in job.revs:
                continue
            self.txn.delete(keys.job_run(run.namespace, run.app, run.job, run.number),
                            expect=job.revs[run.number])
            del job.runs[run.number]

    def write(self, job: _Job) -> None:
        if job.runs:
            newest = job.runs[max(job.runs)]
            summary = RunSummary(number=newest.number, state=newest.state,
                                 scheduled_at=newest.scheduled_at,
                                 finished_at=newest.finished_at, exit_code=newest.exit_code)
            if summary != job.state.last_run:
                job.state = dataclasses.replace(job.state, last_run=summary)
        ns, app = self.app.namespace, self.app.name
        if job.state != job.stored_state:
            self.txn.put(keys.job_state(ns, app, job.name), job.state, expect=job.state_rev)
        for number in sorted(job.changed):
            self.txn.put(keys.job_run(ns, app, job.name, number), job.runs[number],
                         expect=job.revs.get(number, 0))

    def finish(self) -> None:
        for iid in sorted(self.inst_dirty):
            self.txn.put(keys.instance(iid), self.instances[iid],
                         expect=self.inst_revs.get(iid, 0))

    # --- the pass --------------------------------------------------------------------------

    def run_active(self) -> None:
        live = {n: j for n, j in sorted(self.jobs.items()) if j.spec is not None}
        before = {n: set(j.runs) for n, j in live.items()}
        for job in live.values():
            for run in job.active():
                self.step(job, run)
        for job in live.values():
            self.schedule(job)
        self.trigger()
        for name, job in live.items():
            for number in sorted(set(job.runs) - before[name]):
                run = job.runs[number]
                if run.active:  # created this pass: due ones get their instances now
                    self.step(job, run)
            self.sweep(job)
            self.prune(job)
            self.write(job)
        for _, job in sorted(self.jobs.items()):
            if job.spec is None:
                self.remove(job, "job removed from the application")

    def remove(self, job: _Job, reason: str) -> None:
        """A job no longer in the spec: cancel, stop, and once nothing of it runs, forget."""
        ns, app = self.app.namespace, self.app.name
        if job.stored_state is None and not job.runs:
            self.sweep(job)  # stray instances, nothing else to forget
            return
        if all(i.state in TERMINAL_STATES for i in self.instances_of(job.name)) and \
                not job.active():
            self.txn.delete(keys.job_state(ns, app, job.name))
            self.txn.delete(keys.job_runs(ns, app, job.name), prefix=True)
            self.txn.event("job", f"{ns}/{app}/{job.name}", "removed",
                           f"{app}/{job.name} removed: {reason}; its runs are forgotten",
                           {"app": app, "namespace": ns, "job": job.name})
            return
        for run in job.active():
            self.cancel(job, run, reason)
        self.sweep(job)
        self.write(job)

    def cancel_all(self, reason: str) -> None:
        """The application is being deleted: the application controller stops the
        instances and removes the records once no run is active."""
        for _, job in sorted(self.jobs.items()):
            for run in job.active():
                self.cancel(job, run, reason)
            for number in sorted(job.changed):
                self.txn.put(keys.job_run(job.state.namespace, job.state.app, job.name,
                                          number), job.runs[number],
                             expect=job.revs.get(number, 0))


def _jobs_of(app: Application, states: list[Versioned[JobState]],
             runs: list[Versioned[JobRun]], instances: list[Versioned[Instance]],
             now: float) -> dict[str, _Job]:
    jobs: dict[str, _Job] = {}
    stored = {s.record.job: s for s in states}
    names = set(app.spec.jobs) | set(stored) | {r.record.job for r in runs} | \
        {i.record.service for i in instances}
    for name in sorted(names):
        item = stored.get(name)
        state = item.record if item else JobState(namespace=app.namespace, app=app.name,
                                                  job=name, since=now)
        jobs[name] = _Job(name=name, spec=app.spec.jobs.get(name), state=state,
                          state_rev=item.mod_revision if item else 0,
                          stored_state=item.record if item else None)
    for run_item in runs:
        run = run_item.record
        jobs[run.job].runs[run.number] = run
        jobs[run.job].revs[run.number] = run_item.mod_revision
    return jobs


async def reconcile_jobs(ctx: ServerContext) -> float | None:
    """Returns the seconds until time alone changes something (a fire time, a retry's
    start, a deadline, a timeout)."""
    now = ctx.clock.now()
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    state_items, _ = await ctx.records.scan(JobState, keys.JOBS)
    run_items, _ = await ctx.records.scan(JobRun, keys.JOB_RUNS)
    index = ctx.records.index
    await index.ready()
    taken = IdsInUse(index)
    states: dict[tuple[str, str], list[Versioned[JobState]]] = defaultdict(list)
    for s in state_items:
        states[(s.record.namespace, s.record.app)].append(s)
    runs: dict[tuple[str, str], list[Versioned[JobRun]]] = defaultdict(list)
    for r in run_items:
        runs[(r.record.namespace, r.record.app)].append(r)
    # Job instances only, per application, from the index (never a pass over every
    # instance); read after the last await, with the records above.
    insts: dict[tuple[str, str], list[Versioned[Instance]]] = {
        (ns, name): found for ns, name in index.apps()
        if (found := index.jobs_of_app(ns, name))}
    wake: list[float] = []
    known = set()
    for item in apps:
        app = item.record
        ident = (app.namespace, app.name)
        known.add(ident)
        if not app.spec.jobs and not (states.get(ident) or runs.get(ident) or
                                      insts.get(ident)):
            continue
        jobs = _jobs_of(app, states.get(ident, []), runs.get(ident, []),
                        insts.get(ident, []), now)
        work = _AppPass(ctx, app, jobs, insts.get(ident, []), taken, now)
        if app.status == AppStatus.DELETING:
            work.cancel_all("application deleted")
        else:
            work.run_active()
        work.finish()
        wake += work.wake
        if work.txn.ops:
            await work.txn.commit()  # a lost race is retried on the winner's wake-up
    # Records of an application that no longer exists (it is removed with them; this
    # only tidies what a crash or a race left).
    txn = ctx.records.txn()
    for ns, name in sorted((set(states) | set(runs)) - known):
        txn.delete(keys.app_job_states(ns, name), prefix=True)
        txn.delete(keys.app_job_runs(ns, name), prefix=True)
    if txn.ops:
        await txn.commit()
    return max(0.0, min(wake) - now) if wake else None


CONTROLLER = Controller(name="jobs",
                        watches=(keys.APPS, keys.INSTANCES, keys.JOBS, keys.JOB_RUNS),
                        reconcile=reconcile_jobs, resync=30.0)
