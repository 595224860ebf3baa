"""The cron controller's decision for one scheduled job: what to start, record and cancel now.

`decide(job=..., state=..., active=..., now=...)` reads the job's spec, its stored
`JobState` (`model/job.py`) and its active runs, and returns a `CronDecision`: the runs to
create (at most one `pending`, to start; `missed` and `skipped` records), the active runs to
cancel, the job's new state, and when to wake up next. It is pure: the job controller
writes the new state and the runs in one transaction, then sleeps until `wake_at` or a
change of the job.

The rules, Kubernetes CronJob's unless said otherwise:

- Due fire times are those in (`last_fire`, `now`] (from `since` before the first fire).
  Only the latest due time may start; each earlier one is `missed` ("a later fire time was
  due as well"): after the server was down for a day, an hourly job runs once, not 24 times.
- `starting_deadline` (Chronos' epsilon): the latest due time is `missed` too when it is
  more than that old. Without a deadline it starts however late it is.
- Missed times are bounded: the newest `MISSED_RECORDED` become `missed` run records, older
  ones are only counted in `JobState.missed` and summarised in `note`, and counting stops
  past `COUNT_LIMIT` ("more than 100").
- `concurrency: allow` starts regardless of active runs; `forbid` records the time
  `skipped` while a run is active (Nomad's `prohibit_overlap`: skipped, not postponed;
  Kubernetes instead tries again until the deadline); `replace` cancels the active runs and
  starts.
- `suspend: true` starts and records nothing and leaves `last_fire` alone. On resume the
  times that passed meanwhile are due like any others (Kubernetes): beyond
  `starting_deadline` they are missed, and without a deadline the latest starts at once.
  Set a deadline to resume without catching up.
- A changed `schedule` or `time_zone` starts afresh: times before the change are not due.
- `last_fire` becomes the latest due time whatever became of it. Restart safety follows:
  if the server dies before the transaction, deciding again from the stored state finds
  the same due times and gives the same run numbers (nothing lost); after it, `last_fire`
  covers them (nothing twice).

Neighbours: `jobs/schedule.py` (fire times), `jobs/dag.py` (runs triggered by parents),
`model/job.py` (records). The job controller (server) applies decisions.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from corral.jobs.schedule import Schedule, fires_between, parse_schedule
from corral.model.application import JobSpec
from corral.model.job import (
    JobRun,
    JobRunId,
    JobRunState,
    JobState,
    RunCause,
    RunSummary,
)

__all__ = ["COUNT_LIMIT", "MISSED_RECORDED", "CronDecision", "PlannedRun", "decide"]

MISSED_RECORDED = 10
COUNT_LIMIT = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedRun:
    """A run record to create: `pending` to start it, or `missed` / `skipped`."""

    number: int
    scheduled_at: float
    state: JobRunState
    reason: str
    cause: RunCause = RunCause.SCHEDULE

    def record(self, *, run_id: JobRunId, job: JobState, version: int,
               now: float) -> JobRun:
        """The `JobRun` to store, for the controller that picked `run_id`."""
        final = self.state != JobRunState.PENDING
        return JobRun(id=run_id, namespace=job.namespace, app=job.app, job=job.job,
                      number=self.number, version=version, scheduled_at=self.scheduled_at,
                      cause=self.cause, state=self.state, reason=self.reason, created_at=now,
                      updated_at=now, finished_at=now if final else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class CronDecision:
    state: JobState  # to store, in the same transaction as the runs
    runs: tuple[PlannedRun, ...] = ()  # in number order; at most one pending, the last
    cancel: tuple[JobRunId, ...] = ()  # active runs to cancel (concurrency: replace)
    cancel_reason: str = ""
    wake_at: float | None = None  # the next fire time; None: only a change of the job
    note: str = ""  # for an event: missed times summarised, an unusable schedule

    @property
    def start(self) -> PlannedRun | None:
        return next((r for r in self.runs if r.state == JobRunState.PENDING), None)


def decide(*, job: JobSpec, state: JobState, active: Sequence[JobRun],
           now: float) -> CronDecision:
    """What the cron controller does for `job` at `now`. `active` are the job's runs in an
    active state (pending, running), whatever started them."""
    if job.schedule is None:
        return CronDecision(state=state)
    if (state.schedule, state.time_zone) != (job.schedule, job.time_zone):
        state = dataclasses.replace(state, schedule=job.schedule, time_zone=job.time_zone,
                                    since=now, last_fire=None)
    try:
        schedule = parse_schedule(job.schedule, job.time_zone)
    except ValueError as exc:
        return CronDecision(state=state, note=f"invalid schedule {job.schedule!r}: {exc}")
    if job.suspend:
        return CronDecision(state=state)
    earliest = state.last_fire if state.last_fire is not None else state.since
    if now <= earliest:  # nothing new (or the clock went back): wait for the next time
        return CronDecision(state=state, wake_at=schedule.next_after(earliest))
    due, total, capped = _due(schedule, earliest, now)
    wake_at = schedule.next_after(now)
    if not due:
        return CronDecision(state=state, wake_at=wake_at)

    latest = due[-1]
    deadline = job.starting_deadline
    too_late = deadline is not None and now - latest > deadline
    missed = due if too_late else due[:-1]
    missed_total = total if too_late else total - 1
    runs: list[PlannedRun] = []
    number = state.last_number
    for t in missed[-MISSED_RECORDED:]:
        number += 1
        late = deadline is not None and now - t > deadline
        reason = f"not started within starting_deadline ({deadline:g}s) of its time" if late \
            else f"a later fire time ({_iso(latest)}) was due as well; only the latest starts"
        runs.append(PlannedRun(number=number, scheduled_at=t, state=JobRunState.MISSED,
                               reason=reason))
    note = ""
    unrecorded = missed_total - len(runs)
    if unrecorded > 0:
        count = f"more than {COUNT_LIMIT}" if capped else str(missed_total)
        note = (f"{count} fire times missed up to {_iso(missed[-1])}; the newest {len(runs)} "
                f"recorded as runs, {'the others' if capped else unrecorded} only counted")

    cancel: tuple[JobRunId, ...] = ()
    cancel_reason = ""
    skipped = 0
    if not too_late:
        number += 1
        blocking = sorted((r for r in active if r.active), key=lambda r: r.number)
        if blocking and job.concurrency == "forbid":
            skipped = 1
            runs.append(PlannedRun(
                number=number, scheduled_at=latest, state=JobRunState.SKIPPED,
                reason=f"run #{blocking[-1].number} is still {blocking[-1].state} "
                       "(concurrency: forbid)"))
        else:
            if blocking and job.concurrency == "replace":
                cancel = tuple(r.id for r in blocking)
                cancel_reason = f"replaced by run #{number} (concurrency: replace)"
            runs.append(PlannedRun(number=number, scheduled_at=latest,
                                   state=JobRunState.PENDING, reason="scheduled"))
    newest = runs[-1]
    state = dataclasses.replace(
        state, last_fire=latest, last_number=number, missed=state.missed + missed_total,
        skipped=state.skipped + skipped,
        last_run=RunSummary(number=newest.number, state=newest.state,
                            scheduled_at=newest.scheduled_at,
                            finished_at=None if newest.state == JobRunState.PENDING else now))
    return CronDecision(state=state, runs=tuple(runs), cancel=cancel,
                        cancel_reason=cancel_reason, wake_at=wake_at, note=note)


def _due(schedule: Schedule, after: float, until: float) -> tuple[list[float], int, bool]:
    """The newest `MISSED_RECORDED + 1` fire times in (after, until], how many there are,
    and whether that count stopped at `COUNT_LIMIT` (then it is COUNT_LIMIT + 1)."""
    want = MISSED_RECORDED + 1
    first = fires_between(schedule, after, until, limit=COUNT_LIMIT + 1)
    if len(first) <= COUNT_LIMIT:
        return first[-want:], len(first), False
    return (first + _newest(schedule, first[-1], until, want))[-want:], COUNT_LIMIT + 1, True


def _newest(schedule: Schedule, after: float, until: float, n: int) -> list[float]:
    """The newest `n` fire times in (after, until], found by halving the span (a schedule
    only walks forward), so a long outage costs a few hundred steps, not one per time."""
    found = fires_between(schedule, after, until, limit=n + 1)
    if len(found) <= n or until - after < 1e-3:
        return found[-n:]
    middle = (after + until) / 2
    right = _newest(schedule, middle, until, n)
    if len(right) >= n:
        return right
    return _newest(schedule, after, middle, n - len(right)) + right


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
