"""Dependencies between jobs: triggering, failure propagation, cycles, and the graph output."""

from __future__ import annotations

from typing import Any

import pytest

from corral.jobs.dag import Trigger, find_cycles, levels, render_dot, render_text, triggered
from corral.model.application import JobSpec
from corral.model.job import JobRun, JobRunState, JobState, RunCause, RunSummary
from corral.testing.factories import make_job_run

OK, FAILED = JobRunState.SUCCEEDED, JobRunState.FAILED


def spec(*after: str, **fields: Any) -> JobSpec:
    return JobSpec(command=("x",), after=after, **fields)


CHAIN = {"extract": spec(schedule="0 2 * * *"), "transform": spec("extract"),
         "load": spec("transform")}


def run(job: str, number: int, state: JobRunState = OK, *, at: float,
        done: float | None = None, **fields: Any) -> JobRun:
    """A run of `job` created at `at`, finished at `done` (a final state: `at` + 10)."""
    if done is None and state not in (JobRunState.PENDING, JobRunState.RUNNING):
        done = at + 10
    return make_job_run(job, number, state=state, scheduled_at=at, finished_at=done, **fields)


def names(triggers: list[Trigger]) -> list[str]:
    return [t.job for t in triggers]


# --- triggering -----------------------------------------------------------------------------

def test_a_chain_runs_in_order_and_never_twice() -> None:
    assert triggered(CHAIN, []) == []
    history = [run("extract", 1, at=100)]
    [trigger] = triggered(CHAIN, history)
    assert (trigger.job, trigger.parents, trigger.cancel) == ("transform", (("extract", 1),), ())
    assert trigger.reason == "after extract #1 succeeded"
    # The controller creates transform #1 at 120: it is not triggered again, running or done.
    history.append(run("transform", 1, JobRunState.RUNNING, at=120, cause=RunCause.AFTER))
    assert triggered(CHAIN, history) == []
    history[-1] = run("transform", 1, at=120, done=150, cause=RunCause.AFTER)
    assert names(triggered(CHAIN, history)) == ["load"]
    history.append(run("load", 1, at=160, cause=RunCause.AFTER))
    assert triggered(CHAIN, history) == []
    # The next extract starts the chain again.
    history.append(run("extract", 2, at=200))
    assert names(triggered(CHAIN, history)) == ["transform"]


def test_a_failed_parent_triggers_nothing_until_it_succeeds() -> None:
    history = [run("extract", 1, FAILED, at=100)]
    assert triggered(CHAIN, history) == []
    # Its retry fails too: still nothing, and the grandchild never hears of it.
    history.append(run("extract", 2, FAILED, at=120, cause=RunCause.RETRY, attempt=2))
    assert triggered(CHAIN, history) == []
    history.append(run("extract", 3, at=140, cause=RunCause.RETRY, attempt=3))
    assert [(t.job, t.parents) for t in triggered(CHAIN, history)] == [
        ("transform", (("extract", 3),))]


def test_a_parent_counts_by_its_newest_finished_run() -> None:
    # Succeeded, then failed since: a failed parent.
    assert triggered(CHAIN, [run("extract", 1, at=100), run("extract", 2, FAILED, at=200)]) == []
    # A retry still pending does not count; a cancelled run counts as not succeeded.
    pending = [run("extract", 1, FAILED, at=100), run("extract", 2, JobRunState.PENDING, at=120)]
    assert triggered(CHAIN, pending) == []
    assert triggered(CHAIN, [run("extract", 1, JobRunState.CANCELLED, at=100)]) == []
    # Missed and skipped records never ran: ignored.
    quiet = [run("extract", 1, at=100), run("extract", 2, JobRunState.MISSED, at=200),
             run("extract", 3, JobRunState.SKIPPED, at=300)]
    assert names(triggered(CHAIN, quiet)) == ["transform"]


def test_every_parent_must_have_succeeded_since_the_child_last_ran() -> None:
    jobs = {"a": spec(), "b": spec(), "c": spec("a", "b")}
    history = [run("a", 1, at=100), run("c", 1, at=50)]
    assert triggered(jobs, history) == []
    history.append(run("b", 1, at=110))
    [trigger] = triggered(jobs, history)
    assert trigger.parents == (("a", 1), ("b", 1))
    assert trigger.reason == "after a #1, b #1 succeeded"
    # A success from before the child's last run does not count: b is stale again.
    history += [run("c", 2, at=130), run("a", 2, at=140)]
    assert triggered(jobs, history) == []


def test_a_manual_run_of_the_child_resets_what_counts() -> None:
    history = [run("extract", 1, at=100),
               run("transform", 1, JobRunState.RUNNING, at=115, cause=RunCause.MANUAL)]
    assert triggered(CHAIN, history) == []


