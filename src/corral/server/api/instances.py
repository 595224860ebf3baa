"""Instances: the cluster-wide process table, status reports from agents, and logs.

- `GET /v1/instances?app=&namespace=&node=&service=&state=&all=false` every instance
  (terminal ones only with `all`, or when `state` names them), sorted by app, service,
  slot. `state`: comma-separated states to keep (400 for an unknown one).
- `GET /v1/instances/{id}` one instance.
- `PUT /v1/instances/{id}/status` an agent reports what happened; the server checks the
  transition against the state machine in `model/instance.py` and writes it with an event.
- `GET /v1/instances/{id}/logs?since=&tail=&follow=` proxied to the agent that ran it.
- `GET /v1/instances/{id}/processes` the processes in its cgroup, from its agent:
  `{instance, node, app, service, pid, processes: [{pid, ppid, user, cpu, rss, command}]}`.
  409 when it does not run, 502 when its node cannot be reached.
- `POST /v1/instances/signal` body `{"target", "namespace": "default", "signal": "SIGTERM"}`
  (`target`: ID, APP, APP/SERVICE or APP/SERVICE/ID; `signal`: a name or a number) ->
  `{signal, results: [{id, app, service, node, outcome, message, pid}]}`, `outcome` one of
  `delivered`, `not running`, `node unreachable` (`server/remote.py`). The desired state
  does not change: the restart policy decides what follows a death.
- `WS /v1/instances/{id}/exec` `corral exec`, relayed to the agent (`server/exec.py`).

A node credential may list its own node's instances (`?node=` its name) and report status
for instances assigned to it; everything else needs the admin token (the exec websocket
checks it itself: `authenticate` covers HTTP routes only).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from corral.agent.drivers.base import signal_name
from corral.model.app import Application
from corral.model.codec import to_data
from corral.model.instance import TERMINAL_STATES, Instance, InstanceState
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.auth import NODE_ACCESS, Identity, act_for, get_identity
from corral.server.context import ServerContext
from corral.server.errors import ApiError
from corral.server.exec import relay_exec
from corral.server.logs import stream_logs
from corral.server.remote import (
    instance_processes,
    parse_signal_arg,
    resolve_target,
    signal_instances,
)
from corral.server.status_reports import (
    Refused,
    ReportBody,
    changes_event,
    describe,
    event_payload,
    next_record,
    reported_change,
)

__all__ = ["instance_view", "node_versions", "router", "select_instances", "ws_router"]

router = APIRouter(prefix="/v1/instances", tags=["instances"])
# Websockets: outside `authenticate` (an HTTP dependency); `relay_exec` checks the caller.
ws_router = APIRouter(prefix="/v1/instances", tags=["instances"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]
Caller = Annotated[Identity, Depends(get_identity)]


class StatusBody(ReportBody):
    node: str


def instance_view(ctx: ServerContext, inst: Instance) -> dict[str, Any]:
    """The record plus the latest usage its agent measured (`usage_cpu` in cores,
    `usage_memory` in bytes; None until measured or once it stopped)."""
    data: dict[str, Any] = to_data(inst)
    usage = ctx.usage.get(inst.id)
    live = usage is not None and usage.node == inst.node and inst.state not in TERMINAL_STATES
    data["usage_cpu"] = usage.cpu if live and usage else None
    data["usage_memory"] = usage.memory if live and usage else None
    return data


def sort_key(i: Instance) -> tuple[str, str, str, int, float]:
    return (i.namespace, i.app, i.service, i.slot, i.created_at)


async def select_instances(ctx: ServerContext, *, namespace: str | None = None,
                           app: str | None = None, service: str | None = None,
                           node: str | None = None, include_terminal: bool = False
                           ) -> list[Instance]:
    index = ctx.records.index
    await index.ready()
    # One application's or one node's instances come from the index's tables for them, not
    # a pass over every instance of the cluster.
    if app is not None and namespace is not None:
        items = index.of_app(namespace, app)
    elif node is not None:
        items = index.on_node(node)
    else:
        items, _ = await ctx.records.scan(Instance, keys.INSTANCES)
    result = [
        i.record for i in items
        if (namespace is None or i.record.namespace == namespace)
        and (app is None or i.record.app == app)
        and (service is None or i.record.service == service)
        and (node is None or i.record.node == node)
        and (include_terminal or i.record.state not in TERMINAL_STATES)
    ]
    return sorted(result, key=sort_key)


async def node_versions(ctx: ServerContext, node: str) -> set[tuple[str, str, int]]:
    """(namespace, app, version) of every instance assigned to `node`, stopped ones too:
    the specs (and their artifacts) that node's agent may read."""
    found = await select_instances(ctx, node=node, include_terminal=True)
    return {(i.namespace, i.app, i.version) for i in found}


