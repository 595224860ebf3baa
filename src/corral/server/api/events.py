"""The event stream: every state change, numbered, replayable from an index.

- `GET /v1/events?since=IDX` a JSON array of the retained events with index > IDX, oldest
  first (`limit=N`: only the newest N). No `since` (or 0): every retained event.
- `...&follow=true` newline-delimited JSON: the backlog, then live events as they are
  committed, until the client disconnects. A blank line every 15 s keeps proxies from
  closing a quiet stream.
- `Accept: text/event-stream` (or `format=sse`): the same as Server-Sent Events, always
  following: `id: <index>`, `event: <topic>`, `data: <event json>`, a `: keepalive` comment
  every 15 s; a `Last-Event-ID` header resumes like `since` (what browsers' EventSource
  sends when it reconnects). The `id:` line is on the last event of each index, so a resume
  never skips the rest of an index.
- Filters: `topic` (repeatable or comma-separated), `key` (prefix of the event's key),
  `app` and `namespace` (what the event is about: payload fields, or the key of `app` and
  `job` events).

A `since` below what retention deleted is refused with 410 and the oldest retained index
(`error.details`); in SSE, with a first `event: gone` message. A follower whose buffer
overflows gets a final `{"type": "fell-behind", "index": N}` (SSE: `event: fell-behind`)
and its stream ends: resume with `since=N`. See `server/eventfeed.py`.

An event's `index` is the store revision that wrote it; several events of one change share
an index (as in Nomad).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from corral.model.event import TOPICS
from corral.server.api.deps import get_ctx
from corral.server.context import ServerContext
from corral.server.errors import ApiError
from corral.server.eventfeed import Entry, EventFilter, FellBehind, Gone, Heartbeat, groups

__all__ = ["router"]

router = APIRouter(prefix="/v1/events", tags=["events"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def _filter(topic: list[str] | None, key: str | None, app: str | None,
            namespace: str | None) -> EventFilter:
    topics = {t.strip() for value in topic or () for t in value.split(",") if t.strip()}
    unknown = sorted(topics - set(TOPICS))
    if unknown:
        raise ApiError(400, f"unknown topic {', '.join(map(repr, unknown))}; expected one of "
                            f"{', '.join(TOPICS)}")
    return EventFilter(topics=frozenset(topics), key=key or "", app=app or "",
                       namespace=namespace or "")


def _since(since: int | None, last_event_id: str | None) -> int:
    if since is not None:
        return since
    if not last_event_id:
        return 0
    try:
        value = int(last_event_id.strip())
    except ValueError:
        raise ApiError(400, f"Last-Event-ID {last_event_id!r} is not an event index") from None
    if value < 0:
        raise ApiError(400, f"Last-Event-ID {value} is negative")
    return value


def _gone(exc: Gone) -> ApiError:
    return ApiError(410, str(exc), {"requested": exc.requested,
                                    "pruned_through": exc.pruned_through,
                                    "oldest_index": exc.oldest})


def _ndjson(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode() + b"\n"


def _sse(event: str, data: bytes, index: int | None = None) -> bytes:
    head = f"id: {index}\n" if index is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


def _sse_batch(batch: list[Entry]) -> bytes:
    out: list[bytes] = []
    for group in groups(batch):
        for n, entry in enumerate(group):
            last = n == len(group) - 1
            out.append(_sse(str(entry.data.get("topic", "event")), entry.json,
                            entry.index if last else None))
    return b"".join(out)


@router.get("", response_model=None)
async def events(
    ctx: Ctx, request: Request,
    since: Annotated[int | None, Query(ge=0)] = None,
    topic: Annotated[list[str] | None, Query()] = None,
    key: str | None = None, app: str | None = None, namespace: str | None = None,
    limit: Annotated[int, Query(ge=0)] = 0, follow: bool = False,
    format: Annotated[str | None, Query(pattern="^(json|ndjson|sse)$")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> list[dict[str, Any]] | StreamingResponse:
    flt = _filter(topic, key, app, namespace)
    start = _since(since, last_event_id)
    sse = format == "sse" or (format is None and
                              "text/event-stream" in request.headers.get("accept", ""))
    if not follow and not sse:
        try:
            return await ctx.events.read(start, flt, limit)
        except Gone as exc:
            raise _gone(exc) from None
    if not sse:
        await ctx.events.start()
        if ctx.events.is_gone(start):
            raise _gone(await ctx.events.gone(start))
    return StreamingResponse(
        _stream(ctx, start, flt, limit, sse=sse),
        media_type="text/event-stream" if sse else "application/x-ndjson",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _stream(ctx: ServerContext, since: int, flt: EventFilter, limit: int, *,
                  sse: bool) -> AsyncIterator[bytes]:
    try:
        async with ctx.events.follow(since, flt, limit=limit,
                                     heartbeat=ctx.config.event_heartbeat) as items:
            async for item in items:
                if isinstance(item, Heartbeat):
                    yield b": keepalive\n\n" if sse else b"\n"
                elif isinstance(item, FellBehind):
                    end = {"type": "fell-behind", "index": item.index,
                           "message": f"this stream fell behind; resume with since="
                                      f"{item.index}"}
                    yield _sse("fell-behind", json.dumps(end).encode(), item.index) if sse \
                        else _ndjson(end)
                    return
                elif sse:
                    yield _sse_batch(item)
                else:
                    yield b"".join(e.json + b"\n" for e in item)
    except Gone as exc:
        gone = {"type": "gone", "requested": exc.requested,
                "pruned_through": exc.pruned_through, "oldest_index": exc.oldest,
                "message": str(exc)}
        yield _sse("gone", json.dumps(gone).encode()) if sse else _ndjson(gone)
