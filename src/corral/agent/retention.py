"""Which instance directories (task dir, logs, runtime state) the agent may delete: the
decision behind `Agent.gc_loop`, pure so tests drive it with a fake clock.

A directory stays while its instance runs here (a live runner, or one an earlier agent
left and this one adopted). Once the instance has ended, its logs stay readable through
`corral logs` for `--log-retention` (default 1h) after the last sign of life in the
directory (its newest modification: the runner removes `handle.json` when the process
ends, and the logs are written until then), then it goes. It goes at once when the server
no longer knows the instance (deleted after its own `terminal_retention`, or never
assigned here): no one could ask for those logs any more. When the server could not be
asked, `known` is None and only the retention applies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_LOG_RETENTION", "Expired", "expired_dirs"]

DEFAULT_LOG_RETENTION = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Expired:
    instance: str
    why: str


def expired_dirs(last_change: Mapping[str, float], *, now: float, retention: float,
                 live: Collection[str], known: Collection[str] | None) -> list[Expired]:
    """`last_change`: instance id -> newest modification time (wall clock) of its
    directory. Sorted by id."""
    out = []
    for iid, changed in sorted(last_change.items()):
        if iid in live:
            continue
        if known is not None and iid not in known:
            out.append(Expired(instance=iid, why="unknown to the server"))
        elif now - changed > retention:
            out.append(Expired(instance=iid, why=f"ended over {retention:g}s ago"))
    return out
