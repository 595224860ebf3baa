"""The typed HTTP client of the Corral API, used by the CLI, the agent, tests and (later)
hollow nodes. Async only (STYLE.md rule 14): the CLI wraps calls in `asyncio.run`.

Errors: a non-2xx answer raises `ApiError` with the server's message; a server that cannot
be reached raises `Unreachable` saying where it looked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from corral.client.config import ClientConfig

__all__ = ["ApiError", "Client", "Unreachable"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class Unreachable(Exception):
    pass


def _error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
        err = body.get("error", {}) if isinstance(body, dict) else {}
        return ApiError(resp.status_code, err.get("message") or resp.text, err.get("details"))
    except ValueError:
        return ApiError(resp.status_code, resp.text or resp.reason_phrase)


class Client:
    def __init__(self, config: ClientConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 30.0) -> None:
        self.config = config
        headers = {"authorization": f"Bearer {config.token}"} if config.token else {}
        self._http = httpx.AsyncClient(base_url=config.addr, headers=headers,
                                       transport=transport, timeout=timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, timeout: float | None = None,
                      **kwargs: Any) -> Any:
        try:
            if timeout is not None:
                kwargs["timeout"] = timeout
            resp = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the corral server at {self.config.addr} ({exc}); "
                              "is `corral up` running? (CORRAL_ADDR)") from exc
        if resp.status_code >= 400:
            raise _error(resp)
        if not resp.content:
            return None
        return resp.json()

    async def stream_lines(self, path: str, params: dict[str, Any]) -> AsyncIterator[Any]:
        try:
            async with self._http.stream("GET", path, params=params,
                                         timeout=httpx.Timeout(10.0, read=None)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error(resp)
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise Unreachable(f"lost the corral server at {self.config.addr} ({exc})") from exc

    # applications
    async def apply(self, spec: dict[str, Any], *, dry_run: bool = False) -> Any:
        return await self.request("POST", "/v1/apps", json={"spec": spec},
                                  params={"dry_run": str(dry_run).lower()})

    async def list_apps(self, namespace: str | None = None) -> Any:
        return await self.request("GET", "/v1/apps", params=_drop(namespace=namespace))

    async def get_app(self, name: str, namespace: str = "default") -> Any:
        return await self.request("GET", f"/v1/apps/{name}", params={"namespace": namespace})

    async def delete_app(self, name: str, namespace: str = "default") -> Any:
        return await self.request("DELETE", f"/v1/apps/{name}", params={"namespace": namespace})

    async def app_version(self, name: str, version: int, namespace: str = "default") -> Any:
        return await self.request("GET", f"/v1/apps/{name}/versions/{version}",
                                  params={"namespace": namespace})

    # instances
    async def list_instances(self, *, app: str | None = None, namespace: str | None = None,
                             node: str | None = None, service: str | None = None,
                             all: bool = False) -> Any:
        return await self.request("GET", "/v1/instances", params=_drop(
            app=app, namespace=namespace, node=node, service=service, all=str(all).lower()))

    async def get_instance(self, instance_id: str) -> Any:
        return await self.request("GET", f"/v1/instances/{instance_id}")

    async def report_status(self, instance_id: str, status: dict[str, Any]) -> Any:
        return await self.request("PUT", f"/v1/instances/{instance_id}/status", json=status)

    def logs(self, *, app: str | None = None, instance: str | None = None,
             namespace: str = "default", service: str | None = None,
             since: float | None = None, tail: int | None = None, follow: bool = False
             ) -> AsyncIterator[Any]:
        params = _drop(since=since, tail=tail, follow=str(follow).lower(), service=service,
                       namespace=namespace)
        path = f"/v1/instances/{instance}/logs" if instance else f"/v1/apps/{app}/logs"
        return self.stream_lines(path, params)

    # nodes
    async def register_node(self, body: dict[str, Any]) -> Any:
        return await self.request("POST", "/v1/nodes", json=body)

    async def heartbeat(self, name: str, lease_id: int) -> Any:
        return await self.request("PUT", f"/v1/nodes/{name}/heartbeat",
                                  params={"lease_id": lease_id})

    async def node_instances(self, name: str, *, index: int, wait: float) -> Any:
        return await self.request("GET", f"/v1/nodes/{name}/instances",
                                  params={"index": index, "wait": wait}, timeout=wait + 15)

    async def report_usage(self, name: str, instances: dict[str, Any]) -> Any:
        return await self.request("PUT", f"/v1/nodes/{name}/usage",
                                  json={"instances": instances})

    async def drain_node(self, name: str, deadline: float | None = None) -> Any:
        return await self.request("POST", f"/v1/nodes/{name}/drain",
                                  json={"deadline": deadline})

    async def cordon_node(self, name: str) -> Any:
        return await self.request("POST", f"/v1/nodes/{name}/cordon")

    async def uncordon_node(self, name: str) -> Any:
        return await self.request("POST", f"/v1/nodes/{name}/uncordon")

    async def get_node(self, name: str) -> Any:
        return await self.request("GET", f"/v1/nodes/{name}")

    async def list_nodes(self) -> Any:
        return await self.request("GET", "/v1/nodes")

    # events
    async def events(self, *, since: int = 0, topic: str | None = None,
                     key: str | None = None, limit: int = 0) -> Any:
        return await self.request("GET", "/v1/events", params=_drop(
            since=since, topic=topic, key=key, limit=limit or None))

    def follow_events(self, *, since: int = 0, topic: str | None = None,
                      key: str | None = None) -> AsyncIterator[Any]:
        return self.stream_lines("/v1/events", _drop(since=since, topic=topic, key=key,
                                                     follow="true"))

    # artifacts
    async def artifact_exists(self, digest: str, *, kind: str = "artifact") -> bool:
        """Whether `digest` was uploaded and checked as `kind` (`artifact` or `rootfs`)."""
        try:
            await self.request("HEAD", f"/v1/artifacts/{digest}", params={"kind": kind})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def upload_artifact(self, digest: str, path: Path, *, kind: str = "artifact") -> Any:
        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
        return await self.request("PUT", f"/v1/artifacts/{digest}", content=chunks(),
                                  params={"kind": kind},
                                  headers={"content-type": "application/gzip"}, timeout=300)

    async def download_artifact(self, digest: str, dest: Path) -> None:
        try:
            async with self._http.stream("GET", f"/v1/artifacts/{digest}",
                                         timeout=300) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error(resp)
                with open(dest, "wb") as f:
                    async for chunk in resp.aiter_bytes():
                        f.write(chunk)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot download {digest} from {self.config.addr}: {exc}") \
                from exc

    async def status(self) -> Any:
        return await self.request("GET", "/v1/status")

    async def healthy(self) -> bool:
        try:
            await self.request("GET", "/healthz", timeout=2)
        except (Unreachable, ApiError):
            return False
        return True


def _drop(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}
