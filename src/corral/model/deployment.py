"""A deployment: the record of one change to one service (a new spec, a restart, a revert),
and how far replacing its instances has come.

```
                 all new instances ready, no old one left
   (apply,    +------------------------------------------> successful
    restart,  |
    revert)   |     a new instance not ready within healthy_deadline,
  ---------> running --no progress within progress_deadline, or `fail`--> failed
              |   ^                                                        |
              |   | promote (canaries ready)                               | auto_revert:
              |   +----- waiting for promotion (canary: N)                 v a new version
              |                                                          running (cause auto-revert)
              +--a newer apply/restart/revert, the service removed, the app deleted--> cancelled
```
One deployment per service runs at a time: whatever starts a new one cancels the running one
in the same transaction. `successful`, `failed` and `cancelled` are final. A failed deployment
stops rolling: the old instances it had not replaced keep running.

Neighbours: `server/versions.py` creates deployments with each new version;
`server/rollout.py` decides each step; `controllers/applications.py` applies the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NewType

__all__ = ["CAUSES", "TRANSITIONS", "Deployment", "DeploymentId", "DeploymentStatus",
           "can_transition"]

DeploymentId = NewType("DeploymentId", str)

# What started a deployment. `reconcile`: the application controller found instances to
# replace without a deployment on record (a store written by an older Corral).
CAUSES = ("apply", "auto-revert", "rollback", "restart", "reconcile")


class DeploymentStatus(StrEnum):
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELLED = "cancelled"


D = DeploymentStatus
TRANSITIONS: dict[DeploymentStatus, frozenset[DeploymentStatus]] = {
    D.RUNNING: frozenset({D.SUCCESSFUL, D.FAILED, D.CANCELLED}),
    D.SUCCESSFUL: frozenset(),
    D.FAILED: frozenset(),
    D.CANCELLED: frozenset(),
}


def can_transition(old: DeploymentStatus, new: DeploymentStatus) -> bool:
    return old == new or new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    id: DeploymentId
    namespace: str
    app: str
    service: str
    version: int  # the application version whose service spec this deploys
    previous_version: int | None  # the version the replaced instances ran (None: new service)
    spec_hash: str  # service_hash of the target spec
    generation: int = 0  # the service's restart generation the new instances carry
    cause: str = "apply"  # one of CAUSES
    status: DeploymentStatus = DeploymentStatus.RUNNING
    reason: str = ""  # why it is in its status, for people
    desired: int = 0  # the service's `instances`
    placed: int = 0  # new instances placed on a node
    healthy: int = 0  # new instances ready (and still live)
    unhealthy: int = 0  # new instances unhealthy, failed or exited
    canaries: int = 0  # new instances started beside the old ones before a promotion
    promoted: bool = False
    # Every new instance that was ready once: it counts as ready for the rest of this
    # deployment even if it restarts later (Nomad keeps an allocation's deployment health
    # the same way), so progress is monotonic and one restart does not fail a rollout.
    ready: tuple[str, ...] = ()
    created_at: float
    updated_at: float
    # The last time a new instance became ready (or a promotion): progress_deadline counts
    # from here.
    progress_at: float

    @property
    def final(self) -> bool:
        return self.status != DeploymentStatus.RUNNING

    @property
    def unpromoted(self) -> bool:
        return self.status == DeploymentStatus.RUNNING and self.canaries > 0 and \
            not self.promoted
