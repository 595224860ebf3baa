"""The job run state machine table and its sets."""

from __future__ import annotations

from corral.model.job import (
    ACTIVE_RUN_STATES,
    FINAL_RUN_STATES,
    INITIAL_RUN_STATES,
    TRANSITIONS,
    JobRunState,
    can_transition,
)
from corral.testing.factories import make_job_run

R = JobRunState


def test_every_state_has_a_row_and_final_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(R)
    assert set(R) == ACTIVE_RUN_STATES | FINAL_RUN_STATES
    assert not ACTIVE_RUN_STATES & FINAL_RUN_STATES
    assert all(TRANSITIONS[s] == frozenset() for s in FINAL_RUN_STATES)
    assert {R.PENDING, R.MISSED, R.SKIPPED} == INITIAL_RUN_STATES


def test_transitions() -> None:
    assert can_transition(R.PENDING, R.RUNNING)
    assert can_transition(R.PENDING, R.MISSED)  # not started within starting_deadline
    assert can_transition(R.RUNNING, R.SUCCEEDED)
    assert can_transition(R.RUNNING, R.CANCELLED)
    assert can_transition(R.FAILED, R.FAILED)  # a repeated report is no change
    assert not can_transition(R.RUNNING, R.MISSED)
    assert not can_transition(R.RUNNING, R.PENDING)  # a retry is a new run
    assert not can_transition(R.SUCCEEDED, R.FAILED)
    assert not can_transition(R.SKIPPED, R.RUNNING)


def test_active() -> None:
    assert make_job_run(state=R.PENDING).active
    assert not make_job_run(state=R.MISSED).active
    assert make_job_run(state=R.SKIPPED).finished_at == 0.0
