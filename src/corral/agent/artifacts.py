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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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

    def path_for(self, digest: str) -> Path:
        """Where the blob for `digest` lives once cached."""
        return self._dir / f"{_hex(digest)}.tar.gz"

    async def ensure(self, digest: str) -> Path:
        """Return the path of a cached blob whose sha256 is `digest`, fetching it if needed."""
        final = self.path_for(digest)
        if digest in self._verified and final.exists():
            return final
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if digest in self._verified and final.exists():
                return final
            if final.exists():
                if await asyncio.to_thread(sha256_file, final) == digest:
                    self._verified.add(digest)
                    return final
                final.unlink()
            await self._download(digest, final)
            self._verified.add(digest)
            return final

    async def unpack(self, digest: str, task_dir: Path, max_bytes: int) -> None:
        """Unpack the artifact into `task_dir`, which must be missing or an empty directory."""
        path = await self.ensure(digest)
        try:
            await asyncio.to_thread(safe_extract, path, task_dir, max_bytes=max_bytes)
        except ArchiveError as exc:
            raise ArtifactError(f"artifact {digest}: {exc}") from exc

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
