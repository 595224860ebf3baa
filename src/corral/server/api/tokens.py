"""Join tokens (admin only): what a new machine needs to join, as kubeadm's bootstrap
tokens. A token is `<id>.<secret>` (6 and 16 characters of [a-z0-9]); only a hash of the
secret is stored, under `/tokens/<id>`.

- `POST /v1/tokens` body `{"ttl": seconds, "description": ""}` (ttl default 86400; 0: never
  expires) -> `{"id", "token", "description", "created_at", "expires_at", "ca_cert_hash"}`.
  The only answer that ever holds the secret.
- `GET /v1/tokens` every token, sorted by creation: `id`, `description`, `created_at`,
  `expires_at`, `revoked_at`, `state` (`valid`, `expired`, `revoked`). No secrets.
- `DELETE /v1/tokens/{id}` revoke: joins with it are refused from now on. Nodes that already
  joined with it keep their own credentials (`DELETE /v1/nodes/{name}/credential` revokes
  one of those).
"""

from __future__ import annotations

import dataclasses
import secrets
import string
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from corral.model.token import JoinToken, TokenState
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.auth import hash_secret
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["DEFAULT_TTL", "create_token", "router", "token_view"]

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]
DEFAULT_TTL = 86400.0
_ALPHABET = string.ascii_lowercase + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


class TokenBody(BaseModel):
    ttl: float = Field(default=DEFAULT_TTL, ge=0, le=10 * 365 * 86400)
    description: str = Field(default="", max_length=200)


def token_view(token: JoinToken, now: float) -> dict[str, Any]:
    return {"id": token.id, "description": token.description,
            "created_at": token.created_at, "expires_at": token.expires_at,
            "revoked_at": token.revoked_at, "state": str(token.state(now))}


async def create_token(ctx: ServerContext, *, ttl: float, description: str
                       ) -> tuple[JoinToken, str]:
    """A new valid token in the store, and its full text (`<id>.<secret>`)."""
    now = ctx.clock.now()
    for _ in range(10):
        token_id, secret = _random(6), _random(16)
        token = JoinToken(id=token_id, secret_hash=hash_secret(secret),
                          description=description, created_at=now,
                          expires_at=now + ttl if ttl > 0 else None)
        txn = (ctx.records.txn().put(keys.token(token_id), token, expect=0)
               .event("token", token_id, "created", f"join token {token_id} created"
                      + (f": {description}" if description else ""),
                      {"id": token_id, "expires_at": token.expires_at}))
        if await txn.commit() is not None:
            return token, f"{token_id}.{secret}"
    raise ApiError(409, "could not find a free token id; retry")


@router.post("")
async def create(body: TokenBody, ctx: Ctx) -> dict[str, Any]:
    token, text = await create_token(ctx, ttl=body.ttl, description=body.description)
    return {**token_view(token, ctx.clock.now()), "token": text,
            "ca_cert_hash": ctx.pki.ca_hash if ctx.pki else None}


@router.get("")
async def list_tokens(ctx: Ctx) -> list[dict[str, Any]]:
    items, _ = await ctx.records.scan(JoinToken, keys.TOKENS)
    now = ctx.clock.now()
    return [token_view(t, now) for t in sorted((i.record for i in items),
                                               key=lambda t: (t.created_at, t.id))]


@router.delete("/{token_id}")
async def revoke(token_id: str, ctx: Ctx) -> dict[str, Any]:
    for _ in range(10):
        item = await ctx.records.get(JoinToken, keys.token(token_id))
        if item is None:
            raise ApiError(404, f"no join token {token_id!r} (`corral token list`)")
        now = ctx.clock.now()
        if item.record.state(now) == TokenState.REVOKED:
            return token_view(item.record, now)
        token = dataclasses.replace(item.record, revoked_at=now)
        txn = (ctx.records.txn().put(keys.token(token_id), token, expect=item.mod_revision)
               .event("token", token_id, "revoked", f"join token {token_id} revoked",
                      {"id": token_id}))
        if await txn.commit() is not None:
            return token_view(token, now)
    raise ApiError(409, f"join token {token_id} kept changing; retry")
