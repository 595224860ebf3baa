"""Joining: a machine holding a join token gets a node identity (a certificate signed by
the cluster CA and a bearer credential), as kubelet TLS bootstrap does.

- `GET /v1/join/ca` (no token) the cluster CA certificate, PEM. Public, like kubeadm's
  `cluster-info`: an agent started with `--ca-cert-hash` fetches it over a connection it
  cannot verify yet, checks the hash of its public key against that pin, and from then on
  verifies the server against it. Its join token is sent only after that.
- `POST /v1/join` (no bearer: the join token is in the body) body
  `{"token": "<id>.<secret>", "name": NODE, "csr": PEM}` ->
  `{"name", "certificate", "ca", "credential", "agent_token", "expires_at"}`.
  401: the token is unknown, expired or revoked (nothing is written). 403: `name` already
  belongs to another identity (a different key), or a node of that name registered with the
  admin token is alive. 400: an invalid name or CSR. Joining again with the same key
  issues a new certificate and credential (the old credential stops working).
- `DELETE /v1/nodes/{name}/credential` (admin) revoke a node's identity: its credential is
  refused at once (401), its lease ends, so it turns `down` and its instances are replaced
  elsewhere; the name may then join again, with any key.

Node credentials and join tokens are stored hashed (`server/auth.py`). The certificate's
name and usages are the server's choice (`server/pki.py`): a CSR only proves its key.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field

from corral.model.credential import NodeCredential
from corral.model.node import Node
from corral.model.token import JoinToken, TokenState
from corral.server import keys
from corral.server.api.deps import check_name, get_ctx
from corral.server.auth import hash_secret, new_node_credential, parse_join_token
from corral.server.context import ServerContext
from corral.server.errors import ApiError
from corral.server.pki import ClusterPki, PkiError, public_key_hash, sign_node_csr

__all__ = ["public", "router"]

public = APIRouter(tags=["join"])
router = APIRouter(tags=["join"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


class JoinBody(BaseModel):
    token: str = Field(max_length=100)
    name: str = Field(max_length=63)
    csr: str = Field(max_length=16384)


def _pki(ctx: ServerContext) -> ClusterPki:
    if ctx.config.insecure_http:
        # A join token and the node's credential must never cross the network in clear.
        raise ApiError(403, "this server serves plain HTTP (--insecure-http): nodes cannot "
                            "join; serve HTTPS, or run agents with the admin token")
    if ctx.pki is None:
        raise ApiError(503, "this server has no cluster CA, so nodes cannot join; agents "
                            "use the admin token (`corral agent --server`)")
    return ctx.pki


@public.get("/v1/join/ca")
async def ca_certificate(ctx: Ctx) -> Response:
    return Response(_pki(ctx).ca_pem, media_type="application/x-pem-file")


async def _check_token(ctx: ServerContext, text: str) -> JoinToken:
    parsed = parse_join_token(text)
    if parsed is None:
        raise ApiError(401, "malformed join token: expected <id>.<secret> as printed by "
                            "`corral server` or `corral token create`")
    token_id, secret = parsed
    item = await ctx.records.get(JoinToken, keys.token(token_id))
    # Unknown id and wrong secret answer alike: the answer must not reveal which ids exist.
    if item is None or not secrets.compare_digest(item.record.secret_hash,
                                                  hash_secret(secret)):
        raise ApiError(401, f"join token {token_id} is not valid for this cluster; make one "
                            "with `corral token create`")
    state = item.record.state(ctx.clock.now())
    if state != TokenState.VALID:
        raise ApiError(401, f"join token {token_id} is {state}; make a new one with "
                            "`corral token create`")
    return item.record


async def _check_name_free(ctx: ServerContext, name: str, key_hash: str,
                           held: NodeCredential | None) -> None:
    """A name belongs to the key that first joined with it (a forged name is refused);
    a node registered with the admin token keeps its name while it is alive."""
    if held is not None:
        if held.key_hash != key_hash:
            raise ApiError(403, f"node name {name} already belongs to another node identity; "
                                "join with another --name, or, if that machine is gone, "
                                f"revoke its identity first: `corral node revoke {name}`")
        return
    node = await ctx.records.get(Node, keys.node(name))
    if node is not None and await ctx.store.get(keys.node_alive(name)) is not None:
        raise ApiError(403, f"node {name} is registered with the admin token and alive; "
                            "join with another --name, or stop that agent first")


@public.post("/v1/join")
async def join(body: JoinBody, ctx: Ctx) -> dict[str, Any]:
    pki = _pki(ctx)
    token = await _check_token(ctx, body.token)
    name = check_name(body.name, "node name")
    now = ctx.clock.now()
    try:
        cert = sign_node_csr(pki, body.csr, name=name, now=now)
    except PkiError as exc:
        raise ApiError(400, f"invalid certificate signing request: {exc}") from exc
    key_hash = public_key_hash(cert.public_key())
    for _ in range(10):
        held = await ctx.records.get(NodeCredential, keys.node_auth(name))
        await _check_name_free(ctx, name, key_hash, held.record if held else None)
        credential, secret_hash = new_node_credential(name)
        record = NodeCredential(
            node=name, secret_hash=secret_hash, key_hash=key_hash,
            cert_serial=f"{cert.serial_number:x}",
            cert_not_after=cert.not_valid_after_utc.timestamp(),
            agent_token=secrets.token_urlsafe(32), token_id=token.id, joined_at=now)
        txn = (ctx.records.txn()
               .put(keys.node_auth(name), record, expect=held.mod_revision if held else 0)
               .event("node", name, "joined", f"node {name} joined with token {token.id}"
                      + (" (same key: credential renewed)" if held else ""),
                      {"token": token.id, "serial": record.cert_serial,
                       "not_after": record.cert_not_after}))
        if await txn.commit() is not None:
            return {"name": name,
                    "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                    "ca": pki.ca_pem.decode(), "credential": credential,
                    "agent_token": record.agent_token, "expires_at": record.cert_not_after}
    raise ApiError(409, f"node {name} kept changing while joining; retry")


@router.delete("/v1/nodes/{name}/credential")
async def revoke(name: str, ctx: Ctx) -> dict[str, Any]:
    for _ in range(10):
        held = await ctx.records.get(NodeCredential, keys.node_auth(name))
        if held is None:
            # A node registered with the admin token has no credential: revoking it ends
            # its lease (it goes down) and frees its name for a node that joins.
            if await ctx.records.get(Node, keys.node(name)) is None or \
                    await ctx.store.get(keys.node_alive(name)) is None:
                raise ApiError(404, f"node {name} has no credential and is not alive: it "
                                    "never joined, or it was revoked already")
            txn = (ctx.records.txn().delete(keys.node_alive(name))
                   .event("node", name, "revoked", f"node {name} (admin token) revoked: its "
                          "name is free to join"))
            if await txn.commit() is not None:
                return {"name": name, "revoked": True}
            continue
        txn = (ctx.records.txn().delete(keys.node_auth(name), expect=held.mod_revision)
               .delete(keys.node_alive(name))
               .event("node", name, "revoked", f"node {name}'s identity revoked: its agent "
                      "is refused until it joins again"))
        if await txn.commit() is not None:
            return {"name": name, "revoked": True}
    raise ApiError(409, f"node {name} kept changing; retry")
