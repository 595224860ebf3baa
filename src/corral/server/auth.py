"""Bearer-token authentication for every endpoint except `/healthz`.

The admin token is generated at the server's first start and kept in `<data>/admin-token`
(mode 0600); `corral up` copies it to the user's config. Tokens are compared in constant
time. Issue 4 adds per-node credentials and join tokens beside it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi import Request

from corral.server.errors import ApiError

__all__ = ["load_or_create_token", "require_token"]

TOKEN_FILE = "admin-token"


def load_or_create_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token


async def require_token(request: Request) -> None:
    expected: str = request.app.state.token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "missing bearer token: set CORRAL_TOKEN (written by `corral up`)")
    if not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "invalid token")
