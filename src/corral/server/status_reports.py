"""What an agent's status report does to an instance record: pure, so the batched endpoint
(`PUT /v1/nodes/{name}/status`, `server/api/nodes.py`) and the per-instance one
(`PUT /v1/instances/{id}/status`, `server/api/instances.py`) can apply the same rules.

`next_record` checks the report against the instance state machine (`model/instance.py`)
and returns the record as it should now be; `changes_event` says whether the change is worth
an event (state, reason, restarts or health moved) and `event_payload` is that event's body.

Neighbours: `model/instance.py` (the transitions), the two endpoints above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from corral.model.instance import Instance, InstanceState, can_transition

__all__ = ["Refused", "ReportBody", "StatusReport", "changes_event", "describe",
           "event_payload", "next_record", "reported_change"]

_UP = (InstanceState.RUNNING, InstanceState.HEALTHY, InstanceState.UNHEALTHY)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    node: str
    state: InstanceState
    reason: str = ""
    pid: int | None = None
    exit_code: int | None = None
    restarts: int | None = None
    health: str | None = None
    started_at: float | None = None


class ReportBody(BaseModel):
    """What an agent says of one instance, as both endpoints' request bodies carry it (the
    per-instance one adds `node`, each report of a batch its `id`)."""

    state: InstanceState
    reason: str = ""
    pid: int | None = None
    exit_code: int | None = None
    restarts: int | None = None
    health: str | None = None
    started_at: float | None = None

    def report(self, node: str) -> StatusReport:
        return StatusReport(node=node, state=self.state, reason=self.reason, pid=self.pid,
                            exit_code=self.exit_code, restarts=self.restarts,
                            health=self.health, started_at=self.started_at)


class Refused(Exception):
    """The report does not apply: `status` is the HTTP status that says why (403 another
    node's instance, 409 an impossible transition)."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def next_record(old: Instance, report: StatusReport, now: float) -> Instance:
    """The instance after the report (equal to `old` but for `updated_at` when nothing
    changed). Raises `Refused`."""
    if old.node != report.node:
        raise Refused(403, f"instance {old.id} is not assigned to node {report.node}")
    if not can_transition(old.state, report.state):
        raise Refused(409, f"instance {old.id} cannot go from {old.state} to {report.state}",
                      {"state": old.state})
    # A report without a pid keeps the one known while the process still runs.
    pid = report.pid if report.pid is not None or report.state not in _UP else old.pid
    # The server's clock, not the agent's: the rollout compares it with its own `now`.
    healthy_at = None if report.state != InstanceState.HEALTHY else (
        old.healthy_at if old.state == InstanceState.HEALTHY else now)
    return dataclasses.replace(
        old, state=report.state, reason=report.reason, pid=pid, exit_code=report.exit_code,
        restarts=old.restarts if report.restarts is None else report.restarts,
        health=old.health if report.health is None else report.health,
        started_at=report.started_at if report.started_at is not None else old.started_at,
        healthy_at=healthy_at, updated_at=now,
    )


# What `next_record` may change, `updated_at` aside.
_REPORTED = ("state", "reason", "pid", "exit_code", "restarts", "health", "started_at",
             "healthy_at")


def reported_change(old: Instance, new: Instance) -> bool:
    """Whether `new` (from `next_record(old, ...)`) differs from `old` in more than the
    time: as `new != replace(old, updated_at=new.updated_at)`, without building a record."""
    return any(getattr(old, name) != getattr(new, name) for name in _REPORTED)


def changes_event(old: Instance, new: Instance) -> bool:
    return (old.state, old.reason, old.restarts, old.health) != (new.state, new.reason,
                                                                 new.restarts, new.health)


def describe(inst: Instance) -> str:
    where = f" on {inst.node}" if inst.node else ""
    text = f"{inst.app}/{inst.service} instance {inst.id}{where} is {inst.state}"
    return f"{text}: {inst.reason}" if inst.reason else text


def event_payload(old: Instance, new: Instance) -> dict[str, Any]:
    return {"app": new.app, "namespace": new.namespace, "service": new.service,
            "node": new.node, "state": new.state, "previous": old.state,
            "reason": new.reason, "exit_code": new.exit_code, "restarts": new.restarts,
            "pid": new.pid}
