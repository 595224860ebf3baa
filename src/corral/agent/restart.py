"""The restart decision, pure: given the policy, how the process ended and when it was
restarted before, restart (after which delay) or stop for good (in which state).

Backoff doubles from `backoff` up to `max_backoff`; it resets once an instance has run
longer than `max_backoff` (it was healthy for a while, so a new crash is a new story, as
kubelet resets CrashLoopBackOff). More than `attempts` restarts within `window` seconds
leaves the instance `failed` (Nomad's restart `attempts`/`interval` with mode `fail`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.model.application import RestartSpec
from corral.model.instance import InstanceState

__all__ = ["RestartDecision", "decide_restart"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartDecision:
    restart: bool
    delay: float = 0.0
    state: InstanceState  # the state to show while waiting, or the final one
    reason: str


def decide_restart(policy: RestartSpec, *, succeeded: bool, exit_reason: str,
                   quick_exits: int, recent_restarts: Sequence[float], now: float
                   ) -> RestartDecision:
    """`quick_exits`: consecutive earlier runs that ended within `max_backoff` of starting
    (the caller resets it after a longer run); `recent_restarts`: times of earlier restarts,
    oldest first."""
    wanted = policy.policy == "always" or (policy.policy == "on-failure" and not succeeded)
    if not wanted:
        return RestartDecision(
            restart=False, state=InstanceState.EXITED if succeeded else InstanceState.FAILED,
            reason=f"{exit_reason}; restart policy {policy.policy}")
    in_window = [t for t in recent_restarts if now - t <= policy.window]
    if len(in_window) >= policy.attempts:
        return RestartDecision(
            restart=False, state=InstanceState.FAILED,
            reason=f"{exit_reason}; gave up after {len(in_window)} restarts in "
                   f"{policy.window:g}s")
    delay = min(policy.backoff * (2 ** min(quick_exits, 32)), policy.max_backoff)
    return RestartDecision(
        restart=True, delay=delay,
        state=InstanceState.EXITED if succeeded else InstanceState.FAILED,
        reason=f"{exit_reason}; restarting in {delay:g}s (restart {len(in_window) + 1})")
