"""A job run: one execution (or one scheduled time not executed) of a job, and a job's state.

```
 created              placed, started                exit 0 (every completion)
 pending -------------------------------> running ---------------------------> succeeded
    |                                        |
    | not started within starting_deadline   | exit != 0, timeout, node lost
    +----------------------------> missed    +-----------------------------> failed
    |                                        |      (a retry is a new run, cause retry)
    | could not be placed or started         |
    +----------------------------------------|-----------------------------> failed
    | cancel: concurrency replace, app deleted, a cancel request
    +----------------------------------------+-----------------------------> cancelled

 created missed:  a fire time not started (older than starting_deadline, or superseded)
 created skipped: a fire time that came while a run was active (concurrency: forbid)
```

A run is created `pending` (to start), or directly `missed` or `skipped` (a scheduled time
recorded as not started). `succeeded`, `failed`, `missed`, `cancelled` and `skipped` are
final. Every record has a number, counting up per job, that `corral jobs runs` shows.

`JobState` is what the cron controller keeps per job between passes (`jobs/cron.py`): the
last scheduled time acted on, stored with the runs it created in one transaction, so that a
server restart neither loses nor duplicates a run; the counters `corral jobs` shows; a
summary of the newest run.

Neighbours: `jobs/cron.py` and `jobs/dag.py` decide which runs to create; the job
controller writes them and their instances (`model/instance.py`, kind `job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NewType

__all__ = [
    "ACTIVE_RUN_STATES", "FINAL_RUN_STATES", "INITIAL_RUN_STATES", "TRANSITIONS", "JobRun",
    "JobRunId", "JobRunState", "JobState", "RunCause", "RunSummary", "can_transition",
]

JobRunId = NewType("JobRunId", str)


class RunCause(StrEnum):
    SCHEDULE = "schedule"  # a fire time of the job's schedule
    MANUAL = "manual"  # `corral run APP/JOB`
    AFTER = "after"  # every parent (`after:`) succeeded
    RETRY = "retry"  # the previous attempt failed and `retries` allows another


class JobRunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSED = "missed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


R = JobRunState
TRANSITIONS: dict[JobRunState, frozenset[JobRunState]] = {
    # -> failed: it could not be placed or started (artifact, driver); -> succeeded: an
    # agent that restarted found the run already ended well.
    R.PENDING: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED, R.MISSED, R.CANCELLED}),
    R.RUNNING: frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
    R.MISSED: frozenset(),
    R.CANCELLED: frozenset(),
    R.SKIPPED: frozenset(),
}
# The states a run may be created in.
INITIAL_RUN_STATES = frozenset({R.PENDING, R.MISSED, R.SKIPPED})
# Counted by `concurrency` and by "no double triggering": something may still run.
ACTIVE_RUN_STATES = frozenset({R.PENDING, R.RUNNING})
FINAL_RUN_STATES = frozenset(set(R) - ACTIVE_RUN_STATES)


def can_transition(old: JobRunState, new: JobRunState) -> bool:
    return old == new or new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRun:
    id: JobRunId
    namespace: str
    app: str
    job: str
    number: int  # 1, 2, ... per job, in order of creation
    version: int = 0  # the application version whose job spec it runs
    # When it was due: the schedule's fire time (cause schedule), else when it was asked
    # for or triggered. A child's parents must have succeeded after this (`jobs/dag.py`).
    scheduled_at: float
    cause: RunCause = RunCause.SCHEDULE
    attempt: int = 1  # 1 + the retries before it
    retry_of: int | None = None  # the number of the first attempt, for a retry
    state: JobRunState = JobRunState.PENDING
    exit_code: int | None = None
    reason: str = ""  # why it is in its state, for people
    instances: tuple[str, ...] = ()  # the instances it ran in (parallelism, completions)
    # Those of `instances` that exited 0, counted towards the job's `completions` (kept
    # here because a completed instance is stopped, and later forgotten, at once).
    completed: tuple[str, ...] = ()
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None  # set on every final state, missed and skipped included

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUN_STATES


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """The newest run of a job, as `corral jobs` shows it."""

    number: int
    state: JobRunState
    scheduled_at: float
    finished_at: float | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobState:
    namespace: str
    app: str
    job: str
    # The schedule and time zone the times below belong to ("" for a job without one): a
    # changed schedule or time zone starts afresh from the time of the change.
    schedule: str = ""
    time_zone: str = "UTC"
    # When scheduling began (the job was created, or its schedule changed): fire times at or
    # before it are not due.
    since: float
    # The last fire time acted on (started, missed or skipped); None before the first.
    last_fire: float | None = None
    last_number: int = 0  # the highest run number given out
    succeeded: int = 0
    failed: int = 0
    missed: int = 0  # every missed fire time, recorded as a run or only counted
    skipped: int = 0
    last_run: RunSummary | None = None
