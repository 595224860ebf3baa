"""The loop every controller runs: wait until something it watches changes (or a resync
period passes), then reconcile everything it owns, level-triggered.

A reconcile reads desired and actual state afresh and converges; it never trusts what woke
it. If it raises, the loop logs and retries with exponential backoff; a write that lost a
compare-and-swap race simply gets retried on the next wake-up (the winning write wakes it).

Pacing: after a pass that took `d` seconds, the loop rests `min(d, 1 s)` before it waits
for changes. Under a stream of changes (a million instances reporting `running`) a
controller whose pass is long would otherwise run back to back and take the whole event
loop from the API; resting as long as it worked caps it near half, and the changes that
arrive meanwhile are handled together by the next pass. A pass of a few milliseconds rests
a few milliseconds: a quiet cluster reacts as fast as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from corral.server.context import ServerContext

__all__ = ["Controller", "run_controller"]

log = logging.getLogger(__name__)

_MAX_REST = 1.0  # seconds; see "Pacing" above


@dataclass(frozen=True, slots=True, kw_only=True)
class Controller:
    name: str
    watches: Sequence[str]  # key prefixes whose changes wake it
    # May return the seconds after which time alone changes its answer (a deadline): the
    # loop then wakes by then even if nothing changes.
    reconcile: Callable[[ServerContext], Awaitable[float | None]]
    resync: float = 30.0  # reconcile at least this often even if nothing changed


async def run_controller(ctx: ServerContext, controller: Controller) -> None:
    backoff = 0.05
    while True:
        try:
            start = ctx.hub.revision
            # perf_counter paces the loop only; no decision on state depends on it.
            began = time.perf_counter()
            due = await controller.reconcile(ctx)
            backoff = 0.05
            await asyncio.sleep(min(time.perf_counter() - began, _MAX_REST))
            timeout = controller.resync if due is None else \
                min(controller.resync, max(due, 0.05))
            # Changes made while reconciling (including our own writes) wake us at once.
            await ctx.hub.wait(start, controller.watches, timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("controller %s failed; retrying in %.2fs", controller.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
