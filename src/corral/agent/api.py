"""The agent's own small HTTP API, which only the server calls (it proxies `corral logs`
to the node that ran the instance, as the Kubernetes apiserver does to kubelets).

- `GET /healthz`
- `GET /v1/agent/instances/{id}/logs?since=&tail=&follow=&stream=` newline-delimited JSON
  lines `{"time", "stream", "text"}`, oldest first.
- `GET /v1/agent/instances/{id}/processes` `{"instance", "pid", "processes": [{"pid",
  "ppid", "user", "cpu", "rss", "command"}]}`: the processes of its cgroup
  (`agent/processes.py`). 409 when it does not run here.
- `POST /v1/agent/instances/{id}/signal` body `{"signal": 15}`: the driver's `signal` to
  its main process -> `{"instance", "pid", "signal"}`. 409 when it does not run here.
- `WS /v1/agent/instances/{id}/exec`: `corral exec`, frames in `corral/exec_protocol.py`,
  run by `agent/exec_session.py`.
- `GET /metrics` Prometheus text format, when the agent passes `metrics` (the series
  `agent/metrics.py` lists).
Every request but `/healthz` needs the secret the server presents: the `agent_token` this
node received when it joined (then the API is HTTPS with the node certificate, which the
server checks against the cluster CA and the node's name), or the admin token for an agent
run with it. The websocket checks it itself (HTTP middleware does not see websockets), and
answers a refusal with an error frame and close code 4000 + status.
Rejected alternative: the server authenticating with a client certificate
(mTLS); uvicorn does not pass the peer certificate to the app, so the agent could not tell
the server's certificate from another node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from corral.agent.drivers.base import Driver, DriverError, TaskHandle, signal_name
from corral.agent.drivers.supervised import SupervisedDriver
from corral.agent.exec_session import run_exec
from corral.agent.logs import LogLine, follow_logs, read_logs
from corral.agent.processes import describe_processes
from corral.exec_protocol import ProtocolError, close_code, error_frame, parse_request

__all__ = ["InstanceControl", "create_agent_app"]

log = logging.getLogger(__name__)
_MAX_SIGNAL = 64


class InstanceControl(Protocol):
    """What the API needs of the agent to act on an instance (`Agent.running`)."""

    def running(self, instance_id: str) -> tuple[Driver, TaskHandle] | None:
        """The driver and handle of the instance's process while it runs here."""
        ...


class SignalBody(BaseModel):
    signal: int


