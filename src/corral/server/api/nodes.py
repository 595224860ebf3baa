"""Nodes: agents register, heartbeat, and long-poll for the instances assigned to them.

- `POST /v1/nodes` register (or re-register) a node; returns its lease and heartbeat period.
- `PUT /v1/nodes/{name}/heartbeat` keep the node's lease alive; 404 tells the agent to
  register again (its lease expired, e.g. while the server was down for long).
- `GET /v1/nodes`, `GET /v1/nodes/{name}` with allocated resources.
- `PUT /v1/nodes/{name}/usage` the agent's latest cpu/memory samples of its instances
  (kept in memory, shown in instance and node views).
- `POST /v1/nodes/{name}/drain` body `{"deadline": seconds | null}`: move its instances
  elsewhere (`update.max_parallel` at a time, replacements first), then `ineligible`.
- `POST /v1/nodes/{name}/cordon` (`ineligible`: no new placements, instances stay) and
  `POST /v1/nodes/{name}/uncordon` (`ready` again; also cancels a drain).
- `GET /v1/nodes/{name}/instances?index=R&wait=30` blocking query (Nomad style): answers
  at once if anything assigned to the node changed after revision R, else when it does or
  after `wait` seconds. Returns `{"index": ..., "instances": [...]}`.
- `PUT /v1/nodes/{name}/status` body `{"reports": [{"id", "state", "reason", ...}, ...]}`:
  many status reports of the node's instances in one request and one store transaction,
  applied in order (two reports of one instance, `starting` then `running`, become one
  write and two events). The same rules as `PUT /v1/instances/{id}/status`
  (`server/status_reports.py`); answers one result per report, `{"id", "changed"}` or
  `{"id", "status", "error"}` for a report refused (unknown instance, another node's,
  impossible transition), which does not hold up the others.

An agent calls register, heartbeat, usage and instances with its node credential, for its
own node only (403 otherwise); the rest needs the admin token (`server/auth.py`).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from corral.model.codec import to_data
from corral.model.instance import TERMINAL_STATES, Instance
from corral.model.node import DEFAULT_PORT_RANGE, Node, NodeResources, NodeState
from corral.scheduler import Snapshot, node_usage
from corral.server import keys
from corral.server.api.deps import check_name, get_ctx
from corral.server.auth import NODE_ACCESS, Identity, act_for, get_identity
from corral.server.context import InstanceUsage, ServerContext, heartbeat_ttl
from corral.server.errors import ApiError
from corral.server.records import Versioned
from corral.server.status_reports import (
    Refused,
    ReportBody,
    changes_event,
    describe,
    event_payload,
    next_record,
    reported_change,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])


# Coroutines, not plain functions: FastAPI runs a plain-function dependency in its thread
# pool (40 threads), and under thousands of agents every heartbeat then queued twice for a
# thread before reaching its handler (seconds, measured with bench/c1m.py).
async def _ctx(request: Request) -> ServerContext:
    return get_ctx(request)


async def _caller(request: Request) -> Identity:
    return get_identity(request)


Ctx = Annotated[ServerContext, Depends(_ctx)]
Caller = Annotated[Identity, Depends(_caller)]


class CapacityBody(BaseModel):
    cpu: float = Field(gt=0)
    memory: int = Field(gt=0)


class RegisterBody(BaseModel):
    name: str
    address: str
    agent_url: str = ""
    capacity: CapacityBody
    labels: dict[str, str] = {}
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    reserved_ports: list[int] = []
    drivers: dict[str, str] = {}
    default_driver: str = "process"
    attributes: dict[str, str] = {}


def node_view(node: Node, usage: Any, used: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = to_data(node)
    data["allocated"] = {"cpu": round(usage.cpu_milli / 1000, 3), "memory": usage.memory,
                         "instances": usage.instances} if usage else \
        {"cpu": 0.0, "memory": 0, "instances": 0}
    data["used"] = used
    return data


def _used(ctx: ServerContext, node: str) -> dict[str, Any]:
    samples = [u for u in ctx.usage.values() if u.node == node]
    return {"cpu": round(sum(u.cpu or 0.0 for u in samples), 3),
            "memory": sum(u.memory for u in samples)}


@router.post("", openapi_extra=NODE_ACCESS)
async def register(body: RegisterBody, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    check_name(body.name, "node name")
    act_for(caller, body.name)
    if caller.node is not None and body.agent_url and \
            not body.agent_url.startswith("https://"):
        raise ApiError(400, "a joined node serves its agent API over HTTPS with its node "
                            f"certificate; got agent_url {body.agent_url!r}")
    lo, hi = body.port_range
    if not 1 <= lo <= hi <= 65535:
        raise ApiError(400, f"invalid port_range {lo}-{hi}")
    now = ctx.clock.now()
    current = await ctx.records.get(Node, keys.node(body.name))
    node = Node(
        name=body.name, address=body.address, agent_url=body.agent_url,
        state=NodeState.READY if current is None or current.record.state == NodeState.DOWN
        else current.record.state,
        labels=body.labels, capacity=NodeResources(cpu=body.capacity.cpu,
                                                   memory=body.capacity.memory),
        port_range=(lo, hi), reserved_ports=tuple(sorted(set(body.reserved_ports))),
        drivers=body.drivers, default_driver=body.default_driver, attributes=body.attributes,
        registered_at=now, heartbeat_at=now,
        drain_deadline=current.record.drain_deadline
        if current is not None and current.record.state == NodeState.DRAINING else None,
    )
    lease_id = secrets.randbits(62) or 1
    ttl = await _ttl(ctx)
    await ctx.store.lease_grant(lease_id, ttl, now=now)
    txn = ctx.records.txn().put(keys.node(node.name), node,
                                expect=current.mod_revision if current else 0)
    txn.put_raw(keys.node_alive(node.name), str(lease_id).encode(), lease=lease_id)
    if current is None:
        txn.event("node", node.name, "registered", f"node {node.name} registered at "
                  f"{node.address}", {"address": node.address, "capacity": to_data(node.capacity)})
    elif current.record.state == NodeState.DOWN:
        txn.event("node", node.name, "ready", f"node {node.name} is back")
    if await txn.commit() is None:
        raise ApiError(409, f"node {node.name} changed during registration; retry")
    # The TTL runs from now, when the agent hears of its lease, not from when the request
    # began: a registration that waited for the store (thousands of nodes registering at
    # once) must not hand out a lease that is already half spent. A refresh: in memory.
    await ctx.store.lease_grant(lease_id, ttl, now=ctx.clock.now())
    return {"name": node.name, "lease_id": lease_id, "ttl": ttl, "heartbeat_interval": ttl / 3}


async def _ttl(ctx: ServerContext) -> float:
    # Counted by the index (kept current by the store's commits): a range of every live
    # node per heartbeat made registering N nodes cost O(N^2).
    await ctx.records.index.ready()
    return heartbeat_ttl(ctx.config, len(ctx.records.index.alive) + 1)


class HeartbeatQuery(BaseModel):
    lease_id: int


@router.put("/{name}/heartbeat", openapi_extra=NODE_ACCESS)
async def heartbeat(name: str, query: Annotated[HeartbeatQuery, Query()], ctx: Ctx,
                    caller: Caller) -> dict[str, Any]:
    return await heartbeat_answer(ctx, caller, name, query)


async def heartbeat_answer(ctx: ServerContext, caller: Identity, name: str,
                           query: HeartbeatQuery) -> dict[str, Any]:
    act_for(caller, name)
    lease_id = query.lease_id
    # From the index and the store's in-memory lease expiries: a heartbeat never waits for
    # the store's writer thread, so a busy store cannot make nodes miss their TTL.
    await ctx.records.index.ready()
    alive = ctx.records.index.alive.get(name)
    if alive is None or alive != str(lease_id).encode():
        raise ApiError(404, f"node {name} is not registered with lease {lease_id}; register "
                            "again")
    now = ctx.clock.now()
    if not await ctx.store.lease_keepalive(lease_id, now=now):
        raise ApiError(404, f"lease of node {name} expired; register again")
    # The TTL follows the cluster's size: re-grant the (live) lease with today's value.
    ttl = await _ttl(ctx)
    await ctx.store.lease_grant(lease_id, ttl, now=now)
    return {"ok": True, "ttl": ttl, "heartbeat_interval": ttl / 3}


async def _usage(ctx: ServerContext) -> tuple[list[Node], dict[str, Any]]:
    nodes, _ = await ctx.records.scan(Node, keys.NODES)
    instances, _ = await ctx.records.scan(Instance, keys.INSTANCES)
    snap = Snapshot(nodes=tuple(n.record for n in nodes),
                    instances=tuple(i.record for i in instances))
    return [n.record for n in nodes], dict(node_usage(snap))


class DrainBody(BaseModel):
    deadline: float | None = Field(default=None, gt=0)  # seconds from now; None: no limit


async def _set_state(ctx: ServerContext, name: str, state: NodeState, *,
                     deadline: float | None, event: str, message: str) -> dict[str, Any]:
    for _ in range(10):
        item = await ctx.records.get(Node, keys.node(name))
        if item is None:
            raise ApiError(404, f"no node named {name!r}")
        if item.record.state == NodeState.DOWN:
            raise ApiError(409, f"node {name} is down; wait until it is back")
        node = dataclasses.replace(item.record, state=state, drain_deadline=deadline)
        if node == item.record:
            return await get_node(name, ctx)
        txn = (ctx.records.txn().put(keys.node(name), node, expect=item.mod_revision)
               .event("node", name, event, message))
        if await txn.commit() is not None:
            return await get_node(name, ctx)
    raise ApiError(409, f"node {name} kept changing; retry")


@router.post("/{name}/drain")
async def drain(name: str, body: DrainBody, ctx: Ctx) -> dict[str, Any]:
    deadline = None if body.deadline is None else ctx.clock.now() + body.deadline
    within = f" within {body.deadline:g}s" if body.deadline else ""
    return await _set_state(ctx, name, NodeState.DRAINING, deadline=deadline,
                            event="draining", message=f"node {name} draining{within}")


@router.post("/{name}/cordon")
async def cordon(name: str, ctx: Ctx) -> dict[str, Any]:
    return await _set_state(ctx, name, NodeState.INELIGIBLE, deadline=None,
                            event="cordoned", message=f"node {name} cordoned: no new "
                            "placements")


@router.post("/{name}/uncordon")
async def uncordon(name: str, ctx: Ctx) -> dict[str, Any]:
    return await _set_state(ctx, name, NodeState.READY, deadline=None, event="ready",
                            message=f"node {name} uncordoned: eligible again")


class UsageSample(BaseModel):
    cpu: float | None = Field(default=None, ge=0)
    memory: int = Field(ge=0)
    pids: int = Field(default=0, ge=0)


class UsageBody(BaseModel):
    instances: dict[str, UsageSample]


@router.put("/{name}/usage", openapi_extra=NODE_ACCESS)
async def report_usage(name: str, body: UsageBody, ctx: Ctx, caller: Caller
                       ) -> dict[str, Any]:
    """An agent's latest usage samples for its instances; kept in memory only. Samples for
    instances not assigned to `name` are ignored (a node reports for itself only)."""
    act_for(caller, name)
    await ctx.records.index.ready()
    mine = {i.record.id for i in ctx.records.index.on_node(name)
            if i.record.state not in TERMINAL_STATES}
    now = ctx.clock.now()
    for iid, sample in body.instances.items():
        if iid in mine:
            ctx.usage[iid] = InstanceUsage(node=name, cpu=sample.cpu, memory=sample.memory,
                                           pids=sample.pids, time=now)
    # A report is the node's whole picture: what it no longer measures is gone.
    for iid in [i for i, u in ctx.usage.items()
                if u.node == name and (i not in mine or i not in body.instances)]:
        del ctx.usage[iid]
    return {"accepted": len(set(body.instances) & mine)}


@router.get("")
async def list_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    nodes, usage = await _usage(ctx)
    return [node_view(n, usage.get(n.name), _used(ctx, n.name)) for n in nodes]


@router.get("/{name}")
async def get_node(name: str, ctx: Ctx) -> dict[str, Any]:
    nodes, usage = await _usage(ctx)
    for n in nodes:
        if n.name == name:
            return node_view(n, usage.get(n.name), _used(ctx, n.name))
    raise ApiError(404, f"no node named {name!r}")


class InstancesQuery(BaseModel):
    index: int = 0
    wait: float = Field(default=30.0, ge=0, le=300)
    changes: bool = False
    # A stream of answers on one response (newline-delimited JSON), as a watch in
    # Kubernetes: the answers a run of long polls would get, without a request for each.
    watch: bool = False


# A watch ends after this long (the agent asks again from its index): its caller's token is
# checked again, and agents spread over the servers again after one restarted.
WATCH_SECONDS = 300.0
NDJSON = "application/x-ndjson"


@router.get("/{name}/instances", openapi_extra={
    **NODE_ACCESS, "responses": {"200": {"content": {NDJSON: {"schema": {"type": "string"}}},
                                         "description": "with `watch`: one answer a line"}}})
async def node_instances(name: str, query: Annotated[InstancesQuery, Query()], ctx: Ctx,
                         caller: Caller) -> Response:
    if query.watch:
        return StreamingResponse(await instances_watch(ctx, caller, name, query),
                                 media_type=NDJSON)
    return Response(content=await instances_answer(ctx, caller, name, query),
                    media_type="application/json")


async def instances_answer(ctx: ServerContext, caller: Identity, name: str,
                           query: InstancesQuery) -> bytes:
    """The node's live instances, once one changed after `index` (a long poll). With
    `changes`, only the records changed after `index` and every live id (the agent keeps
    the rest: `client/assignments.py`). Encoded here rather than by FastAPI's generic
    encoder, which walks every field of every instance again: the long poll is the answer
    sent most often."""
    return (await _instances_answer(ctx, caller, name, query.index, query))[1]


async def instances_watch(ctx: ServerContext, caller: Identity, name: str,
                          query: InstancesQuery) -> AsyncIterator[bytes]:
    """The lines of a watch: each the answer the next long poll would get (its `index`
    the one to ask from next), one at least every `wait` seconds, for `WATCH_SECONDS` or
    until the server stops. The first answer is made here, so a refusal (403) is an
    error status rather than a stream that ends at once."""
    first = await _instances_answer(ctx, caller, name, query.index, query)
    index = ctx.records.index

    async def lines() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + WATCH_SECONDS
        since, answer = first
        while True:
            yield answer + b"\n"
            if index.closing or time.monotonic() >= deadline:
                return
            since, answer = await _instances_answer(ctx, caller, name, since, query)

    return lines()


async def _instances_answer(ctx: ServerContext, caller: Identity, name: str, index: int,
                            query: InstancesQuery) -> tuple[int, bytes]:
    """(the index to ask from next, the answer)."""
    act_for(caller, name)
    instances = ctx.records.index
    await instances.ready()
    # An index ahead of the store (one that was replaced) cannot be counted from.
    since = index if 0 < index <= instances.revision else 0
    if index > 0:
        # Woken only by changes to this node's own instances (server/index.py).
        index = await instances.wait_node(name, index, query.wait)
    live = [i for i in instances.on_node(name) if i.record.state not in TERMINAL_STATES]
    answer: dict[str, Any] = {"index": max(instances.revision, index)}
    if query.changes:
        answer["since"] = since
        answer["ids"] = [i.record.id for i in live]
        live = [i for i in live if i.mod_revision > since]
    answer["instances"] = [to_data(i.record) for i in live]
    return answer["index"], orjson.dumps(answer)


class InstanceReport(ReportBody):
    id: str


class StatusBatch(BaseModel):
    reports: list[InstanceReport] = Field(max_length=100_000)


@router.put("/{name}/status", openapi_extra=NODE_ACCESS)
async def report_statuses(name: str, body: StatusBatch, ctx: Ctx, caller: Caller
                          ) -> dict[str, Any]:
    return await statuses_answer(ctx, caller, name, body)


async def statuses_answer(ctx: ServerContext, caller: Identity, name: str, body: StatusBatch
                          ) -> dict[str, Any]:
    """Status reports of many of the node's instances, committed in one transaction (each
    instance guarded by its revision); retried from a fresh read if another write won."""
    act_for(caller, name)
    for _ in range(10):
        results, txn = await _stage_reports(ctx, name, body.reports)
        if not txn.ops or await txn.commit() is not None:
            return {"results": results}
    raise ApiError(409, f"instances of node {name} kept changing; retry")


async def _stage_reports(ctx: ServerContext, name: str, reports: list[InstanceReport]
                         ) -> tuple[list[dict[str, Any]], Any]:
    now = ctx.clock.now()
    index = ctx.records.index
    await index.ready()
    read: dict[str, Versioned[Instance] | None] = {}
    latest: dict[str, Instance] = {}
    results: list[dict[str, Any]] = []
    txn = ctx.records.txn()
    for report in reports:
        if report.id not in read:
            read[report.id] = index.instance(report.id)
        item = read[report.id]
        if item is None:
            results.append({"id": report.id, "status": 404,
                            "error": f"no instance {report.id!r}"})
            continue
        old = latest.get(report.id, item.record)
        try:
            new = next_record(old, report.report(name), now)
        except Refused as exc:
            results.append({"id": report.id, "status": exc.status, "error": exc.message})
            continue
        changed = reported_change(old, new)
        results.append({"id": report.id, "changed": changed})
        if not changed:
            continue
        latest[report.id] = new
        if changes_event(old, new):
            txn.event("instance", old.id, str(new.state), describe(new),
                      event_payload(old, new))
    for iid, new in latest.items():
        item = read[iid]
        assert item is not None
        txn.put(keys.instance(iid), new, expect=item.mod_revision)
    return results, txn
