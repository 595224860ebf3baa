"""What a status report does to an instance record (`server/status_reports.py`)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.model.instance import InstanceState
from corral.server.status_reports import Refused, StatusReport, next_record, reported_change
from corral.testing.factories import make_instance

STATES = st.sampled_from(list(InstanceState))
MAYBE_INT = st.none() | st.integers(0, 3)


@settings(max_examples=300, deadline=None)
@given(old_state=STATES, state=STATES, reason=st.sampled_from(["", "exit 1"]),
       pid=MAYBE_INT, exit_code=MAYBE_INT, restarts=MAYBE_INT,
       health=st.none() | st.sampled_from(["none", "healthy", "unhealthy"]),
       started_at=st.none() | st.sampled_from([1.0, 2.0]), later=st.booleans())
def test_reported_change_is_a_change_in_anything_but_the_time(
        old_state: InstanceState, state: InstanceState, reason: str, pid: int | None,
        exit_code: int | None, restarts: int | None, health: str | None,
        started_at: float | None, later: bool) -> None:
    old = make_instance("i1", node="n1", state=old_state, pid=1, restarts=1,
                        started_at=1.0, now=5.0)
    if old_state == InstanceState.HEALTHY:
        old = dataclasses.replace(old, healthy_at=5.0, health="healthy")
    report = StatusReport(node="n1", state=state, reason=reason, pid=pid,
                          exit_code=exit_code, restarts=restarts, health=health,
                          started_at=started_at)
    try:
        new = next_record(old, report, 9.0 if later else 5.0)
    except Refused:
        return
    assert reported_change(old, new) == (new != dataclasses.replace(
        old, updated_at=new.updated_at))


def test_a_repeated_report_is_no_change() -> None:
    old = make_instance("i1", node="n1", state=InstanceState.RUNNING, pid=7, now=1.0)
    new = next_record(old, StatusReport(node="n1", state=InstanceState.RUNNING, pid=7), 2.0)
    assert new.updated_at == 2.0 and not reported_change(old, new)
    moved = next_record(old, StatusReport(node="n1", state=InstanceState.RUNNING, pid=8), 2.0)
    assert reported_change(old, moved)
