"""The cron controller's decision: due times, missed runs, concurrency, suspend, restarts.

Time is plain floats, or a `FakeClock` advanced to each `wake_at` as the controller would
sleep; nothing sleeps for real.
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from collections.abc import Sequence
from typing import Any

import pytest

from corral.jobs.cron import COUNT_LIMIT, MISSED_RECORDED, CronDecision, decide
from corral.model.application import JobSpec
from corral.model.job import JobRun, JobRunId, JobRunState, JobState
from corral.testing.clock import FakeClock
from corral.testing.factories import make_job_run

HOUR = 3600.0
MINUTE = 60.0
T0 = datetime.datetime(2026, 5, 4, tzinfo=datetime.UTC).timestamp()  # a Monday, 00:00Z
PENDING, MISSED, SKIPPED = JobRunState.PENDING, JobRunState.MISSED, JobRunState.SKIPPED


def job(schedule: str | None = "0 * * * *", **fields: Any) -> JobSpec:
    return JobSpec(command=("report",), schedule=schedule, **fields)


def fresh(spec: JobSpec, since: float) -> JobState:
    """What the controller stores the first time it sees a job."""
    return JobState(namespace="default", app="shop", job="report", schedule=spec.schedule or "",
                    time_zone=spec.time_zone, since=since)


def runs_of(decision: CronDecision) -> list[tuple[int, float, JobRunState]]:
    return [(r.number, r.scheduled_at, r.state) for r in decision.runs]


def active_run(number: int, state: JobRunState = JobRunState.RUNNING) -> JobRun:
    return make_job_run("report", number, state=state, scheduled_at=T0 - HOUR, app="shop")


# --- due times ------------------------------------------------------------------------------

def test_nothing_is_due_before_the_first_fire_time() -> None:
    spec = job()
    state = fresh(spec, T0 + 10 * MINUTE)
    decision = decide(job=spec, state=state, active=(), now=T0 + 10 * MINUTE)
    assert decision.runs == () and decision.state == state
    assert decision.wake_at == T0 + HOUR


def test_a_due_time_starts_one_run_and_moves_last_fire() -> None:
    spec = job()
    decision = decide(job=spec, state=fresh(spec, T0 + 10 * MINUTE), active=(),
                      now=T0 + HOUR + 2)
    assert runs_of(decision) == [(1, T0 + HOUR, PENDING)]
    assert decision.start is not None and decision.start.number == 1
    assert (decision.state.last_fire, decision.state.last_number) == (T0 + HOUR, 1)
    assert decision.state.last_run is not None
    assert decision.state.last_run.state == PENDING
    assert decision.wake_at == T0 + 2 * HOUR


def test_the_record_to_store() -> None:
    spec = job()
    decision = decide(job=spec, state=fresh(spec, T0), active=(), now=T0 + HOUR)
    assert decision.start is not None
    run = decision.start.record(run_id=JobRunId("r1"), job=decision.state, version=3,
                                now=T0 + HOUR)
    assert (run.id, run.app, run.job, run.number, run.version, run.state, run.cause) == (
        "r1", "shop", "report", 1, 3, PENDING, "schedule")
    assert run.finished_at is None


# --- restarts -------------------------------------------------------------------------------

def test_deciding_again_from_the_stored_state_starts_nothing_twice() -> None:
    spec = job()
    first = decide(job=spec, state=fresh(spec, T0), active=(), now=T0 + HOUR)
    stored = first.state
    # The server restarts and decides again, at the same time and a little later.
    for now in (T0 + HOUR, T0 + HOUR + 30, T0 + 2 * HOUR - 1):
        again = decide(job=spec, state=stored, active=(), now=now)
        assert again.runs == () and again.state == stored
        assert again.wake_at == T0 + 2 * HOUR


def test_a_crash_before_the_state_was_stored_loses_nothing() -> None:
    spec = job()
    before = fresh(spec, T0)
    first = decide(job=spec, state=before, active=(), now=T0 + HOUR)
    # Nothing was written: the restarted server decides from the old state, later.
    again = decide(job=spec, state=before, active=(), now=T0 + HOUR + 40)
    assert runs_of(again) == runs_of(first) == [(1, T0 + HOUR, PENDING)]


def test_a_long_outage_starts_only_the_latest_time() -> None:
    spec = job()
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0 + HOUR, last_number=1)
    decision = decide(job=spec, state=state, active=(), now=T0 + 6 * HOUR + 5 * MINUTE)
    assert runs_of(decision) == [
        (2, T0 + 2 * HOUR, MISSED), (3, T0 + 3 * HOUR, MISSED), (4, T0 + 4 * HOUR, MISSED),
        (5, T0 + 5 * HOUR, MISSED), (6, T0 + 6 * HOUR, PENDING)]
    assert "only the latest starts" in decision.runs[0].reason
    assert (decision.state.missed, decision.state.last_fire) == (4, T0 + 6 * HOUR)
    assert decision.note == ""


# --- starting_deadline ----------------------------------------------------------------------

def test_a_time_older_than_the_deadline_is_missed() -> None:
    spec = job(starting_deadline=10 * MINUTE)
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0)
    late = decide(job=spec, state=state, active=(), now=T0 + 2 * HOUR + 11 * MINUTE)
    assert runs_of(late) == [(1, T0 + HOUR, MISSED), (2, T0 + 2 * HOUR, MISSED)]
    assert all("starting_deadline (600s)" in r.reason for r in late.runs)
    assert late.start is None
    assert (late.state.missed, late.state.last_fire) == (2, T0 + 2 * HOUR)
    assert late.wake_at == T0 + 3 * HOUR
    # Within the deadline the latest still starts.
    in_time = decide(job=spec, state=state, active=(), now=T0 + 2 * HOUR + 10 * MINUTE)
    assert runs_of(in_time) == [(1, T0 + HOUR, MISSED), (2, T0 + 2 * HOUR, PENDING)]


def test_missed_times_are_bounded_recorded_newest_first_and_counted() -> None:
    spec = job("*/5 * * * *")
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0)
    # 30 fire times due: 29 missed, the newest 10 recorded, the rest counted.
    decision = decide(job=spec, state=state, active=(), now=T0 + 150 * MINUTE)
    missed = [r for r in decision.runs if r.state == MISSED]
    assert [r.scheduled_at for r in missed] == [T0 + m * MINUTE for m in range(100, 150, 5)]
    assert [r.number for r in decision.runs] == list(range(1, 12))
    assert decision.state.missed == 29
    assert decision.note == ("29 fire times missed up to 2026-05-04T02:25:00Z; the newest 10 "
                             "recorded as runs, 19 only counted")


def test_a_very_long_outage_stops_counting() -> None:
    spec = job("* * * * *")
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0)
    now = T0 + 3 * 24 * HOUR + 30  # 4320 fire times
    decision = decide(job=spec, state=state, active=(), now=now)
    assert len(decision.runs) == MISSED_RECORDED + 1
    assert [r.scheduled_at for r in decision.runs] == [
        now - 30 - m * MINUTE for m in range(MISSED_RECORDED, -1, -1)]
    assert decision.start is not None and decision.start.scheduled_at == now - 30
    assert decision.state.missed == COUNT_LIMIT
    assert decision.note.startswith(f"more than {COUNT_LIMIT} fire times missed")


# --- concurrency ----------------------------------------------------------------------------

def test_forbid_skips_a_time_while_a_run_is_active() -> None:
    spec = job(concurrency="forbid")
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0, last_number=7)
    decision = decide(job=spec, state=state, active=[active_run(7)], now=T0 + HOUR)
    assert runs_of(decision) == [(8, T0 + HOUR, SKIPPED)]
    assert decision.runs[0].reason == "run #7 is still running (concurrency: forbid)"
    assert (decision.state.skipped, decision.state.last_fire) == (1, T0 + HOUR)
    assert decision.cancel == ()
    # Skipped, not postponed: once run 7 ends, nothing starts until the next time.
    after = decide(job=spec, state=decision.state, active=(), now=T0 + HOUR + 20 * MINUTE)
    assert after.runs == ()
    nxt = decide(job=spec, state=decision.state, active=(), now=T0 + 2 * HOUR)
    assert runs_of(nxt) == [(9, T0 + 2 * HOUR, PENDING)]


def test_a_finished_run_passed_as_active_does_not_block() -> None:
    spec = job(concurrency="forbid")
    done = active_run(1, JobRunState.SUCCEEDED)
    decision = decide(job=spec, state=fresh(spec, T0), active=[done], now=T0 + HOUR)
    assert decision.start is not None


def test_allow_starts_beside_active_runs() -> None:
    spec = job(concurrency="allow")
    decision = decide(job=spec, state=fresh(spec, T0), active=[active_run(1)], now=T0 + HOUR)
    assert decision.start is not None and decision.cancel == ()


def test_replace_cancels_the_active_runs_and_starts() -> None:
    spec = job(concurrency="replace")
    state = dataclasses.replace(fresh(spec, T0), last_number=3)
    active = [active_run(3), active_run(2, JobRunState.PENDING)]
    decision = decide(job=spec, state=state, active=active, now=T0 + HOUR)
    assert decision.cancel == ("report-2", "report-3")
    assert decision.cancel_reason == "replaced by run #4 (concurrency: replace)"
    assert runs_of(decision) == [(4, T0 + HOUR, PENDING)]


# --- suspend, schedule changes --------------------------------------------------------------

def test_suspend_schedules_nothing_and_keeps_last_fire() -> None:
    spec = job(suspend=True)
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0)
    decision = decide(job=spec, state=state, active=(), now=T0 + 5 * HOUR)
    assert decision.runs == () and decision.state == state and decision.wake_at is None


def test_resuming_catches_up_as_kubernetes_does() -> None:
    state = dataclasses.replace(fresh(job(), T0), last_fire=T0)
    now = T0 + 3 * HOUR + 10 * MINUTE
    # Without a deadline the latest time that passed while suspended starts at once.
    resumed = decide(job=job(), state=state, active=(), now=now)
    assert runs_of(resumed) == [(1, T0 + HOUR, MISSED), (2, T0 + 2 * HOUR, MISSED),
                                (3, T0 + 3 * HOUR, PENDING)]
    # With a deadline, times older than it are only missed.
    strict = decide(job=job(starting_deadline=5 * MINUTE), state=state, active=(), now=now)
    assert [r.state for r in strict.runs] == [MISSED] * 3


def test_a_changed_schedule_starts_afresh() -> None:
    old = job("0 * * * *")
    state = dataclasses.replace(fresh(old, T0), last_fire=T0, last_number=4)
    new = job("30 * * * *")
    decision = decide(job=new, state=state, active=(), now=T0 + 5 * HOUR)
    assert decision.runs == ()
    assert (decision.state.schedule, decision.state.since, decision.state.last_fire) == (
        "30 * * * *", T0 + 5 * HOUR, None)
    assert decision.state.last_number == 4
    assert decision.wake_at == T0 + 5 * HOUR + 30 * MINUTE
    # So does a changed time zone.
    moved = decide(job=job("0 * * * *", time_zone="Europe/Paris"), state=state, active=(),
                   now=T0 + 5 * HOUR)
    assert moved.runs == () and moved.state.time_zone == "Europe/Paris"


def test_a_job_without_a_schedule_or_with_an_unusable_one() -> None:
    state = fresh(job(None), T0)
    assert decide(job=job(None), state=state, active=(), now=T0 + HOUR) == \
        CronDecision(state=state)
    bad = decide(job=job("61 * * * *"), state=state, active=(), now=T0 + HOUR)
    assert bad.runs == () and bad.wake_at is None
    assert bad.note.startswith("invalid schedule '61 * * * *': minute: 61 is out of range")


def test_a_clock_that_went_back_fires_nothing_again() -> None:
    spec = job()
    state = dataclasses.replace(fresh(spec, T0), last_fire=T0 + 3 * HOUR)
    decision = decide(job=spec, state=state, active=(), now=T0 + HOUR + 1)
    assert decision.runs == () and decision.wake_at == T0 + 4 * HOUR


# --- a controller loop on a fake clock ------------------------------------------------------

async def run_loop(spec: JobSpec, clock: FakeClock, until: float,
                   active: Sequence[JobRun] = ()) -> list[CronDecision]:
    """Decide, store the state, sleep until `wake_at`, as the job controller does."""
    state = fresh(spec, clock.now())
    decisions = []
    while True:
        decision = decide(job=spec, state=state, active=active, now=clock.now())
        state = decision.state
        decisions.append(decision)
        if decision.wake_at is None or decision.wake_at > until:
            return decisions
        await clock.advance(decision.wake_at - clock.now())


def local(t: float, tz: str) -> str:
    return datetime.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(tz)).isoformat()


@pytest.mark.parametrize(("tz", "expr", "start", "expected"), [
    ("America/New_York", "30 2 * * *", "2026-03-06T12:00:00-05:00",
     ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("America/New_York", "30 1 * * *", "2026-10-31T00:00:00-04:00",
     ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("Europe/Berlin", "30 2 * * *", "2026-03-27T12:00:00+01:00",
     ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("Europe/Berlin", "30 2 * * *", "2026-10-24T00:00:00+02:00",
     ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("Europe/Berlin", "R/2026-10-24T02:30:00/P1D", "2026-10-23T12:00:00+02:00",
     ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
])
async def test_runs_across_a_dst_change_on_a_fake_clock(tz: str, expr: str, start: str,
                                                        expected: list[str]) -> None:
    clock = FakeClock(start=datetime.datetime.fromisoformat(start).timestamp())
    spec = job(expr, time_zone=tz)
    end = clock.now() + 3 * 24 * HOUR
    decisions = await run_loop(spec, clock, until=end)
    runs = [r for d in decisions for r in d.runs]
    assert all(r.state == PENDING for r in runs)  # woken on time: nothing missed
    assert [local(r.scheduled_at, tz) for r in runs] == expected
    assert [r.number for r in runs] == [1, 2, 3]


async def test_r5_runs_five_times_then_sleeps_for_good() -> None:
    clock = FakeClock(start=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp())
    decisions = await run_loop(job("R5/2026-01-01T06:00:00Z/PT6H"), clock,
                               until=clock.now() + 30 * 24 * HOUR)
    runs = [r for d in decisions for r in d.runs]
    assert [local(r.scheduled_at, "UTC") for r in runs] == [
        "2026-01-01T06:00:00+00:00", "2026-01-01T12:00:00+00:00", "2026-01-01T18:00:00+00:00",
        "2026-01-02T00:00:00+00:00", "2026-01-02T06:00:00+00:00"]
    assert decisions[-1].wake_at is None
