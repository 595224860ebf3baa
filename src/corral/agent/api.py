"""The agent's own small HTTP API, which only the server calls (it proxies `corral logs`
to the node that ran the instance, as the Kubernetes apiserver does to kubelets).

- `GET /healthz`
- `GET /v1/agent/instances/{id}/logs?since=&tail=&follow=&stream=` newline-delimited JSON
  lines `{"time", "stream", "text"}`, oldest first.
Every request but `/healthz` needs the secret the server presents: the `agent_token` this
node received when it joined (then the API is HTTPS with the node certificate, which the
server checks against the cluster CA and the node's name), or the admin token for an agent
run with it. Rejected alternative: the server authenticating with a client certificate
(mTLS); uvicorn does not pass the peer certificate to the app, so the agent could not tell
the server's certificate from another node's.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from corral.agent.logs import LogLine, follow_logs, read_logs

__all__ = ["create_agent_app"]

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _encode(line: LogLine) -> bytes:
    return (json.dumps({"time": line.time, "stream": line.stream, "text": line.text})
            + "\n").encode()


def create_agent_app(*, token: str, log_dir_of: Callable[[str], Path]) -> FastAPI:
    app = FastAPI(title="Corral agent", openapi_url=None, docs_url=None, redoc_url=None)

    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"status": status, "message": message}},
                            status_code=status)

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.url.path != "/healthz":
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                    given.strip().encode(), token.encode()):
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

    return app
