"""The event stream: every state change, numbered, replayable from an index.

- `GET /v1/events?since=IDX&topic=T&key=K&limit=N` a JSON array of events with
  index > IDX, oldest first.
- `...&follow=true` newline-delimited JSON: the backlog, then live events as they are
  committed, until the client disconnects.
An event's `index` is the store revision that wrote it; several events of one change share
an index (as in Nomad).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from corral.model.codec import to_data
from corral.model.event import TOPICS, Event
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.context import ServerContext
from corral.server.errors import ApiError
from corral.server.records import event_from_kv
from corral.store.base import CompactedError, EventType

__all__ = ["router"]

router = APIRouter(prefix="/v1/events", tags=["events"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def _matches(ev: Event, topic: str | None, key: str | None) -> bool:
    return (topic is None or ev.topic == topic) and (key is None or ev.key.startswith(key))


@router.get("", response_model=None)
async def events(ctx: Ctx, since: Annotated[int, Query(ge=0)] = 0, topic: str | None = None,
                 key: str | None = None, limit: Annotated[int, Query(ge=0)] = 0,
                 follow: bool = False) -> list[dict[str, Any]] | StreamingResponse:
    if topic is not None and topic not in TOPICS:
        raise ApiError(400, f"unknown topic {topic!r}; expected one of {', '.join(TOPICS)}")
    backlog, revision = await ctx.records.events_since(since)
    backlog = [e for e in backlog if _matches(e, topic, key)]
    if limit:
        backlog = backlog[-limit:]
    if not follow:
        return [to_data(e) for e in backlog]

    async def body() -> AsyncIterator[bytes]:
        for ev in backlog:
            yield (json.dumps(to_data(ev)) + "\n").encode()
        try:
            watch = ctx.store.watch(keys.EVENTS, start_revision=revision + 1)
            try:
                async for change in watch:
                    if change.type != EventType.PUT:
                        continue
                    ev = event_from_kv(change.kv)
                    if _matches(ev, topic, key):
                        yield (json.dumps(to_data(ev)) + "\n").encode()
            finally:
                await watch.aclose()
        except CompactedError as exc:
            yield (json.dumps({"error": str(exc)}) + "\n").encode()

    return StreamingResponse(body(), media_type="application/x-ndjson")