class _Socket:
    """A websocket as `exec_session.Channel`: sends serialised, None once it is gone."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()

    async def receive(self) -> bytes | str | None:
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        data: bytes | str | None = message.get("bytes")
        return data if data is not None else message.get("text") or ""

    async def send(self, frame: bytes | str) -> None:
        async with self._lock:
            if isinstance(frame, bytes):
                await self._ws.send_bytes(frame)
            else:
                await self._ws.send_text(frame)


def _authorized(headers: Mapping[str, str], token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(),
                                                                 token.encode())

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _encode(line: LogLine) -> bytes:
    return (json.dumps({"time": line.time, "stream": line.stream, "text": line.text})
            + "\n").encode()


def create_agent_app(*, token: str, log_dir_of: Callable[[str], Path],
                     control: InstanceControl | None = None,
                     metrics: Callable[[], bytes] | None = None) -> FastAPI:
    app = FastAPI(title="Corral agent", openapi_url=None, docs_url=None, redoc_url=None)

    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"status": status, "message": message}},
                            status_code=status)

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.url.path != "/healthz" and not _authorized(request.headers, token):
            return _error(401, "missing or invalid token")
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/agent/instances/{instance_id}/logs", response_model=None)
    async def logs(instance_id: str, since: float | None = None, tail: int | None = None,
                   follow: bool = False, stream: str | None = None
                   ) -> StreamingResponse | JSONResponse:
        if not _ID.match(instance_id):
            return _error(400, f"invalid instance id {instance_id!r}")
        if stream not in (None, "stdout", "stderr"):
            return _error(400, "stream must be stdout or stderr")
        log_dir = log_dir_of(instance_id)
        if not log_dir.exists():
            return _error(404, f"no logs for instance {instance_id} on this node")
        streams = (stream,) if stream else ("stdout", "stderr")

        async def body() -> AsyncIterator[bytes]:
            if follow:
                async for line in follow_logs(log_dir, streams=streams, since=since,
                                              tail=tail):
                    yield _encode(line)
            else:
                for line in read_logs(log_dir, streams=streams, since=since, tail=tail):
                    yield _encode(line)

        return StreamingResponse(body(), media_type="application/x-ndjson")

    # --- metrics (`agent/metrics.py`): behind the token, as everything but /healthz

    if metrics is not None:
        render = metrics

        @app.get("/metrics", response_class=Response)
        async def prometheus() -> Response:
            return Response(render(), media_type=CONTENT_TYPE_LATEST)

    # --- remote control: processes, signal, exec (`corral ps --processes`, `kill`, `exec`)

    def _running(instance_id: str) -> tuple[Driver, TaskHandle] | JSONResponse:
        if not _ID.match(instance_id):
            return _error(400, f"invalid instance id {instance_id!r}")
        found = control.running(instance_id) if control is not None else None
        if found is None:
            return _error(409, f"instance {instance_id} is not running on this node")
        return found

    @app.get("/v1/agent/instances/{instance_id}/processes", response_model=None)
    async def processes(instance_id: str) -> dict[str, Any] | JSONResponse:
        found = _running(instance_id)
        if isinstance(found, JSONResponse):
            return found
        driver, handle = found
        if not isinstance(driver, SupervisedDriver):
            return _error(409, f"driver {driver.name} cannot list an instance's processes")
        procs = describe_processes(driver.pids(handle), now=time.time())
        return {"instance": instance_id, "pid": handle.pid,
                "processes": [p.to_data() for p in procs]}

    @app.post("/v1/agent/instances/{instance_id}/signal", response_model=None)
    async def send_signal(instance_id: str, body: SignalBody) -> dict[str, Any] | JSONResponse:
        if not 1 <= body.signal <= _MAX_SIGNAL:
            return _error(400, f"signal must be 1 to {_MAX_SIGNAL}, not {body.signal}")
        found = _running(instance_id)
        if isinstance(found, JSONResponse):
            return found
        driver, handle = found
        try:
            await driver.signal(handle, body.signal)
        except (DriverError, OSError) as exc:
            return _error(409, f"cannot signal instance {instance_id}: {exc}")
        log.info("sent %s to instance %s (pid %d)", signal_name(body.signal), instance_id,
                 handle.pid, extra={"instance": instance_id})
        return {"instance": instance_id, "pid": handle.pid, "signal": body.signal}

    @app.websocket("/v1/agent/instances/{instance_id}/exec")
    async def exec_command(websocket: WebSocket, instance_id: str) -> None:
        await websocket.accept()
        channel = _Socket(websocket)

        async def refuse(status: int, message: str) -> None:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # it left already
                await channel.send(error_frame(message))
                await websocket.close(code=close_code(status), reason=message[:120])

        if not _authorized(websocket.headers, token):
            await refuse(401, "missing or invalid token")
            return
        first = await channel.receive()
        if first is None:
            return
        try:
            request = parse_request(first if isinstance(first, str) else first.decode())
        except (ProtocolError, UnicodeDecodeError) as exc:
            await refuse(400, str(exc))
            return
        found = _running(instance_id)
        if isinstance(found, JSONResponse):
            await refuse(found.status_code, json.loads(bytes(found.body))["error"]["message"])
            return
        driver, handle = found
        if not isinstance(driver, SupervisedDriver):
            await refuse(409, f"driver {driver.name} cannot run commands in instances")
            return
        try:
            command = driver.exec_command(handle, request.command)
        except DriverError as exc:
            await refuse(409, str(exc))
            return
        log.info("exec in instance %s: %s", instance_id, " ".join(request.command)[:200],
                 extra={"instance": instance_id, "tty": request.tty})
        try:
            code = await run_exec(channel, command, request)
        except OSError as exc:
            await refuse(409, f"cannot run {request.command[0]!r}: {exc}")
            return
        if code >= 0:  # else the client has gone
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close(code=1000)

    return app