def parse_states(text: str | None) -> frozenset[InstanceState] | None:
    """`running,healthy` -> those states (None: no filter); 400 for an unknown one."""
    if text is None or not text.strip():
        return None
    states = set()
    for part in text.split(","):
        try:
            states.add(InstanceState(part.strip().lower()))
        except ValueError:
            known = ", ".join(s.value for s in InstanceState)
            raise ApiError(400, f"unknown state {part.strip()!r}; states: {known}") from None
    return frozenset(states)


@router.get("", openapi_extra=NODE_ACCESS)
async def list_instances(ctx: Ctx, caller: Caller, app: str | None = None,
                         namespace: str | None = None, service: str | None = None,
                         node: str | None = None, state: str | None = None,
                         all: bool = False) -> list[dict[str, Any]]:
    act_for(caller, node)
    states = parse_states(state)
    found = await select_instances(
        ctx, namespace=namespace, app=app, service=service, node=node,
        include_terminal=all or (states is not None and bool(states & TERMINAL_STATES)))
    return [instance_view(ctx, i) for i in found if states is None or i.state in states]


class SignalRequest(BaseModel):
    target: str
    namespace: str = "default"
    signal: str | int = "SIGTERM"


@router.post("/signal")
async def signal(body: SignalRequest, ctx: Ctx) -> dict[str, Any]:
    sig = parse_signal_arg(body.signal)
    everything = await select_instances(ctx, include_terminal=True)
    apps = {i.record.name for i in (await ctx.records.scan(Application, keys.APPS))[0]
            if i.record.namespace == body.namespace}
    targets = resolve_target(body.target, namespace=body.namespace, instances=everything,
                             apps=apps)
    results = await signal_instances(ctx, targets, sig)
    return {"signal": signal_name(sig), "number": sig,
            "results": [r.to_data() for r in results]}


async def find_instance(ctx: ServerContext, instance_id: str) -> Instance:
    item = await ctx.records.get(Instance, keys.instance(instance_id))
    if item is None:
        raise ApiError(404, f"no instance {instance_id!r}; `corral ps -a` lists them")
    return item.record


@router.get("/{instance_id}")
async def get_instance(instance_id: str, ctx: Ctx) -> dict[str, Any]:
    return instance_view(ctx, await find_instance(ctx, instance_id))


@router.put("/{instance_id}/status", openapi_extra=NODE_ACCESS)
async def report_status(instance_id: str, body: StatusBody, ctx: Ctx, caller: Caller
                        ) -> dict[str, Any]:
    act_for(caller, body.node)
    for _ in range(10):
        item = await ctx.records.get(Instance, keys.instance(instance_id))
        if item is None:
            raise ApiError(404, f"no instance {instance_id!r}")
        old = item.record
        try:
            new = next_record(old, body.report(body.node), ctx.clock.now())
        except Refused as exc:
            raise ApiError(exc.status, exc.message, exc.details) from None
        if not reported_change(old, new):
            return {"changed": False}
        txn = ctx.records.txn().put(keys.instance(old.id), new, expect=item.mod_revision)
        if changes_event(old, new):
            txn.event("instance", old.id, str(new.state), describe(new),
                      event_payload(old, new))
        if await txn.commit() is not None:
            return {"changed": True}
    raise ApiError(409, f"instance {instance_id} kept changing; retry")


@router.get("/{instance_id}/logs")
async def instance_logs(instance_id: str, ctx: Ctx, since: float | None = None,
                        tail: Annotated[int | None, Query(ge=0)] = None,
                        follow: bool = False, stream: str | None = None) -> StreamingResponse:
    inst = await find_instance(ctx, instance_id)
    return await stream_logs(ctx, [inst], since=since, tail=tail, follow=follow, stream=stream)


@router.get("/{instance_id}/processes")
async def processes(instance_id: str, ctx: Ctx) -> dict[str, Any]:
    return await instance_processes(ctx, await find_instance(ctx, instance_id))


@ws_router.websocket("/{instance_id}/exec")
async def exec_websocket(websocket: WebSocket, instance_id: str) -> None:
    await relay_exec(websocket.app.state.ctx, websocket, instance_id)
