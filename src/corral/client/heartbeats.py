"""When an agent heartbeats next: after its interval, or soon after a heartbeat that did
not get through.

A node is down after a TTL without heartbeats, and agents beat three times per TTL. With
ten thousand nodes the TTL is ten minutes (`server/context.py`), so waiting a whole
interval after a lost request (a connection the server closed as it was reused, a timeout
while the server was busy) spent a third of the TTL on one failure: C1M runs lost nodes
that way. A failed heartbeat is retried after 1 s, then 2, 4, ... up to the interval (as
Nomad's clients retry theirs well within the TTL).
"""

from __future__ import annotations

__all__ = ["FIRST_RETRY", "retry_delay"]

FIRST_RETRY = 1.0


def retry_delay(previous: float | None, interval: float) -> float:
    """Seconds before retrying a heartbeat that failed. `previous`: the delay before the
    retry that just failed too, None if the heartbeat before it got through."""
    if previous is None:
        return min(FIRST_RETRY, interval)
    return min(previous * 2, interval)
