"""An application as the server keeps it: the user's spec at a version, and its lifecycle.

```
  apply            apply (changed spec)         delete              all instances gone
 -------> active ----------------------> active --------> deleting --------------------> (removed)
```
Every applied spec is also kept immutably under its version (`AppVersion`), so agents can
fetch what an instance runs and `history`/`rollback` can show and restore it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from corral.model.application import ApplicationSpec

__all__ = ["AppStatus", "AppVersion", "Application"]


class AppStatus(StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"


@dataclass(frozen=True, slots=True, kw_only=True)
class Application:
    name: str
    namespace: str
    version: int
    spec: ApplicationSpec
    status: AppStatus = AppStatus.ACTIVE
    # service -> restart generation, bumped by `corral restart`; not part of the spec, so a
    # restart makes no new version. Absent: 0.
    generations: dict[str, int] = field(default_factory=dict)
    # service -> the dependencies it waits for before its first instance is created
    # (`server/dependencies.py`): kept so the application controller says so once, with an
    # `app` event, rather than on every pass.
    waiting: dict[str, tuple[str, ...]] = field(default_factory=dict)
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AppVersion:
    """One applied spec, immutable, kept under its version number."""

    version: int
    spec: ApplicationSpec
    created_at: float | None = None  # None: stored by an older Corral, as a bare spec
    cause: str = "apply"  # apply | auto-revert | rollback
    reason: str = ""
