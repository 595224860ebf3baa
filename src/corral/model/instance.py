"""An instance: one placed copy of a service (or job run) on one node.

The record holds both what the control plane wants (`desired`, `node`, `ports`, `version`)
and what the node's agent reports (`state`, `pid`, `exit_code`, `restarts`, `health`),
like a Kubernetes pod's spec and status in one object. The server writes the first half,
agents the second, each with compare-and-swap on the record's revision.

```
pending -> scheduled -> fetching -> starting -> running -> healthy
   |                       |           |           |          |
   |                       v           v           v          v
   |                     failed <---- exited <--------     unhealthy -> (restart)
   |                       |           |
   |                       +-----------+--> starting (restart after backoff)
node lost -> lost (replaced elsewhere)      stop requested -> stopping -> stopped
```

`exited` is the moment a process ended; the agent then either restarts it (back to
`starting` after a backoff, the instance showing `failed` while it waits if the exit was a
failure) or leaves it terminal: `exited` (code 0, no restart wanted), `failed` (no more
attempts), `stopped` (asked to stop), `lost` (its node is gone).

A job's instance (`kind` job) is never restarted by its agent: it ends `exited` (code 0)
or `failed`, and the job controller (`server/controllers/jobs.py`) then marks it
`stopped` itself (nothing runs any more), keeping its exit code. A retry is a new run with
new instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

from corral.model.application import Resources

__all__ = [
    "ACTIVE_STATES", "TERMINAL_STATES", "TRANSITIONS", "DesiredState", "Instance", "InstanceId",
    "InstanceState", "can_transition",
]

InstanceId = NewType("InstanceId", str)


class InstanceState(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    FETCHING = "fetching"
    STARTING = "starting"
    RUNNING = "running"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EXITED = "exited"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    LOST = "lost"


class DesiredState(StrEnum):
    RUN = "run"
    STOP = "stop"


S = InstanceState
TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    S.PENDING: frozenset({S.SCHEDULED, S.STOPPED, S.LOST}),
    # -> running directly: an agent killed between starting an instance and reporting it
    # adopts it after its restart.
    S.SCHEDULED: frozenset({S.FETCHING, S.STARTING, S.RUNNING, S.EXITED, S.FAILED, S.STOPPING,
                            S.STOPPED, S.LOST}),
    S.FETCHING: frozenset({S.STARTING, S.RUNNING, S.EXITED, S.FAILED, S.STOPPING, S.STOPPED,
                           S.LOST}),
    S.STARTING: frozenset({S.RUNNING, S.EXITED, S.FAILED, S.STOPPING, S.STOPPED, S.LOST}),
    # -> failed directly: a job's instance reports its end once (`exited` or `failed`).
    S.RUNNING: frozenset({S.HEALTHY, S.UNHEALTHY, S.EXITED, S.FAILED, S.STOPPING, S.STOPPED,
                          S.LOST}),
    S.HEALTHY: frozenset({S.UNHEALTHY, S.EXITED, S.STOPPING, S.STOPPED, S.LOST}),
    S.UNHEALTHY: frozenset({S.HEALTHY, S.EXITED, S.STARTING, S.STOPPING, S.STOPPED, S.LOST}),
    S.EXITED: frozenset({S.STARTING, S.FETCHING, S.FAILED, S.STOPPING, S.STOPPED, S.LOST}),
    S.FAILED: frozenset({S.STARTING, S.FETCHING, S.STOPPING, S.STOPPED, S.LOST}),
    S.STOPPING: frozenset({S.STOPPED, S.EXITED, S.FAILED, S.LOST}),
    S.STOPPED: frozenset(),
    S.LOST: frozenset({S.STOPPED}),
}

# States in which an instance counts towards its service's desired count.
ACTIVE_STATES = frozenset({S.PENDING, S.SCHEDULED, S.FETCHING, S.STARTING, S.RUNNING, S.HEALTHY,
                           S.UNHEALTHY, S.EXITED, S.FAILED})
# States from which nothing runs any more.
TERMINAL_STATES = frozenset({S.STOPPED, S.LOST})


def can_transition(old: InstanceState, new: InstanceState) -> bool:
    return old == new or new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    id: InstanceId
    namespace: str
    app: str
    service: str
    kind: str = "service"  # "service" or "job"
    # 0..instances-1: stable position, used to pick which to stop on scale-down. A job's
    # instance: its completion index, 0..completions-1 (CORRAL_COMPLETION_INDEX).
    slot: int = 0
    # A job's instance (`kind` job, `service` the job's name): the number and attempt of
    # the run it belongs to (`model/job.py`), CORRAL_RUN and CORRAL_ATTEMPT in its env.
    run: int = 0
    attempt: int = 0
    version: int  # application version this instance runs
    spec_hash: str  # model.application.service_hash of what it runs
    # The service's restart generation when it was created: `corral restart` bumps the
    # service's generation, and the rollout replaces every instance of an older one.
    generation: int = 0
    resources: Resources
    port_names: tuple[str, ...] = ()  # the service's ports, in spec order
    static_ports: dict[str, int] = field(default_factory=dict)
    driver: str | None = None  # None: the node's default driver
    desired: DesiredState = DesiredState.RUN
    # Set by a node drain: replace this instance elsewhere, then stop it (Nomad's
    # DesiredTransition.Migrate). A migrating instance no longer counts towards its
    # service's desired count, so the application controller creates its replacement.
    migrate: bool = False
    node: str | None = None
    address: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    state: InstanceState = InstanceState.PENDING
    reason: str = ""
    pid: int | None = None
    exit_code: int | None = None
    health: str = "none"  # none | unknown | healthy | unhealthy
    restarts: int = 0
    created_at: float
    updated_at: float
    started_at: float | None = None
    # When the server saw it turn `healthy` (None while it is not): a new instance of a
    # service with a health check is ready once it has been healthy `min_healthy_time`.
    healthy_at: float | None = None
    # Addresses of the service's dependencies (`depends_on`) in service when the instance
    # was created (`server/dependencies.py`): `CACHE_ADDR` and the like, which the agent
    # puts in its env below the spec's `env`. Fixed for the instance's life.
    dependency_env: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Wanted and not ended (a migrating instance included: it still runs)."""
        return self.desired == DesiredState.RUN and self.state in ACTIVE_STATES
