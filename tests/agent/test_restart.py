"""The pure restart decision: policies, exponential backoff, reset, and giving up."""

from __future__ import annotations

from corral.agent.restart import decide_restart
from corral.model.application import RestartSpec
from corral.model.instance import InstanceState


def test_never_leaves_failed_or_exited() -> None:
    never = RestartSpec(policy="never")
    d = decide_restart(never, succeeded=False, exit_reason="exited with code 1",
                       quick_exits=0, recent_restarts=(), now=0)
    assert not d.restart and d.state == InstanceState.FAILED and "policy never" in d.reason
    d = decide_restart(never, succeeded=True, exit_reason="exited with code 0",
                       quick_exits=0, recent_restarts=(), now=0)
    assert not d.restart and d.state == InstanceState.EXITED


def test_on_failure_restarts_only_failures() -> None:
    p = RestartSpec(policy="on-failure")
    assert decide_restart(p, succeeded=False, exit_reason="x", quick_exits=0,
                          recent_restarts=(), now=0).restart
    d = decide_restart(p, succeeded=True, exit_reason="x", quick_exits=0,
                       recent_restarts=(), now=0)
    assert not d.restart and d.state == InstanceState.EXITED


def test_always_restarts_successes_without_showing_failed() -> None:
    d = decide_restart(RestartSpec(), succeeded=True, exit_reason="exited with code 0",
                       quick_exits=0, recent_restarts=(), now=0)
    assert d.restart and d.state == InstanceState.EXITED


def test_backoff_doubles_up_to_the_maximum() -> None:
    p = RestartSpec(backoff=1.0, max_backoff=10.0, attempts=100)
    delays = [decide_restart(p, succeeded=False, exit_reason="x", quick_exits=n,
                             recent_restarts=(), now=0).delay for n in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_gives_up_after_attempts_within_the_window_only() -> None:
    p = RestartSpec(attempts=3, window=60.0)
    d = decide_restart(p, succeeded=False, exit_reason="exited with code 1", quick_exits=3,
                       recent_restarts=(950.0, 960.0, 970.0), now=1000.0)
    assert not d.restart and d.state == InstanceState.FAILED and "gave up after 3" in d.reason
    # the same restarts long ago do not count
    d = decide_restart(p, succeeded=False, exit_reason="x", quick_exits=0,
                       recent_restarts=(100.0, 200.0, 300.0), now=1000.0)
    assert d.restart and "restart 1" in d.reason


def test_reason_says_when_it_restarts() -> None:
    d = decide_restart(RestartSpec(backoff=0.5), succeeded=False,
                       exit_reason="exited with code 3", quick_exits=1, recent_restarts=(),
                       now=0)
    assert d.reason == "exited with code 3; restarting in 1s (restart 1)"
    assert d.state == InstanceState.FAILED
