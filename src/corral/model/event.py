"""An event: one numbered record of one state change, replayable from an index.

An event is written in the same store transaction as the change it describes, under
`/events/`; its `index` is the store revision of that transaction (so several events of one
transaction share an index, as in Nomad's event stream) and is filled in when read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TOPICS", "Event"]

TOPICS = ("node", "app", "deployment", "instance", "job", "token")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    index: int = 0
    topic: str
    key: str
    type: str
    time: float
    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
