"""Dependencies between jobs (`after:`): which jobs their parents trigger now, the cycle
check, and the graph `corral jobs graph APP` prints (text, or Graphviz DOT).

Triggering follows Chronos' `parents`: a job with `after: [a, b]` runs once every parent has
succeeded since the job's own last run was created. That moment is the `scheduled_at` of
the job's newest run, whatever its cause (a manual run resets it too); a job that never ran
takes any success. A parent counts when its newest finished run (succeeded, failed or
cancelled, by finish time) succeeded, after that moment. So:

- a failed parent triggers nothing, and its children's children in turn wait (failure
  propagates by absence); a later success of that parent triggers;
- a retried parent counts by the result of its last attempt; `missed` and `skipped`
  records never ran and are ignored;
- no double triggering: the run created for a trigger moves the child's moment past the
  successes that caused it.

While the child has an active run, its `concurrency` decides: `allow` triggers anyway,
`replace` cancels the active run and triggers, `forbid` waits for it to end. The condition
holds until then, so the trigger is postponed, not lost (unlike a scheduled time, which is
skipped). A suspended job is not triggered; once resumed, a trigger that became due fires.
Runs are read from the job history; pass `states` (`JobState.last_run`) too when the
history may have been pruned of a job's newest run.

Neighbours: `spec/checks.py` reports cycles with `find_cycles` (one implementation for
`after` and services' `depends_on`); `jobs/cron.py` decides scheduled runs; the job
controller creates the runs decided here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from corral.model.application import JobSpec
from corral.model.job import JobRun, JobRunId, JobRunState, JobState

__all__ = ["Trigger", "find_cycles", "levels", "render_dot", "render_text", "triggered"]

_FINISHED = frozenset({JobRunState.SUCCEEDED, JobRunState.FAILED, JobRunState.CANCELLED})


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    """A job to run now (cause `after`) because its parents succeeded."""

    job: str
    parents: tuple[tuple[str, int], ...]  # (parent, number of its run that succeeded)
    cancel: tuple[JobRunId, ...] = ()  # the job's active runs (concurrency: replace)

    @property
    def reason(self) -> str:
        return "after " + ", ".join(f"{p} #{n}" for p, n in self.parents) + " succeeded"


def triggered(jobs: Mapping[str, JobSpec], runs: Iterable[JobRun], *,
              states: Mapping[str, JobState] | None = None) -> list[Trigger]:
    """The jobs of one application that their parents trigger now, sorted by name. `runs`
    are the application's run records, active and finished."""
    by_job: dict[str, list[JobRun]] = {}
    for run in runs:
        by_job.setdefault(run.job, []).append(run)
    out: list[Trigger] = []
    for name in sorted(jobs):
        spec = jobs[name]
        if not spec.after or spec.suspend:
            continue
        own = by_job.get(name, [])
        marks = [r.scheduled_at for r in own]
        last = states[name].last_run if states and name in states else None
        if last is not None:
            marks.append(last.scheduled_at)
        since = max(marks, default=None)
        parents: list[tuple[str, int]] = []
        for parent in spec.after:
            success = _fresh_success(by_job.get(parent, []), since)
            if success is None:
                break
            parents.append((parent, success.number))
        else:
            active = sorted((r for r in own if r.active), key=lambda r: r.number)
            if active and spec.concurrency == "forbid":
                continue
            cancel = tuple(r.id for r in active) if spec.concurrency == "replace" else ()
            out.append(Trigger(job=name, parents=tuple(parents), cancel=cancel))
    return out


def _fresh_success(runs: Sequence[JobRun], since: float | None) -> JobRun | None:
    """The parent's newest finished run if it succeeded after `since`."""
    finished = [r for r in runs if r.state in _FINISHED and r.finished_at is not None]
    if not finished:
        return None
    newest = max(finished, key=lambda r: (r.finished_at or 0.0, r.number))
    if newest.state != JobRunState.SUCCEEDED:
        return None
    if since is not None and (newest.finished_at or 0.0) <= since:
        return None
    return newest


# --- graph ----------------------------------------------------------------------------------

def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """At least one cycle through every node that lies on one, each written from its
    alphabetically first member and closed (`a -> b -> a`), in a deterministic order.
    Edges to names missing from `graph` are ignored.

    A depth-first search reports the cycle closed by each back edge; enumerating every
    elementary cycle would flood the user with variations of the same mistake.
    """
    found: dict[tuple[str, ...], list[str]] = {}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        state[root] = 1
        stack: list[Iterator[str]] = [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif nxt not in graph:
                continue
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):]
                turn = cycle.index(min(cycle))
                cycle = cycle[turn:] + cycle[:turn]
                found.setdefault(tuple(cycle), [*cycle, cycle[0]])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return [found[key] for key in sorted(found)]


def levels(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each node's level: 0 without parents, else one more than its deepest parent (the
    longest path from a root). Raises ValueError naming a cycle."""
    cycles = find_cycles(graph)
    if cycles:
        raise ValueError("dependency cycle: " + " -> ".join(cycles[0]))
    level: dict[str, int] = {}

    def visit(name: str) -> int:
        if name not in level:
            parents = [p for p in graph[name] if p in graph]
            level[name] = 1 + max((visit(p) for p in parents), default=-1)
        return level[name]

    for name in sorted(graph):
        visit(name)
    return level


def _graph(jobs: Mapping[str, JobSpec]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(sorted(set(spec.after))) for name, spec in jobs.items()}


def _trigger_text(spec: JobSpec) -> str:
    if spec.after:
        text = "after " + ", ".join(sorted(set(spec.after)))
    elif spec.schedule is not None:
        text = f"schedule {spec.schedule} ({spec.time_zone})"
    else:
        text = "manual only"
    return text + (", suspended" if spec.suspend else "")


def render_text(app: str, jobs: Mapping[str, JobSpec]) -> str:
    """The jobs by level, each with its schedule or parents:

    ```
    shop: 3 jobs in 3 levels
    level 0
      extract    schedule 0 2 * * * (Europe/Berlin)
    level 1
      transform  after extract
    level 2
      load       after extract, transform
    ```
    Raises ValueError naming a cycle.
    """
    if not jobs:
        return f"{app}: no jobs\n"
    level = levels(_graph(jobs))
    depth = max(level.values()) + 1
    width = max(len(name) for name in jobs)
    lines = [f"{app}: {_count(len(jobs), 'job')} in {_count(depth, 'level')}"]
    for n in range(depth):
        lines.append(f"level {n}")
        lines += [f"  {name:<{width}}  {_trigger_text(jobs[name])}"
                  for name in sorted(jobs) if level[name] == n]
    return "\n".join(lines) + "\n"


def render_dot(app: str, jobs: Mapping[str, JobSpec]) -> str:
    """Graphviz DOT, edges from parent to child, in a deterministic order (a cycle is drawn
    as it is)."""
    lines = [f"digraph {_quote(app)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for name in sorted(jobs):
        spec = jobs[name]
        detail = ("suspended" if spec.suspend else "") if spec.after else _trigger_text(spec)
        label = f"{name}\n{detail}" if detail else name
        style = ", style=dashed" if spec.suspend else ""
        lines.append(f"  {_quote(name)} [label={_quote(label)}{style}];")
    for name, parents in sorted(_graph(jobs).items()):
        lines += [f"  {_quote(p)} -> {_quote(name)};" for p in parents]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
