"""Who is calling, and the coarse rule of what they may call. Every route but `/healthz`,
`GET /v1/join/ca` and `POST /v1/join` runs `authenticate` first.

Three secrets, each sent as `Authorization: Bearer ...` except the join token:

- admin token: 43 url-safe characters in `<data>/admin-token` (0600). Operators, the
  CLI, `corral up`. May do everything.
- node credential: `node.<name>.<secret>`, issued at join. One node's agent. Routes
  marked `NODE_ACCESS` only, and for its own node only.
- join token: `<id>.<secret>` (kubeadm's shape). A machine joining. Only `POST /v1/join`,
  in the body.

Nodes are refused by default: a route serves them only if it is declared with
`openapi_extra=NODE_ACCESS`, and its handler then checks what the node may touch with
`act_for` (its own name, its own instances). So a new endpoint is admin-only unless someone
decides otherwise, and the OpenAPI spec shows which routes agents use.

Secrets are compared in constant time, and only their sha256 is stored (they are random,
so a plain hash is enough; no salt or slow hash needed). Rejected alternative: client
certificates (mTLS) as the node identity. uvicorn does not hand the peer certificate to the
application, and a bearer credential can be revoked in the store at once, with no CRL.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.requests import HTTPConnection

from corral.model.credential import NodeCredential
from corral.secretfile import write_private
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = [
    "NODE_ACCESS", "Identity", "act_for", "authenticate", "get_identity", "hash_secret",
    "identify", "load_or_create_token", "new_node_credential", "parse_join_token",
]

TOKEN_FILE = "admin-token"
NODE_ACCESS = {"x-corral-access": "node"}
_JOIN_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_NODE_CREDENTIAL = re.compile(r"^node\.([a-z][a-z0-9-]{0,62})\.([A-Za-z0-9_-]{43})$")


def load_or_create_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_join_token(value: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed join token, else None."""
    match = _JOIN_TOKEN.match(value.strip())
    return (match[1], match[2]) if match else None


def new_node_credential(name: str) -> tuple[str, str]:
    """A fresh credential for node `name` and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return f"node.{name}.{secret}", hash_secret(secret)


@dataclass(frozen=True, slots=True)
class Identity:
    node: str | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.node is None


ADMIN = Identity(None)


def act_for(identity: Identity, node: str | None) -> None:
    """403 unless `identity` may act for `node`: the admin for any, a node for itself."""
    if identity.node is not None and identity.node != node:
        target = f"node {node}" if node else "no node"
        raise ApiError(403, f"node {identity.node} may only act for itself, not for {target}")


async def _identify(ctx: ServerContext, given: str, admin: str) -> Identity:
    if secrets.compare_digest(given.encode(), admin.encode()):
        return ADMIN
    match = _NODE_CREDENTIAL.match(given)
    if match is not None:
        item = await ctx.records.get(NodeCredential, keys.node_auth(match[1]))
        if item is not None and secrets.compare_digest(item.record.secret_hash,
                                                       hash_secret(match[2])):
            return Identity(match[1])
        raise ApiError(401, f"the credential of node {match[1]} is not valid: it was revoked "
                            "or the node joined again; join again with a new join token "
                            "(`corral token create`)")
    if parse_join_token(given) is not None:
        raise ApiError(401, "a join token only serves to join (`corral agent --join URL "
                            "--token ...`); other requests need the admin token")
    raise ApiError(401, "invalid token")


async def identify(conn: HTTPConnection) -> Identity:
    """Who sent a request or opened a websocket, from its bearer token; ApiError (401)
    when no valid token came. Websocket routes, which `authenticate` does not cover, call
    it themselves."""
    header = conn.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "missing bearer token: set CORRAL_TOKEN (written by `corral up`)")
    ctx: ServerContext = conn.app.state.ctx
    return await _identify(ctx, given.strip(), conn.app.state.token)


async def authenticate(request: Request) -> None:
    """Resolve the caller into `request.state.identity`; refuse a node on a route not
    marked `NODE_ACCESS`."""
    identity = await identify(request)
    if identity.node is not None:
        route = request.scope.get("route")
        extra = getattr(route, "openapi_extra", None) or {}
        if extra.get("x-corral-access") != "node":
            raise ApiError(403, f"node {identity.node}'s credential may not call "
                                f"{request.method} {request.url.path}: it needs the admin "
                                "token")
    request.state.identity = identity


def get_identity(request: Request) -> Identity:
    identity: Identity = request.state.identity
    return identity
