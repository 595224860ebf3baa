"""Joining and node identity, in process: join tokens (good, bad, expired, revoked), forged
node names, what a node credential may and may not do, and revoking a node."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from corral.agent.identity import (
    JoinError,
    fetch_pinned_ca,
    join,
    load_identity,
    new_key_and_csr,
)
from corral.client import ApiError, Client, ClientConfig
from corral.server import keys
from corral.server.pki import node_dns_name, verify_node_cert
from corral.testing.server import ServerHarness, server_harness

WEB = {"name": "shop", "services": {"web": {
    "instances": 2, "command": ["python3", "app.py"],
    "resources": {"cpu": 0.25, "memory": "128MiB"}, "ports": [{"name": "http"}]}}}


def node_body(name: str, address: str = "10.0.0.1") -> dict[str, Any]:
    return {"name": name, "address": address, "capacity": {"cpu": 2.0, "memory": 4 << 30},
            "port_range": [20000, 20100], "drivers": {"process": ""}}


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        yield s


async def _status(call: Any) -> int:
    with pytest.raises(ApiError) as err:
        await call
    return err.value.status


async def _refused(srv: ServerHarness, *, token: str, name: str = "n1") -> ApiError:
    """A join that must be refused with 401 and write nothing at all."""
    before = await srv.ctx.store.revision()
    _, csr = new_key_and_csr(name)
    anon = srv.anonymous()
    with pytest.raises(ApiError) as err:
        await anon.join(token=token, name=name, csr=csr)
    await anon.close()
    assert err.value.status == 401, err.value.message
    assert await srv.ctx.store.revision() == before
    assert await srv.ctx.store.get(keys.node_auth(name)) is None
    assert await srv.ctx.store.get(keys.node(name)) is None
    return err.value


async def test_join_issues_a_certificate_and_a_credential_for_that_node(
        srv: ServerHarness) -> None:
    node = await srv.join("n1")
    assert node.answer["name"] == "n1" and node.answer["credential"].startswith("node.n1.")
    assert srv.ctx.pki is not None
    assert node.answer["ca"].encode() == srv.ctx.pki.ca_pem
    cert = x509.load_pem_x509_certificate(node.answer["certificate"].encode())
    assert verify_node_cert(srv.ctx.pki.ca_cert, cert, now=srv.clock.now()) == "n1"
    # the credential works for its own node's agent endpoints
    reg = await node.client.register_node(node_body("n1"))
    await node.client.heartbeat("n1", reg["lease_id"])
    assert (await node.client.node_instances("n1", index=0, wait=0))["instances"] == []
    assert (await srv.client.get_node("n1"))["state"] == "ready"
    # only hashes are stored: the secret part of the credential is nowhere in the store
    kv = await srv.ctx.store.get(keys.node_auth("n1"))
    assert kv is not None
    assert node.answer["credential"].split(".")[2].encode() not in kv.value
    events = await srv.client.events(topic="node", key="n1")
    assert [e["type"] for e in events] == ["joined", "registered"]
    await node.client.close()


@pytest.mark.parametrize("make_token", [
    lambda good: good[:7] + ("a" if good[7] != "a" else "b") + good[8:],  # wrong secret
    lambda good: "zzzzzz" + good[6:],  # unknown id
    lambda good: "not-a-token",  # malformed
    lambda good: "",
])
async def test_a_bad_join_token_is_refused_and_changes_nothing(srv: ServerHarness,
                                                               make_token: Any) -> None:
    err = await _refused(srv, token=make_token(await srv.join_token()))
    assert "token" in err.message and "corral token create" in err.message


async def test_an_expired_join_token_is_refused(srv: ServerHarness) -> None:
    token = await srv.join_token(ttl=60)
    await srv.clock.advance(61)
    err = await _refused(srv, token=token)
    assert "expired" in err.message
    listed = await srv.client.list_tokens()
    assert [t["state"] for t in listed] == ["expired"]


async def test_a_revoked_join_token_is_refused(srv: ServerHarness) -> None:
    token = await srv.join_token()
    await srv.join("n0", token=token)  # works before
    revoked = await srv.client.revoke_token(token.split(".")[0])
    assert revoked["state"] == "revoked"
    err = await _refused(srv, token=token)
    assert "revoked" in err.message


async def test_tokens_are_listed_without_secrets_and_revoked_by_id(srv: ServerHarness) -> None:
    made = await srv.client.create_token(ttl=0, description="rack 4")
    assert made["expires_at"] is None and made["state"] == "valid"
    assert srv.ctx.pki is not None and made["ca_cert_hash"] == srv.ctx.pki.ca_hash
    token_id, secret = made["token"].split(".")
    listed = await srv.client.list_tokens()
    assert [(t["id"], t["description"], t["state"]) for t in listed] == \
        [(token_id, "rack 4", "valid")]
    assert secret not in str(listed)
    kv = await srv.ctx.store.get(keys.token(token_id))
    assert kv is not None and secret.encode() not in kv.value
    assert await _status(srv.client.revoke_token("nope00")) == 404
    await srv.client.revoke_token(token_id)
    again = await srv.client.revoke_token(token_id)  # idempotent
    assert again["state"] == "revoked"
    types = [e["type"] for e in await srv.client.events(topic="token")]
    assert types == ["created", "revoked"]


async def test_a_forged_node_name_is_refused(srv: ServerHarness) -> None:
    first = await srv.join("n1")
    before = await srv.ctx.store.get(keys.node_auth("n1"))
    with pytest.raises(ApiError) as err:
        await srv.join("n1")  # another machine (another key) claims the name
    assert err.value.status == 403 and "another node identity" in err.value.message
    assert await srv.ctx.store.get(keys.node_auth("n1")) == before
    await first.client.register_node(node_body("n1"))  # the real n1 is unaffected
    # the same key may join again (lost credential file): the old credential then stops
    again = await srv.join("n1", key_and_csr=(first.key_pem, _csr_for(first.key_pem)))
    assert await _status(first.client.list_instances(node="n1")) == 401
    assert await again.client.list_instances(node="n1") == []
    for c in (first.client, again.client):
        await c.close()


def _csr_for(key_pem: bytes) -> str:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_a_live_node_registered_with_the_admin_token_keeps_its_name(
        srv: ServerHarness) -> None:
    await srv.client.register_node(node_body("n1"))
    with pytest.raises(ApiError) as err:
        await srv.join("n1")
    assert err.value.status == 403 and "admin token" in err.value.message
    assert await srv.ctx.store.get(keys.node_auth("n1")) is None


async def test_invalid_join_requests_are_400(srv: ServerHarness) -> None:
    token = await srv.join_token()
    anon = srv.anonymous()
    _, csr = new_key_and_csr("n1")
    assert await _status(anon.join(token=token, name="Bad_Name", csr=csr)) == 400
    assert await _status(anon.join(token=token, name="n1", csr="garbage")) == 400
    tampered = csr.replace(csr.splitlines()[3], csr.splitlines()[3][::-1])
    assert await _status(anon.join(token=token, name="n1", csr=tampered)) == 400
    await anon.close()
    assert await srv.ctx.store.get(keys.node_auth("n1")) is None


async def _placed(srv: ServerHarness, *names: str) -> dict[str, Any]:
    """Joined nodes with one instance of `shop` on each (placed while the others were
    cordoned, so the test does not depend on the scheduler's ranking)."""
    joined = {n: await srv.join(n) for n in names}
    for k, (n, node) in enumerate(joined.items()):
        await node.client.register_node(node_body(n, f"10.0.0.{k + 1}"))
    for k, n in enumerate(names):
        for other in names:
            if other != n:
                await srv.client.cordon_node(other)
        await srv.client.uncordon_node(n)
        await srv.client.apply({**WEB, "services": {"web": {**WEB["services"]["web"],
                                                            "instances": k + 1}}})
        await srv.reconcile()
    for n in names:
        await srv.client.uncordon_node(n)
    return joined


async def test_a_node_acts_only_for_itself(srv: ServerHarness) -> None:
    joined = await _placed(srv, "n1", "n2")
    n1, n2 = joined["n1"].client, joined["n2"].client
    by_node = {i["node"]: i for i in await srv.client.list_instances(app="shop")}
    assert set(by_node) == {"n1", "n2"}
    theirs = by_node["n2"]["id"]
    # status for another node's instance: neither as itself nor in the other's name
    assert await _status(n1.report_status(theirs, {"node": "n1", "state": "starting"})) == 403
    assert await _status(n1.report_status(theirs, {"node": "n2", "state": "starting"})) == 403
    assert (await srv.client.get_instance(theirs))["state"] == "scheduled"
    await n2.report_status(theirs, {"node": "n2", "state": "starting"})  # its own: fine
    # another node's name, on every agent endpoint
    assert await _status(n1.register_node(node_body("n2", "10.9.9.9"))) == 403
    assert (await srv.client.get_node("n2"))["address"] == "10.0.0.2"
    assert await _status(n1.register_node(node_body("n3"))) == 403
    assert await _status(n1.heartbeat("n2", 1)) == 403
    assert await _status(n1.report_usage("n2", {})) == 403
    assert await _status(n1.node_instances("n2", index=0, wait=0)) == 403
    assert await _status(n1.list_instances(node="n2")) == 403
    assert await _status(n1.list_instances()) == 403
    mine = await n1.list_instances(node="n1")
    assert [i["node"] for i in mine] == ["n1"]
    for c in (n1, n2):
        await c.close()


async def test_a_node_reads_only_the_specs_and_artifacts_it_runs(srv: ServerHarness) -> None:
    blob = _tarball()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    await srv.client.request("PUT", f"/v1/artifacts/{digest}", content=blob)
    joined = {n: await srv.join(n) for n in ("n1", "n2")}
    await joined["n1"].client.register_node(node_body("n1"))
    await srv.client.apply({**WEB, "services": {"web": {**WEB["services"]["web"],
                                                        "artifact": digest}}})
    await srv.reconcile()
    await joined["n2"].client.register_node(node_body("n2", "10.0.0.2"))
    n1, n2 = joined["n1"].client, joined["n2"].client
    assert (await n1.app_version("shop", 1))["spec"]["services"]["web"]["artifact"] == digest
    assert await _status(n2.app_version("shop", 1)) == 403
    await n1.download_artifact(digest, srv.ctx.config.data_dir / "got.tgz")
    assert (srv.ctx.config.data_dir / "got.tgz").read_bytes() == blob
    assert await _status(n2.download_artifact(digest, srv.ctx.config.data_dir / "x")) == 403
    for c in (n1, n2):
        await c.close()


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("app.py")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"pass\n"))
    return buf.getvalue()


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/apps"), ("GET", "/v1/apps"), ("DELETE", "/v1/apps/shop"),
    ("GET", "/v1/apps/shop"), ("GET", "/v1/apps/shop/logs"), ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/n1"), ("POST", "/v1/nodes/n1/drain"), ("POST", "/v1/nodes/n1/cordon"),
    ("POST", "/v1/nodes/n1/uncordon"), ("DELETE", "/v1/nodes/n1/credential"),
    ("POST", "/v1/tokens"), ("GET", "/v1/tokens"), ("DELETE", "/v1/tokens/abcdef"),
    ("GET", "/v1/events"), ("GET", "/v1/status"), ("GET", "/metrics"),
    ("GET", "/openapi.json"), ("GET", "/v1/instances/i0000001"),
    ("GET", "/v1/instances/i0000001/logs"), ("GET", "/v1/instances/i0000001/processes"),
    ("POST", "/v1/instances/signal"), ("PUT", f"/v1/artifacts/sha256:{'0' * 64}"),
    ("HEAD", f"/v1/artifacts/sha256:{'0' * 64}"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/default/shop/etl/runs"), ("GET", "/v1/jobs/default/shop/etl/runs/1"),
    ("POST", "/v1/jobs/default/shop/etl/run"),
    ("POST", "/v1/jobs/default/shop/etl/runs/1/cancel"),
])
async def test_admin_only_endpoints_refuse_a_node_credential(srv: ServerHarness, method: str,
                                                             path: str) -> None:
    node = await srv.join("n1")
    before = await srv.ctx.store.revision()
    with pytest.raises(ApiError) as err:
        await node.client.request(method, path, json={"spec": WEB, "ttl": 60})
    assert err.value.status == 403
    if method != "HEAD":
        assert "admin token" in err.value.message
    assert await srv.ctx.store.revision() == before
    await node.client.close()


