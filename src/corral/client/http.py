"""The typed HTTP client of the Corral API, used by the CLI, the agent, tests and (later)
hollow nodes. Async only (STYLE.md rule 14): the CLI wraps calls in `asyncio.run`.

Errors: a non-2xx answer raises `ApiError` with the server's message; a server that cannot
be reached, or whose certificate does not verify, raises `Unreachable` saying where it
looked and what to set.

TLS: the server is verified against `config.cacert` (the cluster CA) when given, else
against the system's CAs; never not at all.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from corral.client.config import ClientConfig
from corral.model.units import parse_duration

__all__ = ["ApiError", "Client", "Unreachable", "UntrustedServer", "tls_context"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class Unreachable(Exception):
    pass


class UntrustedServer(Unreachable):
    """The server answered with a certificate that does not verify: retrying won't help."""


def tls_context(cacert: str) -> ssl.SSLContext:
    """A client context that trusts only the CA in `cacert` (or the system's CAs for "")."""
    try:
        return ssl.create_default_context(cafile=cacert or None)
    except (OSError, ssl.SSLError) as exc:
        raise Unreachable(f"cannot read the CA certificate {cacert!r} (CORRAL_CACERT): "
                          f"{exc}") from exc


def _cause(exc: BaseException) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _unreachable(config: ClientConfig, exc: httpx.TransportError, what: str) -> Unreachable:
    bad_cert = _cause(exc)
    if bad_cert is not None:
        trust = f"the CA in {config.cacert}" if config.cacert else "the system's CAs"
        return UntrustedServer(
            f"the corral server at {config.addr} has a certificate that does not verify "
            f"against {trust} ({getattr(bad_cert, 'verify_message', '') or bad_cert}); set "
            "CORRAL_CACERT to the cluster CA (<server data>/pki/ca.crt; `corral up` writes "
            "it to the config)")
    hint = ("; the server speaks HTTPS unless started with --insecure-http"
            if config.addr.startswith("http://") else "")
    return Unreachable(f"{what} at {config.addr} ({exc or type(exc).__name__}); is `corral "
                       f"up` running? (CORRAL_ADDR){hint}")


