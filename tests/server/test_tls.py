"""TLS on real sockets: the server answers HTTPS only, clients verify it against the
cluster CA, and a node certificate proves one node's name and nothing else."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from corral.agent.identity import new_key_and_csr
from corral.client import Client, ClientConfig, UntrustedServer
from corral.secretfile import write_private
from corral.server.pki import (
    ClusterPki,
    ensure_server_cert,
    load_or_create_pki,
    node_dns_name,
    sign_node_csr,
)
from corral.serving import bind_socket, make_server


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


@asynccontextmanager
async def _https(certfile: Path, keyfile: Path) -> AsyncIterator[int]:
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(_app(), certfile=certfile, keyfile=keyfile)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
def pki(tmp_path: Path) -> ClusterPki:
    pki = load_or_create_pki(tmp_path / "pki", now=_now())
    ensure_server_cert(pki, sans=["127.0.0.1", "localhost"], now=_now())
    return pki


def _now() -> float:
    return time.time()


async def test_clients_verify_the_server_against_the_cluster_ca(pki: ClusterPki) -> None:
    async with _https(pki.server_cert_path, pki.server_key_path) as port:
        url = f"https://127.0.0.1:{port}"
        async with Client(ClientConfig(addr=url, token="", cacert=str(pki.ca_cert_path))) as c:
            assert await c.request("GET", "/healthz") == {"ok": True}
        # without the CA: the system's CAs do not know this cluster
        async with Client(ClientConfig(addr=url, token="")) as c:
            with pytest.raises(UntrustedServer, match="CORRAL_CACERT"):
                await c.request("GET", "/healthz")
        # plain HTTP gets no answer at all
        async with httpx.AsyncClient(timeout=5) as http:
            with pytest.raises(httpx.TransportError):
                await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_node_certificate_proves_only_that_node(pki: ClusterPki,
                                                        tmp_path: Path) -> None:
    key_pem, csr = new_key_and_csr("n1")
    cert = sign_node_csr(pki, csr, name="n1", now=_now())
    write_private(tmp_path / "node.key", key_pem)
    (tmp_path / "node.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verify = ssl.create_default_context(cadata=pki.ca_pem.decode())
    async with _https(tmp_path / "node.crt", tmp_path / "node.key") as port:
        url = f"https://127.0.0.1:{port}/healthz"
        # how the server calls an agent: by address, checking the node's name (a new
        # client each time: connections are pooled by address, not by name)
        async with httpx.AsyncClient(verify=verify, timeout=5) as http:
            resp = await http.get(url, extensions={"sni_hostname": node_dns_name("n1")})
            assert resp.json() == {"ok": True}
        for name in (node_dns_name("n2"), "127.0.0.1", "localhost"):
            async with httpx.AsyncClient(verify=verify, timeout=5) as http:
                with pytest.raises(httpx.ConnectError):
                    await http.get(url, extensions={"sni_hostname": name})
        # a node cannot pass for the server with the CLI either
        async with Client(ClientConfig(addr=f"https://127.0.0.1:{port}", token="",
                                       cacert=str(pki.ca_cert_path))) as c:
            with pytest.raises(UntrustedServer):
                await c.request("GET", "/healthz")
