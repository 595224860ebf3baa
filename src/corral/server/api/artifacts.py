"""Artifacts: content-addressed archives uploaded by the CLI and fetched by agents.

- `PUT /v1/artifacts/sha256:<hex>` body: the tar.gz. The server streams it to disk, checks
  the digest and the archive (no absolute paths, `..`, escaping links, device files, total
  size under the limit) and only then records it. Idempotent.
- `HEAD|GET /v1/artifacts/sha256:<hex>` existence / download.
The blob is written and fsynced before the record is committed, so an acknowledged upload
survives a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from corral.archive import ArchiveError, inspect_archive, parse_digest
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["blob_path", "router"]

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def _digest(value: str) -> str:
    try:
        return parse_digest(value)
    except ArchiveError as exc:
        raise ApiError(400, str(exc)) from exc


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def blob_path(ctx: ServerContext, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return ctx.config.artifacts_dir / hexd[:2] / hexd


@router.put("/{digest}")
async def upload(digest: str, request: Request, ctx: Ctx) -> dict[str, Any]:
    digest = _digest(digest)
    hexd = digest.removeprefix("sha256:")
    path = blob_path(ctx, digest)
    if path.exists() and await ctx.store.get(keys.artifact(hexd)) is not None:
        return {"digest": digest, "size": path.stat().st_size, "existed": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{hexd}.{ctx.new_id()}.part")
    limit = ctx.config.artifact_max_bytes
    sha = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"artifact larger than the limit of {limit} bytes")
                sha.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if sha.hexdigest() != hexd:
            raise ApiError(400, f"body does not match digest {digest} "
                                f"(got sha256:{sha.hexdigest()})")
        try:
            info = await asyncio.to_thread(inspect_archive, tmp, max_bytes=limit)
        except ArchiveError as exc:
            raise ApiError(422, f"rejected artifact: {exc}") from exc
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"digest": digest, "size": size, "files": info.files, "uploaded_at": ctx.clock.now()}
    await ctx.store.put(keys.artifact(hexd), json.dumps(meta, sort_keys=True).encode())
    return {"digest": digest, "size": size, "existed": False}


@router.head("/{digest}")
async def exists(digest: str, ctx: Ctx) -> Response:
    digest = _digest(digest)
    if await ctx.store.get(keys.artifact(digest.removeprefix("sha256:"))) is None:
        raise ApiError(404, f"no artifact {digest}")
    return Response(status_code=200)


@router.get("/{digest}")
async def download(digest: str, ctx: Ctx) -> FileResponse:
    digest = _digest(digest)
    path = blob_path(ctx, digest)
    if await ctx.store.get(keys.artifact(digest.removeprefix("sha256:"))) is None or \
            not path.exists():
        raise ApiError(404, f"no artifact {digest}")
    return FileResponse(path, media_type="application/gzip")
