"""Artifacts: content-addressed archives uploaded by the CLI and fetched by agents.

- `PUT /v1/artifacts/sha256:<hex>?kind=artifact|rootfs` body: the tar.gz. The server streams
  it to disk, checks the digest and the archive (no absolute paths, `..`, escaping links,
  device files, total size under the limit) and only then records it. Idempotent.
  `kind=rootfs` (an `isolation.rootfs`) checks it as a root filesystem instead: symlinks may
  point anywhere and special files are skipped (`corral.archive_check`).
- `HEAD /v1/artifacts/sha256:<hex>?kind=...` 200 if it was uploaded and serves as that kind.
- `GET /v1/artifacts/sha256:<hex>` download (a node credential: only an artifact or rootfs
  of a version one of its instances runs).
The blob is written and fsynced before the record is committed, so an acknowledged upload
survives a crash. The record keeps the kind it was checked as: an archive that passed as an
artifact serves as a rootfs too (the artifact rules are the stricter), not the reverse, so a
rootfs later wanted as an artifact is uploaded again and checked as one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from corral.archive import ArchiveError, inspect_archive, parse_digest
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.api.instances import node_versions
from corral.server.auth import NODE_ACCESS, Identity, get_identity
from corral.server.context import ServerContext
from corral.server.errors import ApiError
from corral.server.versions import load_version

__all__ = ["ArtifactKind", "blob_path", "recorded_kind", "router", "serves_as"]

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]
ArtifactKind = Literal["artifact", "rootfs"]


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


async def recorded_kind(ctx: ServerContext, digest: str) -> ArtifactKind | None:
    """The kind `digest` was checked as when uploaded, None if it never was. Records from
    before kinds existed were all checked as artifacts."""
    kv = await ctx.store.get(keys.artifact(digest.removeprefix("sha256:")))
    if kv is None:
        return None
    return "rootfs" if json.loads(kv.value).get("kind") == "rootfs" else "artifact"


def serves_as(recorded: ArtifactKind, wanted: ArtifactKind) -> bool:
    """Whether an archive checked as `recorded` may be used as `wanted` (see the docstring)."""
    return recorded == "artifact" or wanted == "rootfs"


def blob_path(ctx: ServerContext, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return ctx.config.artifacts_dir / hexd[:2] / hexd


@router.put("/{digest}")
async def upload(digest: str, request: Request, ctx: Ctx,
                 kind: ArtifactKind = "artifact") -> dict[str, Any]:
    digest = _digest(digest)
    hexd = digest.removeprefix("sha256:")
    path = blob_path(ctx, digest)
    recorded = await recorded_kind(ctx, digest)
    if path.exists() and recorded is not None and serves_as(recorded, kind):
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
            info = await asyncio.to_thread(inspect_archive, tmp, max_bytes=limit,
                                           rootfs=kind == "rootfs")
        except ArchiveError as exc:
            raise ApiError(422, f"rejected {kind}: {exc}") from exc
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    # Same bytes as a record already there: it keeps the stricter kind it was checked as.
    stored_kind = "artifact" if recorded == "artifact" else kind
    meta = {"digest": digest, "size": size, "files": info.files, "kind": stored_kind,
            "skipped": info.skipped, "uploaded_at": ctx.clock.now()}
    await ctx.store.put(keys.artifact(hexd), json.dumps(meta, sort_keys=True).encode())
    return {"digest": digest, "size": size, "existed": False}


@router.head("/{digest}")
async def exists(digest: str, ctx: Ctx, kind: ArtifactKind = "artifact") -> Response:
    digest = _digest(digest)
    recorded = await recorded_kind(ctx, digest)
    if recorded is None or not serves_as(recorded, kind):
        raise ApiError(404, f"no {kind} {digest}")
    return Response(status_code=200)


async def node_digests(ctx: ServerContext, node: str) -> set[str]:
    """Every artifact and rootfs digest the versions run on `node` use."""
    found: set[str] = set()
    for namespace, app, version in sorted(await node_versions(ctx, node)):
        stored = await load_version(ctx.records, namespace, app, version)
        if stored is None:
            continue
        spec = stored.spec
        parts = [(p.artifact, p.isolation.rootfs) for p in spec.services.values()]
        parts += [(p.artifact, p.isolation.rootfs) for p in spec.jobs.values()]
        found.update(d for pair in parts for d in pair if d)
    return found


@router.get("/{digest}", openapi_extra=NODE_ACCESS)
async def download(digest: str, ctx: Ctx,
                   caller: Annotated[Identity, Depends(get_identity)]) -> FileResponse:
    digest = _digest(digest)
    if caller.node is not None and digest not in await node_digests(ctx, caller.node):
        raise ApiError(403, f"node {caller.node} runs nothing that uses {digest}")
    path = blob_path(ctx, digest)
    if await ctx.store.get(keys.artifact(digest.removeprefix("sha256:"))) is None or \
            not path.exists():
        raise ApiError(404, f"no artifact {digest}")
    return FileResponse(path, media_type="application/gzip")
