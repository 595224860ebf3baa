"""Event retention: the gc controller (`controllers/gc.py`) deletes events beyond
`--event-retention-count` (the newest are kept) or older than `--event-retention-age`.

Events go oldest index first, in transactions of at most `batch` deletions, each of which
also raises the `keys.EVENTS_PRUNED` watermark to the highest index it deleted. Indexes are
store revisions and are never renumbered, so a reader's `since` keeps its meaning; a
`since` below the watermark is refused with 410 Gone (`server/eventfeed.py`), never
answered with a silent gap. Deleting in index order keeps "everything above the watermark
is still there" true even when clocks stepped back (an event's key starts with its time).

`plan_pruning` is the pure decision, tested with made-up times; `prune_events` applies it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from corral.server import keys
from corral.server.context import ServerContext
from corral.store.base import Compare, CompareTarget, Delete, Put

__all__ = ["StoredEvent", "event_time", "plan_pruning", "prune_events"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    index: int
    time: float
    key: str


def event_time(key: str) -> float:
    """The time an event was written, from its key (`/events/<time_ns>-<seq>`)."""
    stamp = key[len(keys.EVENTS):].split("-", 1)[0]
    try:
        return int(stamp) / 1e9
    except ValueError:
        return 0.0


def plan_pruning(events: Sequence[StoredEvent], *, now: float, keep_count: int,
                 keep_age: float, total: int | None = None) -> list[StoredEvent]:
    """The events to delete, oldest index first: the oldest beyond the newest
    `keep_count`, and the oldest run of those older than `keep_age` seconds. Stops at the
    first event that is both among the newest and young enough, so what is kept is always
    everything above one index. 0 turns a limit off. `total`: how many events are stored
    when `events` are only the oldest of them (default: `events` are all)."""
    ordered = sorted(events, key=lambda e: (e.index, e.key))
    stored = len(ordered) if total is None else total
    excess = stored - keep_count if keep_count > 0 else 0
    cutoff = now - keep_age if keep_age > 0 else None
    doomed: list[StoredEvent] = []
    for position, ev in enumerate(ordered):
        too_many = position < excess
        too_old = cutoff is not None and ev.time < cutoff
        if not (too_many or too_old):
            break
        doomed.append(ev)
    # Events of one index go together, so the watermark never splits a transaction.
    while doomed and len(doomed) < len(ordered) and ordered[len(doomed)].index == \
            doomed[-1].index:
        doomed.append(ordered[len(doomed)])
    return doomed


async def prune_events(ctx: ServerContext, *, batch: int = 1000, most: int = 100_000) -> int:
    """Apply retention to the oldest `most` events at most; returns how many were deleted.

    A call reads the number of events and the keys of the oldest `most` (keys start with
    the time written), never every event: a million instances make millions of events in
    minutes, and reading them all held a key object each (1.4 GiB of the server's memory
    at C1M) and kept the gc controller busy for minutes. So a burst is pruned over several
    passes, `most` per pass."""
    config = ctx.config
    if config.event_retention_count <= 0 and config.event_retention_age <= 0:
        return 0
    total, _ = await ctx.store.count(keys.EVENTS)
    if total <= config.event_retention_count and config.event_retention_age <= 0:
        return 0
    kvs, _ = await ctx.store.range(keys.EVENTS, limit=most, keys_only=True)
    stored = [StoredEvent(index=kv.create_revision, time=event_time(kv.key), key=kv.key)
              for kv in kvs]
    doomed = plan_pruning(stored, now=ctx.clock.now(), keep_count=config.event_retention_count,
                          keep_age=config.event_retention_age, total=total)
    if len(stored) < total and doomed and len(doomed) == len(stored):
        # Every event read is doomed, and more were not read: the last index's events may
        # go on past the read, so they wait for the next pass (a transaction's events are
        # never split between two sides of the watermark).
        last = doomed[-1].index
        doomed = [e for e in doomed if e.index != last] or doomed
    deleted = 0
    while deleted < len(doomed):
        end = min(deleted + batch, len(doomed))
        while end < len(doomed) and doomed[end].index == doomed[end - 1].index:
            end += 1
        chunk = doomed[deleted:end]
        current = await ctx.store.get(keys.EVENTS_PRUNED)
        watermark = max(chunk[-1].index, int(current.value) if current else 0)
        ops: list[Delete | Put] = [Delete(key=e.key) for e in chunk]
        ops.append(Put(key=keys.EVENTS_PRUNED, value=str(watermark).encode()))
        # Guarded by the watermark's revision: two servers pruning at once cannot lower it.
        result = await ctx.store.txn(
            [Compare(key=keys.EVENTS_PRUNED, target=CompareTarget.MOD, op="==",
                     value=current.mod_revision if current else 0)], ops)
        if not result.succeeded:
            break
        deleted = end
        await asyncio.sleep(0)  # let requests in between batches
    return deleted