async def test_unknown_credentials_and_join_tokens_as_bearer_are_401(
        srv: ServerHarness) -> None:
    node = await srv.join("n1")
    forged = node.answer["credential"][:-4] + "AAAA"
    for token in (forged, "node.n9." + "A" * 43):
        client = srv.client_with(token)
        with pytest.raises(ApiError) as err:
            await client.list_instances(node="n1")
        assert err.value.status == 401 and "join again" in err.value.message
        await client.close()
    client = srv.client_with(await srv.join_token())
    with pytest.raises(ApiError) as err:
        await client.list_apps()
    assert err.value.status == 401 and "only serves to join" in err.value.message
    await client.close()
    await node.client.close()


async def test_revoking_a_node_refuses_it_and_frees_its_name(srv: ServerHarness) -> None:
    joined = await _placed(srv, "n1", "n2")
    n1 = joined["n1"].client
    await srv.client.revoke_node("n1")
    with pytest.raises(ApiError) as err:
        await n1.node_instances("n1", index=0, wait=0)
    assert err.value.status == 401 and "revoked" in err.value.message
    await srv.reconcile(rounds=1)
    assert (await srv.client.get_node("n1"))["state"] == "down"
    lost = [i for i in await srv.client.list_instances(all=True) if i["node"] == "n1"]
    assert lost and {i["state"] for i in lost} == {"lost"}
    assert await _status(srv.client.revoke_node("n1")) == 404
    again = await srv.join("n1")  # any key may take the name now
    await again.client.register_node(node_body("n1"))
    assert (await srv.client.get_node("n1"))["state"] == "ready"
    for c in (n1, joined["n2"].client, again.client):
        await c.close()


