"""One run's progress: what the job controller does with an active run and its instances
at `now`, and which final runs history keeps. Pure, like `cron.py` and `dag.py`.

`advance(run=..., spec=..., instances=..., now=...)` reads a `pending` or `running` run,
its job's spec and the run's instances (`Instance` records of kind job) and returns a
`RunStep`: the run's new record, the completion indexes to create instances for, the
completed instances to stop, the retry to create if the run failed, its events, and when
time alone changes the answer. The rules (Kubernetes' non-indexed Job where the issue is
silent):

- A `pending` run waits until its `scheduled_at` (a retry's backoff), then gets
  `min(parallelism, completions)` instances. It turns `running` once one of them is placed
  on a node (`started_at` = then). Not placed within `starting_deadline` of its
  `scheduled_at`: `missed` (without a deadline it waits for a node however long).
- Each instance that exits 0 counts towards `completions` (`JobRun.completed`) and is
  stopped (it holds resources while `exited`); more are created, `parallelism` at a time,
  until `completions` exited 0: `succeeded`. Each instance gets the next completion index.
- One instance failing fails the run, whatever the others do: exit code != 0, failed to
  start or fetch (`failed`), lost with its node, stopped by anything but the job
  controller. `timeout` (from `started_at`) fails it too, reason "timed out after 30s".
  The run records the exit code and reason; the controller stops what is left of it.
- A failed run with `attempt <= retries` is followed by a new run (cause `retry`,
  `attempt + 1`, `retry_of` the first attempt's number), due after
  `backoff * 2^(attempt-1)`, at most `MAX_RETRY_DELAY` (10 minutes, Kubernetes' cap too).

`history(runs, limit)` says which final runs to forget: all but the newest `limit`, never
the newest run nor the newest that ran to an end (a parent's success that `dag.triggered`
may still need).

Neighbours: `model/job.py` (records, states), `jobs/cron.py` and `jobs/dag.py` (which runs
to create), `server/controllers/jobs.py` (writes all of it in one transaction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from corral.model.application import JobSpec
from corral.model.instance import TERMINAL_STATES, Instance, InstanceId, InstanceState
from corral.model.job import FINAL_RUN_STATES, JobRun, JobRunState

__all__ = ["MAX_RETRY_DELAY", "RetryPlan", "RunStep", "advance", "ended", "history",
           "retry_delay"]

MAX_RETRY_DELAY = 600.0
R = JobRunState
S = InstanceState
_RAN = frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPlan:
    """The next attempt of a failed run, for the controller to number and store."""

    scheduled_at: float
    attempt: int
    retry_of: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStep:
    run: JobRun  # the new record (the same object when nothing changed)
    create: tuple[int, ...] = ()  # completion indexes of instances to create now
    completed: tuple[InstanceId, ...] = ()  # instances that just exited 0: stop them
    retry: RetryPlan | None = None
    events: tuple[tuple[str, str], ...] = ()  # (type, message), in order
    wake_at: float | None = None  # when time alone changes the answer


def retry_delay(backoff: float, attempt: int) -> float:
    """How long after attempt `attempt` (1, 2, ...) failed the next one starts."""
    return min(backoff * 2.0 ** min(max(attempt - 1, 0), 32), MAX_RETRY_DELAY)


def ended(inst: Instance) -> bool:
    """A job's instance whose process will not run again: it exited, failed or stopped."""
    return inst.state in (S.EXITED, S.FAILED) or inst.state in TERMINAL_STATES


def _failure(run: JobRun, instances: Sequence[Instance]) -> tuple[Instance, str] | None:
    """The first instance (by completion index) whose end fails the run, and why."""
    for inst in sorted(instances, key=lambda i: (i.slot, i.created_at, i.id)):
        if inst.id in run.completed:
            continue
        why = inst.reason or str(inst.state)
        if inst.state == S.FAILED or (inst.state == S.EXITED and inst.exit_code != 0):
            return inst, f"instance {inst.id} failed: {why}"
        if inst.state == S.LOST:
            return inst, f"instance {inst.id} lost: {why}"
        if inst.state == S.STOPPED:
            return inst, f"instance {inst.id} stopped before it completed: {why}"
    return None


