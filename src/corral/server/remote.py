"""Remote control through the agents: which instances a `corral kill` target names, sending
them a signal, and listing one instance's processes. The server holds no process: each
request goes to the agent that owns the instance (`server/agents.py`), which acts through
the instance's driver (Nomad's `alloc signal`, Kubernetes' apiserver-to-kubelet proxy).

A signal changes nothing the control plane wants: the instance's desired state stays, so a
process that dies of it exits like any crash and its restart policy decides what follows
(as `docker kill` and `nomad alloc signal`).

Targets (`resolve_target`, pure):

- `ID`: that instance, whatever its state (a stopped one answers "not running");
- `APP` or `APP/`: every instance of the application that is not stopped or lost;
- `APP/SERVICE`: the same for one service; `APP/SERVICE/ID` one instance of it.

A bare name that is both an instance id and an application is ambiguous (400): `APP/` or
the full `APP/SERVICE/ID` says which.

Neighbours: `server/api/instances.py` (the routes), `agent/api.py` (what answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from corral.agent.drivers.base import parse_signal, signal_name
from corral.model.instance import TERMINAL_STATES, Instance
from corral.server.agents import AgentRoute, agent_client, agent_routes, route_to
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["DELIVERED", "NOT_RUNNING", "UNREACHABLE", "SignalResult", "instance_processes",
           "parse_signal_arg", "resolve_target", "signal_instances"]

DELIVERED = "delivered"
NOT_RUNNING = "not running"
UNREACHABLE = "node unreachable"


def parse_signal_arg(value: str | int) -> int:
    """A signal from a request: a name (`SIGHUP`, `hup`) or a number; 400 otherwise."""
    try:
        return parse_signal(value)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def resolve_target(target: str, *, namespace: str, instances: Sequence[Instance],
                   apps: Collection[str]) -> list[Instance]:
    """The instances `target` names (see the module docstring), sorted by app, service,
    slot. `instances`: every instance the server knows (all namespaces; a bare id matches
    in any); `apps`: the application names of `namespace`. ApiError 400 for a malformed or
    ambiguous target, 404 for one that names nothing."""
    text = target.strip()
    parts = text.split("/")
    if not text or len(parts) > 3 or not parts[0] or \
            (len(parts) == 3 and not (parts[1] and parts[2])):
        raise ApiError(400, f"expected ID, APP, APP/SERVICE or APP/SERVICE/ID, got {target!r}")
    by_id: dict[str, Instance] = {i.id: i for i in instances}
    if len(parts) == 1:
        inst = by_id.get(parts[0])
        if inst is not None and parts[0] in apps:
            raise ApiError(400, f"{target!r} is both an instance and an application: write "
                                f"{parts[0]}/ for the application or "
                                f"{inst.app}/{inst.service}/{inst.id} for the instance")
        if inst is not None:
            return [inst]
    app = parts[0]
    service = parts[1] if len(parts) > 1 and parts[1] else None
    if len(parts) == 3:
        inst = by_id.get(parts[2])
        if inst is None or (inst.namespace, inst.app, inst.service) != (namespace, app,
                                                                        service):
            raise ApiError(404, f"no instance {parts[2]!r} in {namespace}/{app}/{service}; "
                                "`corral ps -a` lists them")
        return [inst]
    if app not in apps:
        raise ApiError(404, f"no instance or application {app!r} in namespace {namespace}")
    found = [i for i in instances if i.namespace == namespace and i.app == app
             and (service is None or i.service == service) and i.state not in TERMINAL_STATES]
    if service is not None and not found:
        raise ApiError(404, f"application {app} has no running instance of service "
                            f"{service!r}")
    return sorted(found, key=lambda i: (i.app, i.service, i.slot, i.id))


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalResult:
    id: str
    app: str
    service: str
    node: str | None
    outcome: str  # delivered | not running | node unreachable
    message: str
    pid: int | None = None

    def to_data(self) -> dict[str, Any]:
        return asdict(self)


def _result(inst: Instance, outcome: str, message: str, pid: int | None = None
            ) -> SignalResult:
    return SignalResult(id=inst.id, app=inst.app, service=inst.service, node=inst.node,
                        outcome=outcome, message=message, pid=pid)


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


async def _signal_one(client: httpx.AsyncClient, agent: AgentRoute | None, inst: Instance,
                      sig: int) -> SignalResult:
    if inst.state in TERMINAL_STATES or inst.node is None:
        return _result(inst, NOT_RUNNING, f"instance is {inst.state}")
    if agent is None:
        return _result(inst, UNREACHABLE, f"node {inst.node} has no agent API")
    try:
        resp = await client.post(f"{agent.url}/v1/agent/instances/{inst.id}/signal",
                                 json={"signal": sig}, headers=agent.headers,
                                 extensions=agent.extensions)
    except httpx.HTTPError as exc:
        return _result(inst, UNREACHABLE, f"node {inst.node}: {exc or type(exc).__name__}")
    if resp.status_code == 200:
        pid = resp.json().get("pid")
        return _result(inst, DELIVERED, f"{signal_name(sig)} sent to pid {pid} on "
                                        f"{inst.node}", pid)
    if resp.status_code == 409:
        return _result(inst, NOT_RUNNING, _message(resp))
    return _result(inst, UNREACHABLE,
                   f"node {inst.node} answered {resp.status_code}: {_message(resp)}")


async def signal_instances(ctx: ServerContext, instances: Sequence[Instance], sig: int
                           ) -> list[SignalResult]:
    """`sig` to each instance's main process through its agent, concurrently; one result
    per instance, in the order given."""
    agents = await agent_routes(ctx)
    async with agent_client(ctx, timeout=10.0, read=10.0) as client:
        return list(await asyncio.gather(*(
            _signal_one(client, agents.get(i.node or ""), i, sig) for i in instances)))


async def instance_processes(ctx: ServerContext, inst: Instance) -> dict[str, Any]:
    """The agent's answer for `GET .../processes`, tagged with the instance's node."""
    if inst.state in TERMINAL_STATES or inst.node is None:
        raise ApiError(409, f"instance {inst.id} is {inst.state}: no processes")
    agent = await route_to(ctx, inst.node)
    if agent is None:
        raise ApiError(502, f"node {inst.node} has no agent API")
    try:
        async with agent_client(ctx, timeout=10.0, read=10.0) as client:
            resp = await client.get(f"{agent.url}/v1/agent/instances/{inst.id}/processes",
                                    headers=agent.headers, extensions=agent.extensions)
    except httpx.HTTPError as exc:
        raise ApiError(502, f"node {inst.node} cannot be reached: "
                            f"{exc or type(exc).__name__}") from None
    if resp.status_code == 409:
        raise ApiError(409, _message(resp))
    if resp.status_code != 200:
        raise ApiError(502, f"node {inst.node} answered {resp.status_code}: {_message(resp)}")
    answer: dict[str, Any] = resp.json()
    return {**answer, "instance": inst.id, "node": inst.node, "app": inst.app,
            "service": inst.service}