def _resendable(kwargs: dict[str, Any]) -> bool:
    """Whether a request's body can be sent twice: none, JSON, or bytes in memory (not a
    stream that the first attempt consumed)."""
    content = kwargs.get("content")
    return content is None or isinstance(content, (bytes, str))


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
        # An injected transport (tests: ASGI) has no TLS to verify.
        verify = tls_context(config.cacert) if transport is None else True
        self._http = httpx.AsyncClient(base_url=config.addr, headers=headers, verify=verify,
                                       transport=transport, timeout=timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, timeout: float | None = None,
                      **kwargs: Any) -> Any:
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            try:
                resp = await self._http.request(method, path, **kwargs)
            except httpx.RemoteProtocolError:
                # "Server disconnected without sending a response": mostly a kept-alive
                # connection the server closed as it was reused (uvicorn closes idle ones
                # after 5 s). Sent again once on a fresh connection when that is safe: a
                # GET or a PUT of a body in memory (every PUT of this API may be repeated).
                if method not in ("GET", "PUT") or not _resendable(kwargs):
                    raise
                resp = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.config, exc, "cannot reach the corral server") from exc
        if resp.status_code >= 400:
            raise _error(resp)
        if not resp.content:
            return None
        return resp.json()

    async def stream_lines(self, path: str, params: dict[str, Any], *,
                           read_timeout: float | None = None) -> AsyncIterator[Any]:
        """Each line of a streamed answer, decoded; `read_timeout`: the longest wait for
        the next bytes (None: no limit)."""
        try:
            async with self._http.stream("GET", path, params=params,
                                         timeout=httpx.Timeout(10.0, read=read_timeout)
                                         ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error(resp)
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise _unreachable(self.config, exc, "lost the corral server") from exc

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

    async def history(self, name: str, namespace: str = "default") -> Any:
        return await self.request("GET", f"/v1/apps/{name}/history",
                                  params={"namespace": namespace})

    async def rollback(self, name: str, *, service: str | None = None,
                       version: int | None = None, namespace: str = "default") -> Any:
        return await self.request("POST", f"/v1/apps/{name}/rollback",
                                  params={"namespace": namespace},
                                  json={"service": service, "version": version})

    async def restart(self, name: str, *, service: str | None = None,
                      namespace: str = "default") -> Any:
        return await self.request("POST", f"/v1/apps/{name}/restart",
                                  params={"namespace": namespace}, json={"service": service})

    async def scale(self, name: str, *, service: str, instances: int,
                    namespace: str = "default") -> Any:
        return await self.request("POST", f"/v1/apps/{name}/scale",
                                  params={"namespace": namespace},
                                  json={"service": service, "instances": instances})

    # deployments
    async def list_deployments(self, *, app: str | None = None, namespace: str | None = None,
                               service: str | None = None, status: str | None = None) -> Any:
        return await self.request("GET", "/v1/deployments", params=_drop(
            app=app, namespace=namespace, service=service, status=status))

    async def get_deployment(self, deployment_id: str) -> Any:
        return await self.request("GET", f"/v1/deployments/{deployment_id}")

    async def promote_deployment(self, deployment_id: str) -> Any:
        return await self.request("POST", f"/v1/deployments/{deployment_id}/promote")

    async def fail_deployment(self, deployment_id: str, reason: str = "") -> Any:
        return await self.request("POST", f"/v1/deployments/{deployment_id}/fail",
                                  json={"reason": reason})

    # instances
    async def list_instances(self, *, app: str | None = None, namespace: str | None = None,
                             node: str | None = None, service: str | None = None,
                             all: bool = False, state: str | None = None) -> Any:
        """`state`: comma-separated states to keep (stopped and lost ones included then)."""
        return await self.request("GET", "/v1/instances", params=_drop(
            app=app, namespace=namespace, node=node, service=service, all=str(all).lower(),
            state=state))

    async def instance_processes(self, instance_id: str) -> Any:
        return await self.request("GET", f"/v1/instances/{instance_id}/processes")

    async def signal(self, target: str, signal: str | int = "SIGTERM", *,
                     namespace: str = "default") -> Any:
        """`{signal, number, results: [{id, ..., outcome, message, pid}]}`."""
        return await self.request("POST", "/v1/instances/signal", json={
            "target": target, "namespace": namespace, "signal": signal})

    async def get_instance(self, instance_id: str) -> Any:
        return await self.request("GET", f"/v1/instances/{instance_id}")

    async def report_status(self, instance_id: str, status: dict[str, Any]) -> Any:
        return await self.request("PUT", f"/v1/instances/{instance_id}/status", json=status)

    async def report_statuses(self, node: str, reports: list[dict[str, Any]]) -> Any:
        """Many status reports of one node's instances in one request (and one store
        transaction): `[{"id": ..., "state": ..., ...}]`, applied in order."""
        return await self.request("PUT", f"/v1/nodes/{node}/status",
                                  json={"reports": reports})

    def logs(self, *, app: str | None = None, instance: str | None = None,
             namespace: str = "default", service: str | None = None,
             since: float | None = None, tail: int | None = None, follow: bool = False,
             stream: str | None = None) -> AsyncIterator[Any]:
        params = _drop(since=since, tail=tail, follow=str(follow).lower(), service=service,
                       namespace=namespace, stream=stream)
        path = f"/v1/instances/{instance}/logs" if instance else f"/v1/apps/{app}/logs"
        return self.stream_lines(path, params)

    # nodes
    async def register_node(self, body: dict[str, Any]) -> Any:
        return await self.request("POST", "/v1/nodes", json=body)

    async def heartbeat(self, name: str, lease_id: int) -> Any:
        return await self.request("PUT", f"/v1/nodes/{name}/heartbeat",
                                  params={"lease_id": lease_id})

    async def node_instances(self, name: str, *, index: int, wait: float,
                             changes: bool = False) -> Any:
        """A node's long poll; `changes`: only the records changed since `index` (see
        `client/assignments.py`)."""
        params: dict[str, Any] = {"index": index, "wait": wait}
        if changes:
            params["changes"] = "true"
        return await self.request("GET", f"/v1/nodes/{name}/instances", params=params,
                                  timeout=wait + 15)

    def watch_node_instances(self, name: str, *, index: int, wait: float,
                             changes: bool = False) -> AsyncIterator[Any]:
        """A node's watch: the answers its long polls would get, on one response, one at
        least every `wait` seconds (a silent server is a lost one after `wait` + 15 s).
        Ends when the server ends the watch (after `WATCH_SECONDS`, or as it stops): ask
        again from the last answer's index."""
        params: dict[str, Any] = {"index": index, "wait": wait, "watch": "true"}
        if changes:
            params["changes"] = "true"
        return self.stream_lines(f"/v1/nodes/{name}/instances", params,
                                 read_timeout=wait + 15)

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

    # the service catalog
    async def services(self, namespace: str | None = None, app: str | None = None,
                       digest: str | None = None, wait: float | str | None = None) -> Any:
        """`{"digest", "services": [...]}`. With `digest` and `wait` (seconds or a duration
        such as `30s`, at most 5m): answers once the catalog's digest differs from
        `digest`, or after `wait` with the same one."""
        return await self.request("GET", "/v1/services", params=_drop(
            namespace=namespace, app=app, digest=digest, wait=_wait(wait)),
            timeout=_wait_timeout(wait))

    async def service(self, namespace: str, app: str, service: str,
                      digest: str | None = None, wait: float | str | None = None) -> Any:
        """One catalog entry plus its `digest`; the same watch as `services`."""
        return await self.request("GET", f"/v1/services/{namespace}/{app}/{service}",
                                  params=_drop(digest=digest, wait=_wait(wait)),
                                  timeout=_wait_timeout(wait))

    # jobs
    async def list_jobs(self, *, namespace: str | None = None, app: str | None = None
                        ) -> Any:
        return await self.request("GET", "/v1/jobs", params=_drop(namespace=namespace,
                                                                   app=app))

    async def job_runs(self, app: str, job: str, *, namespace: str = "default",
                       limit: int | None = None) -> Any:
        """Newest first."""
        return await self.request("GET", f"/v1/jobs/{namespace}/{app}/{job}/runs",
                                  params=_drop(limit=limit))

    async def job_run(self, app: str, job: str, number: int, *,
                      namespace: str = "default") -> Any:
        return await self.request("GET", f"/v1/jobs/{namespace}/{app}/{job}/runs/{number}")

    async def start_job(self, app: str, job: str, *, namespace: str = "default") -> Any:
        """Starts a run now (cause manual); the run record."""
        return await self.request("POST", f"/v1/jobs/{namespace}/{app}/{job}/run")

    async def cancel_job_run(self, app: str, job: str, number: int, *,
                             namespace: str = "default") -> Any:
        return await self.request(
            "POST", f"/v1/jobs/{namespace}/{app}/{job}/runs/{number}/cancel")

    # events
    async def events(self, *, since: int = 0, topic: str | list[str] | None = None,
                     key: str | None = None, limit: int = 0, app: str | None = None,
                     namespace: str | None = None) -> Any:
        """Retained events after `since`, oldest first (`topic`: one or several)."""
        return await self.request("GET", "/v1/events", params=_drop(
            since=since, topic=topic or None, key=key, limit=limit or None, app=app,
            namespace=namespace))

    def follow_events(self, *, since: int = 0, topic: str | list[str] | None = None,
                      key: str | None = None, app: str | None = None,
                      namespace: str | None = None, limit: int = 0) -> AsyncIterator[Any]:
        """The backlog after `since`, then live events. The stream may end with
        `{"type": "fell-behind", "index": N}`: follow again from `since=N`."""
        return self.stream_lines("/v1/events", _drop(
            since=since, topic=topic or None, key=key, app=app, namespace=namespace,
            limit=limit or None, follow="true"))

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
            raise _unreachable(self.config, exc, f"cannot download {digest}") from exc

    # joining and identities
    async def ca_certificate(self) -> str:
        """The cluster CA (PEM); public, so a joining agent can pin it by hash."""
        try:
            resp = await self._http.get("/v1/join/ca")
        except httpx.TransportError as exc:
            raise _unreachable(self.config, exc, "cannot reach the corral server") from exc
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.text

    async def join(self, *, token: str, name: str, csr: str) -> Any:
        return await self.request("POST", "/v1/join",
                                  json={"token": token, "name": name, "csr": csr})

    async def revoke_node(self, name: str) -> Any:
        return await self.request("DELETE", f"/v1/nodes/{name}/credential")

    async def create_token(self, *, ttl: float | None = None, description: str = "") -> Any:
        body: dict[str, Any] = {"description": description}
        if ttl is not None:
            body["ttl"] = ttl
        return await self.request("POST", "/v1/tokens", json=body)

    async def list_tokens(self) -> Any:
        return await self.request("GET", "/v1/tokens")

    async def revoke_token(self, token_id: str) -> Any:
        return await self.request("DELETE", f"/v1/tokens/{token_id}")

    async def status(self) -> Any:
        return await self.request("GET", "/v1/status")

    async def healthy(self) -> bool:
        try:
            await self.request("GET", "/healthz", timeout=2)
        except (Unreachable, ApiError):
            return False
        return True


def _wait(wait: float | str | None) -> str | None:
    return None if wait is None else wait if isinstance(wait, str) else f"{wait:g}"


def _wait_timeout(wait: float | str | None) -> float | None:
    """A read timeout beyond a blocking query's `wait` (None: the client's default)."""
    if wait is None:
        return None
    try:
        seconds = float(wait)
    except ValueError:
        try:
            seconds = parse_duration(wait)
        except ValueError:
            return None  # the server says what is wrong with it
    return seconds + 15 if 0 <= seconds < 1e6 else None


def _drop(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}