def _finish(run: JobRun, state: JobRunState, now: float, reason: str,
            exit_code: int | None = None) -> JobRun:
    return dataclasses.replace(run, state=state, reason=reason, exit_code=exit_code,
                               finished_at=now, updated_at=now)


def _what(run: JobRun) -> str:
    return f"{run.app}/{run.job} run #{run.number}"


def advance(*, run: JobRun, spec: JobSpec, instances: Sequence[Instance],
            now: float) -> RunStep:
    """The step for `run` at `now`. `instances`: the run's instances (every one still
    stored; `run.instances` remembers those already forgotten)."""
    if not run.active:
        return RunStep(run=run)
    if run.state == R.PENDING and not run.instances and run.scheduled_at > now:
        return RunStep(run=run, wake_at=run.scheduled_at)
    events: list[tuple[str, str]] = []
    wake: list[float] = []
    deadline = spec.starting_deadline
    if run.state == R.PENDING:
        if any(i.node is not None and i.state != S.PENDING for i in instances):
            run = dataclasses.replace(run, state=R.RUNNING, started_at=now, updated_at=now,
                                      reason="started")
            events.append(("started", f"{_what(run)} started"))
        elif deadline is not None and now - run.scheduled_at > deadline:
            reason = f"not started within starting_deadline ({deadline:g}s) of its time"
            run = _finish(run, R.MISSED, now, reason)
            return RunStep(run=run, events=(("missed", f"{_what(run)} missed: {reason}"),))
        elif deadline is not None:
            wake.append(run.scheduled_at + deadline)

    failure: tuple[Instance | None, str] | None = _failure(run, instances)
    if failure is None and run.state == R.RUNNING and spec.timeout is not None:
        assert run.started_at is not None
        if now - run.started_at >= spec.timeout:
            failure = None, f"timed out after {spec.timeout:g}s"
        else:
            wake.append(run.started_at + spec.timeout)
    if failure is not None:
        inst, reason = failure
        run = _finish(run, R.FAILED, now, reason, inst.exit_code if inst else None)
        events.append(("failed", f"{_what(run)} failed: {reason}"))
        retry = None
        if run.attempt <= spec.retries:
            delay = retry_delay(spec.backoff, run.attempt)
            first = run.retry_of or run.number
            retry = RetryPlan(
                scheduled_at=now + delay, attempt=run.attempt + 1, retry_of=first,
                reason=f"attempt {run.attempt + 1} of {spec.retries + 1}: run #{run.number} "
                       f"failed; starting in {delay:g}s")
            events.append(("retrying", f"{_what(run)} failed; attempt {run.attempt + 1} "
                                       f"of {spec.retries + 1} in {delay:g}s"))
        return RunStep(run=run, retry=retry, events=tuple(events))

    done = [i.id for i in sorted(instances, key=lambda i: i.slot)
            if i.state == S.EXITED and i.exit_code == 0 and i.id not in run.completed]
    if done:
        run = dataclasses.replace(run, completed=(*run.completed, *done), updated_at=now)
    if len(run.completed) >= spec.completions:
        count = len(run.completed)
        reason = "completed" if count == 1 else f"{count} completions"
        run = _finish(run, R.SUCCEEDED, now, reason, 0)
        events.append(("succeeded", f"{_what(run)} succeeded"))
        return RunStep(run=run, completed=tuple(done), events=tuple(events))

    unfinished = sum(1 for i in instances if i.id not in run.completed and not ended(i))
    want = min(spec.parallelism, spec.completions - len(run.completed)) - unfinished
    # Every instance of a run either completes or fails it, so indexes never repeat.
    create = tuple(range(len(run.instances), len(run.instances) + max(want, 0)))
    return RunStep(run=run, create=create, completed=tuple(done), events=tuple(events),
                   wake_at=min(wake, default=None))


def history(runs: Sequence[JobRun], limit: int) -> list[JobRun]:
    """The final runs of one job to forget: beyond the newest `limit` final ones, except
    the newest run and the newest run that ran to an end (succeeded, failed, cancelled)."""
    final = sorted((r for r in runs if r.state in FINAL_RUN_STATES), key=lambda r: r.number,
                   reverse=True)
    keep = {r.number for r in final[:limit]}
    if runs:
        keep.add(max(r.number for r in runs))
    ran = [r for r in final if r.state in _RAN]
    if ran:
        keep.add(ran[0].number)
    return [r for r in final if r.number not in keep]