async def test_a_joined_node_must_serve_its_agent_api_over_https(srv: ServerHarness) -> None:
    node = await srv.join("n1")
    body = {**node_body("n1"), "agent_url": "http://10.0.0.1:7071"}
    assert await _status(node.client.register_node(body)) == 400
    await node.client.register_node({**body, "agent_url": "https://10.0.0.1:7071"})
    await node.client.close()


async def test_agent_join_pins_the_ca_and_keeps_its_identity(srv: ServerHarness,
                                                             tmp_path: Path) -> None:
    import httpx

    assert srv.ctx.pki is not None
    transport = httpx.ASGITransport(app=srv.app)
    pem = await fetch_pinned_ca("http://corral", srv.ctx.pki.ca_hash, transport=transport)
    assert pem == srv.ctx.pki.ca_pem
    with pytest.raises(JoinError, match="not the pinned"):
        await fetch_pinned_ca("http://corral", "sha256:" + "0" * 64, transport=transport)
    folder = tmp_path / "agent" / "identity"
    identity = await join(server="http://corral", token=await srv.join_token(), name="n1",
                          folder=folder, ca_pem=pem, transport=transport)
    assert load_identity(folder) == identity
    for secret in ("node.key", "credential.json"):
        assert (folder / secret).stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((folder / "node.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [node_dns_name("n1")]
    async with Client(ClientConfig(addr="http://corral", token=identity.credential),
                      transport=transport) as client:
        await client.register_node(node_body("n1"))
    with pytest.raises(JoinError, match="401"):
        await join(server="http://corral", token="abcdef.0123456789abcdef", name="n2",
                   folder=tmp_path / "other", ca_pem=pem, transport=transport)
    assert load_identity(tmp_path / "other") is None


async def test_a_plain_http_server_refuses_joins(srv: ServerHarness) -> None:
    import dataclasses

    token = await srv.join_token()
    srv.ctx.config = dataclasses.replace(srv.ctx.config, insecure_http=True)
    before = await srv.ctx.store.revision()
    _, csr = new_key_and_csr("n1")
    anon = srv.anonymous()
    try:
        with pytest.raises(ApiError) as err:
            await anon.join(token=token, name="n1", csr=csr)
        assert err.value.status == 403 and "plain HTTP" in err.value.message
    finally:
        await anon.close()
    assert await srv.ctx.store.revision() == before


async def test_revoking_an_admin_registered_node_frees_its_name(srv: ServerHarness) -> None:
    await srv.client.register_node({"name": "n1", "address": "10.0.0.1",
                                    "capacity": {"cpu": 1.0, "memory": 1 << 30}})
    with pytest.raises(ApiError) as err:  # alive and held by the admin token
        await srv.join("n1")
    assert err.value.status == 403
    assert (await srv.client.revoke_node("n1"))["revoked"] is True
    joined = await srv.join("n1")
    assert joined.name == "n1"
