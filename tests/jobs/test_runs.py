"""One run's progress (`jobs/runs.py`): instances to create, start, completions, failures,
timeouts, retries with capped backoff, and which history is kept. Plain records and times,
no store."""

from __future__ import annotations

import dataclasses
from typing import Any

from corral.jobs.runs import MAX_RETRY_DELAY, advance, history, retry_delay
from corral.model.application import JobSpec
from corral.model.instance import Instance, InstanceState
from corral.model.job import JobRun, JobRunState
from corral.testing.factories import make_instance, make_job_run

R, S = JobRunState, InstanceState
NOW = 1000.0


def spec(**fields: Any) -> JobSpec:
    return JobSpec(command=("true",), **fields)


def pending(**fields: Any) -> JobRun:
    fields.setdefault("scheduled_at", NOW)
    return make_job_run("etl", 1, state=R.PENDING, **fields)


def inst(iid: str, state: InstanceState, *, slot: int = 0, node: str | None = "n1",
         **fields: Any) -> Instance:
    return make_instance(iid, service="etl", kind="job", run=1, slot=slot, node=node,
                         state=state, **fields)


def test_a_due_run_gets_parallelism_instances_capped_by_completions() -> None:
    step = advance(run=pending(), spec=spec(parallelism=3, completions=2), instances=(),
                   now=NOW)
    assert step.create == (0, 1) and step.run.state == R.PENDING


def test_a_retry_waits_for_its_time() -> None:
    step = advance(run=pending(scheduled_at=NOW + 5), spec=spec(), instances=(), now=NOW)
    assert step.create == () and step.wake_at == NOW + 5


def test_placed_means_started_and_a_deadline_means_missed_otherwise() -> None:
    run = pending(instances=("a",))
    placed = advance(run=run, spec=spec(), instances=[inst("a", S.SCHEDULED)], now=NOW + 1)
    assert (placed.run.state, placed.run.started_at) == (R.RUNNING, NOW + 1)
    assert [t for t, _ in placed.events] == ["started"]
    waiting = [inst("a", S.PENDING, node=None)]
    early = advance(run=run, spec=spec(starting_deadline=10), instances=waiting, now=NOW + 10)
    assert early.run.state == R.PENDING and early.wake_at == NOW + 10
    late = advance(run=run, spec=spec(starting_deadline=10), instances=waiting, now=NOW + 11)
    assert late.run.state == R.MISSED and late.run.finished_at == NOW + 11


def test_completions_count_and_more_instances_follow() -> None:
    run = make_job_run("etl", 1, state=R.RUNNING, scheduled_at=NOW, started_at=NOW,
                       instances=("a", "b"))
    both = [inst("a", S.EXITED, exit_code=0), inst("b", S.RUNNING, slot=1)]
    step = advance(run=run, spec=spec(parallelism=2, completions=3), instances=both, now=NOW)
    assert step.completed == ("a",) and step.run.completed == ("a",)
    assert step.create == (2,)  # one running, one more to reach parallelism
    done = [inst("a", S.STOPPED, exit_code=0), inst("b", S.EXITED, slot=1, exit_code=0),
            inst("c", S.EXITED, slot=2, exit_code=0)]
    final = advance(run=dataclasses.replace(step.run, instances=("a", "b", "c")),
                    spec=spec(parallelism=2, completions=3), instances=done, now=NOW + 1)
    assert (final.run.state, final.run.exit_code) == (R.SUCCEEDED, 0)
    assert final.run.completed == ("a", "b", "c")


def test_a_failure_fails_the_run_and_plans_a_retry_with_doubling_backoff() -> None:
    run = make_job_run("etl", 2, state=R.RUNNING, scheduled_at=NOW, started_at=NOW,
                       attempt=2, retry_of=1, instances=("a",))
    failed = [inst("a", S.FAILED, exit_code=7, reason="exited with code 7")]
    step = advance(run=run, spec=spec(retries=2, backoff=5), instances=failed, now=NOW + 3)
    assert (step.run.state, step.run.exit_code) == (R.FAILED, 7)
    assert step.run.reason == "instance a failed: exited with code 7"
    assert step.retry is not None
    assert (step.retry.attempt, step.retry.retry_of, step.retry.scheduled_at) == \
        (3, 1, NOW + 3 + 10)
    last = dataclasses.replace(run, attempt=3)
    assert advance(run=last, spec=spec(retries=2), instances=failed, now=NOW).retry is None


def test_a_stop_nobody_asked_for_and_a_lost_node_fail_the_run() -> None:
    run = make_job_run("etl", 1, state=R.RUNNING, scheduled_at=NOW, started_at=NOW,
                       instances=("a",))
    for state in (S.STOPPED, S.LOST):
        step = advance(run=run, spec=spec(), instances=[inst("a", state)], now=NOW)
        assert step.run.state == R.FAILED and step.run.exit_code is None


def test_timeout_counts_from_the_start() -> None:
    run = make_job_run("etl", 1, state=R.RUNNING, scheduled_at=NOW - 100, started_at=NOW,
                       instances=("a",))
    running = [inst("a", S.RUNNING)]
    before = advance(run=run, spec=spec(timeout=30), instances=running, now=NOW + 29)
    assert before.run.state == R.RUNNING and before.wake_at == NOW + 30
    at = advance(run=run, spec=spec(timeout=30), instances=running, now=NOW + 30)
    assert (at.run.state, at.run.reason) == (R.FAILED, "timed out after 30s")


def test_retry_delay_doubles_up_to_ten_minutes() -> None:
    assert [retry_delay(1, a) for a in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay(30, 10) == MAX_RETRY_DELAY == 600
    assert retry_delay(0, 5) == 0


def test_history_keeps_the_newest_final_runs_the_newest_run_and_the_last_that_ran() -> None:
    runs = [make_job_run("etl", 1, state=R.SUCCEEDED),
            make_job_run("etl", 2, state=R.FAILED),
            make_job_run("etl", 3, state=R.SKIPPED),
            make_job_run("etl", 4, state=R.MISSED),
            make_job_run("etl", 5, state=R.RUNNING)]
    assert [r.number for r in history(runs, 2)] == [1]
    assert [r.number for r in history(runs, 1)] == [3, 1]  # 2 is the newest that ran
    assert history(runs, 20) == []
