"""The agent's artifact cache: one verified copy of each archive per node.

The runner asks for an instance's artifact while the instance is `fetching`: `ensure` makes
sure a blob whose bytes hash to the digest is on local disk, downloading it at most once
however many instances of the node want it at the same time, and `unpack` writes it into an
instance's task directory with `corral.archive.safe_extract`. The download itself is
injected (`fetch(digest, tmp_path)`): the agent passes a function over `corral.client`, tests
pass a fake that writes a file.

Layout: `<cache_dir>/sha256/<hex>.tar.gz`, written as `<hex>.part` and renamed, so a blob
under its final name was complete when it was renamed. A blob found on disk from an earlier
run is hashed again the first time this process uses it: the digest is the only thing worth
trusting, and a torn or tampered file is cheaper to re-fetch than to run.

A root filesystem (`isolation.rootfs`) is not copied per instance: `rootfs` unpacks it once
per node into `<cache_dir>/rootfs/<hex>/` and every instance runs in that one tree, which
the `oci` driver mounts read-only. `safe_extract` writes it beside that name and renames it
into place only when complete, so a directory under its final name is whole and is used as
it is, also after an agent restart (re-hashing a tree would cost as much as unpacking it);
the partial tree of an unpacking cut short by a crash is removed before the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from corral.archive import ArchiveError, parse_digest, safe_extract, sha256_file

__all__ = ["ArtifactCache", "ArtifactError", "Fetch"]

Fetch = Callable[[str, Path], Awaitable[None]]


class ArtifactError(Exception):
    """An artifact could not be fetched, verified or unpacked; the message says which and why."""


class ArtifactCache:
    """Content-addressed archives on this node's disk, fetched on first use."""

    def __init__(self, cache_dir: Path, fetch: Fetch) -> None:
        self._dir = cache_dir / "sha256"
        self._fetch = fetch
        # One lock per digest: instances wanting the same artifact wait for one download,
        # different artifacts download in parallel. Locks are created without an await
        # between lookup and insert, so two tasks cannot create two locks for one digest.
        self._locks: dict[str, asyncio.Lock] = {}
        self._verified: set[str] = set()
        self._rootfs_dir = cache_dir / "rootfs"
        # One unpacking per digest, shared: a task, not a lock, because the unpacking runs
        # in a thread that a cancelled caller cannot stop, and a second one started then
        # would race the first for the same final name.
        self._unpacking: dict[str, asyncio.Future[Path]] = {}

    def path_for(self, digest: str) -> Path:
        """Where the blob for `digest` lives once cached."""
        return self._dir / f"{_hex(digest)}.tar.gz"

    async def ensure(self, digest: str) -> Path:
        """Return the path of a cached blob whose sha256 is `digest`, fetching it if needed."""
        return (await self.obtain(digest))[0]

    async def obtain(self, digest: str) -> tuple[Path, bool]:
        """`ensure`, and whether this call downloaded the blob (False: it was cached, also
        when another instance's download it waited for brought it), which the runner's
        `starting` report tells the event stream."""
        final = self.path_for(digest)
        if digest in self._verified and final.exists():
            return final, False
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if digest in self._verified and final.exists():
                return final, False
            if final.exists():
                if await asyncio.to_thread(sha256_file, final) == digest:
                    self._verified.add(digest)
                    return final, False
                final.unlink()
            await self._download(digest, final)
            self._verified.add(digest)
            return final, True

    async def unpack(self, digest: str, task_dir: Path, max_bytes: int) -> None:
        """Unpack the artifact into `task_dir`, which must be missing or an empty directory."""
        path = await self.ensure(digest)
        try:
            await asyncio.to_thread(safe_extract, path, task_dir, max_bytes=max_bytes)
        except ArchiveError as exc:
            raise ArtifactError(f"artifact {digest}: {exc}") from exc

    def rootfs_path(self, digest: str) -> Path:
        """Where the root filesystem `digest` is once unpacked by `rootfs`."""
        return self._rootfs_dir / _hex(digest)

    async def rootfs(self, digest: str, max_bytes: int) -> Path:
        """Return the directory holding the root filesystem `digest`, fetching and unpacking
        it first if this node has not. Concurrent callers share one unpacking; a caller
        cancelled meanwhile leaves it running for the others (and for the next try)."""
        final = self.rootfs_path(digest)
        job = self._unpacking.get(digest)
        if job is None:
            job = asyncio.ensure_future(self._unpack_rootfs(digest, final, max_bytes))
            self._unpacking[digest] = job

            def done(task: asyncio.Future[Path]) -> None:
                if self._unpacking.get(digest) is task:
                    del self._unpacking[digest]  # a failure is retried by the next call
                if not task.cancelled():
                    task.exception()  # retrieved, even when every caller went away

            job.add_done_callback(done)
        return await asyncio.shield(job)

    async def _unpack_rootfs(self, digest: str, final: Path, max_bytes: int) -> Path:
        if await asyncio.to_thread(final.is_dir):
            return final
        blob = await self.ensure(digest)
        try:
            await asyncio.to_thread(self._clear_partials, final)
            await asyncio.to_thread(safe_extract, blob, final, max_bytes=max_bytes,
                                    rootfs=True)
        except ArchiveError as exc:
            raise ArtifactError(f"rootfs {digest}: {exc}") from exc
        except OSError as exc:
            raise ArtifactError(f"rootfs {digest}: cannot unpack: {exc}") from exc
        return final

    @staticmethod
    def _clear_partials(final: Path) -> None:
        """Remove what an unpacking of `final` cut short by a crash left (safe_extract's
        temporary name); only one unpacking per digest runs, so none is in use."""
        final.parent.mkdir(parents=True, exist_ok=True)
        for partial in final.parent.glob(f".{final.name}.*.partial"):
            shutil.rmtree(partial, ignore_errors=True)

    async def _download(self, digest: str, final: Path) -> None:
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        # A fixed partial name is safe under the per-digest lock, and a retry after a crash
        # overwrites the leftover instead of leaving one more behind.
        tmp = final.with_name(f"{_hex(digest)}.part")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                await self._fetch(digest, tmp)
            except Exception as exc:
                raise ArtifactError(f"artifact {digest}: fetch failed: {exc}") from exc
            try:
                actual = await asyncio.to_thread(sha256_file, tmp)
            except OSError as exc:
                raise ArtifactError(f"artifact {digest}: fetched file unreadable: {exc}") from exc
            if actual != digest:
                raise ArtifactError(f"artifact {digest}: downloaded content has digest {actual}")
            os.replace(tmp, final)
        except BaseException:
            # Also on cancellation: a partial download must never be mistaken for a blob.
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise


def _hex(digest: str) -> str:
    try:
        return parse_digest(digest).removeprefix("sha256:")
    except ArchiveError as exc:
        raise ArtifactError(str(exc)) from exc