def test_pruned_history_uses_the_stored_last_run() -> None:
    history = [run("extract", 1, at=100)]  # transform's runs were pruned
    state = JobState(namespace="default", app="app", job="transform", since=0.0,
                     last_run=RunSummary(number=9, state=OK, scheduled_at=120))
    assert triggered(CHAIN, history, states={"transform": state}) == []
    assert names(triggered(CHAIN, history, states={})) == ["transform"]


@pytest.mark.parametrize(("concurrency", "expected"), [
    ("forbid", []), ("allow", [("transform", ())]),
    ("replace", [("transform", ("transform-1",))]),
])
def test_an_active_child_and_its_concurrency(concurrency: str,
                                             expected: list[tuple[str, tuple[str, ...]]]) -> None:
    jobs = {**CHAIN, "transform": spec("extract", concurrency=concurrency)}
    history = [run("transform", 1, JobRunState.RUNNING, at=100), run("extract", 1, at=150)]
    assert [(t.job, t.cancel) for t in triggered(jobs, history)] == expected


def test_forbid_postpones_the_trigger_until_the_active_run_ends() -> None:
    history = [run("transform", 1, JobRunState.RUNNING, at=100), run("extract", 1, at=150)]
    assert triggered(CHAIN, history) == []
    history[0] = run("transform", 1, at=100, done=170)
    # Transform again (extract #1 came after its run began), and load after transform #1.
    assert names(triggered(CHAIN, history)) == ["load", "transform"]


def test_a_suspended_child_is_not_triggered() -> None:
    jobs = {**CHAIN, "transform": spec("extract", suspend=True)}
    assert triggered(jobs, [run("extract", 1, at=100)]) == []


# --- cycles and levels ----------------------------------------------------------------------

def test_find_cycles_names_each_cycle_once() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "x": ["y"], "y": ["x"], "d": ["a"]}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["x", "y", "x"]]
    assert find_cycles({"a": ["a"]}) == [["a", "a"]]
    assert find_cycles({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}) == []
    assert find_cycles({"a": ["missing"]}) == []


def test_levels_are_the_longest_path_from_a_root() -> None:
    graph = {"a": [], "b": ["a"], "c": ["a", "b"], "d": []}
    assert levels(graph) == {"a": 0, "b": 1, "c": 2, "d": 0}
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        levels({"a": ["b"], "b": ["a"]})


# --- rendering ------------------------------------------------------------------------------

DIAMOND = {
    "load": spec("transform", "extract"),
    "transform": spec("extract"),
    "extract": spec(schedule="0 2 * * *", time_zone="Europe/Berlin"),
    "cleanup": spec(suspend=True),
    "audit": spec(schedule="R/2026-01-01T00:00:00Z/P1W"),
}


def test_render_text() -> None:
    assert render_text("shop", DIAMOND) == (
        "shop: 5 jobs in 3 levels\n"
        "level 0\n"
        "  audit      schedule R/2026-01-01T00:00:00Z/P1W (UTC)\n"
        "  cleanup    manual only, suspended\n"
        "  extract    schedule 0 2 * * * (Europe/Berlin)\n"
        "level 1\n"
        "  transform  after extract\n"
        "level 2\n"
        "  load       after extract, transform\n")
    assert render_text("empty", {}) == "empty: no jobs\n"
    assert render_text("one", {"a": spec()}) == "one: 1 job in 1 level\nlevel 0\n  a  manual only\n"


def test_render_dot() -> None:
    assert render_dot("shop", DIAMOND) == (
        'digraph "shop" {\n'
        '  rankdir=LR;\n'
        '  node [shape=box];\n'
        '  "audit" [label="audit\\nschedule R/2026-01-01T00:00:00Z/P1W (UTC)"];\n'
        '  "cleanup" [label="cleanup\\nmanual only, suspended", style=dashed];\n'
        '  "extract" [label="extract\\nschedule 0 2 * * * (Europe/Berlin)"];\n'
        '  "load" [label="load"];\n'
        '  "transform" [label="transform"];\n'
        '  "extract" -> "load";\n'
        '  "transform" -> "load";\n'
        '  "extract" -> "transform";\n'
        '}\n')


def test_rendering_is_deterministic_and_escaped() -> None:
    reordered = dict(reversed(list(DIAMOND.items())))
    assert render_text("shop", reordered) == render_text("shop", DIAMOND)
    assert render_dot("shop", reordered) == render_dot("shop", DIAMOND)
    assert render_dot('a"b\\c', {}) == 'digraph "a\\"b\\\\c" {\n  rankdir=LR;\n' \
        '  node [shape=box];\n}\n'
    with pytest.raises(ValueError, match="dependency cycle"):
        render_text("loop", {"a": spec("b"), "b": spec("a")})
