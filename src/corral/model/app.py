"""An application as the server keeps it: the user's spec at a version, and its lifecycle.

```
  apply            apply (changed spec)         delete              all instances gone
 -------> active ----------------------> active --------> deleting --------------------> (removed)
```
Every applied spec is also kept immutably under its version, so agents can fetch what an
instance runs and later `history`/`rollback` can show and restore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from corral.model.application import ApplicationSpec

__all__ = ["AppStatus", "Application"]


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
    created_at: float
    updated_at: float
