"""Tests for corral.agent.artifacts: one verified download per digest, safe unpacking.

The fetch function is injected: `FakeFetch` copies a real archive (or wrong bytes) to the
temporary path the cache gives it and counts its calls.
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

import pytest

from corral.agent.artifacts import ArtifactCache, ArtifactError
from corral.archive import pack_directory, sha256_file

MiB = 1 << 20


class FakeFetch:
    def __init__(self, blob: bytes, *, fail: BaseException | None = None) -> None:
        self.blob = blob
        self.fail = fail
        self.calls: list[str] = []

    async def __call__(self, digest: str, tmp: Path) -> None:
        self.calls.append(digest)
        # Yield a few times, as a real download would, so concurrent callers interleave.
        for _ in range(5):
            await asyncio.sleep(0)
        if self.fail is not None:
            tmp.write_bytes(self.blob[:10])  # a partial download left behind
            raise self.fail
        tmp.write_bytes(self.blob)


def packed(tmp_path: Path) -> tuple[str, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text("print('hi')\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    info = pack_directory(src, tmp_path / "web.tar.gz")
    return info.digest, (tmp_path / "web.tar.gz").read_bytes()


def files_under(root: Path) -> list[str]:
    return sorted(
        str((Path(d) / f).relative_to(root)) for d, _, fs in os.walk(root) for f in fs
    )


async def test_concurrent_ensure_fetches_once(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    fetch = FakeFetch(blob)
    cache = ArtifactCache(tmp_path / "cache", fetch)
    paths = await asyncio.gather(*(cache.ensure(digest) for _ in range(10)))
    assert fetch.calls == [digest]
    assert len(set(paths)) == 1
    assert paths[0].read_bytes() == blob
    assert files_under(tmp_path / "cache") == [f"sha256/{digest.removeprefix('sha256:')}.tar.gz"]


async def test_ensure_after_cached_does_not_fetch_again(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    fetch = FakeFetch(blob)
    cache = ArtifactCache(tmp_path / "cache", fetch)
    first = await cache.ensure(digest)
    second = await cache.ensure(digest)
    assert first == second
    assert len(fetch.calls) == 1


async def test_digest_mismatch_raises_and_caches_nothing(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    fetch = FakeFetch(blob + b"tampered")
    cache = ArtifactCache(tmp_path / "cache", fetch)
    with pytest.raises(ArtifactError, match="downloaded content has digest sha256:"):
        await cache.ensure(digest)
    assert files_under(tmp_path / "cache") == []
    assert not cache.path_for(digest).exists()


async def test_failed_fetch_cleans_up_and_a_retry_succeeds(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    cache_dir = tmp_path / "cache"
    failing = FakeFetch(blob, fail=ConnectionError("connection reset"))
    with pytest.raises(ArtifactError, match="fetch failed: connection reset"):
        await ArtifactCache(cache_dir, failing).ensure(digest)
    assert files_under(cache_dir) == []
    working = FakeFetch(blob)
    path = await ArtifactCache(cache_dir, working).ensure(digest)
    assert path.read_bytes() == blob
    assert working.calls == [digest]


async def test_lock_is_released_after_failure_in_the_same_cache(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    fetch = FakeFetch(blob, fail=OSError("disk full"))
    cache = ArtifactCache(tmp_path / "cache", fetch)
    with pytest.raises(ArtifactError):
        await cache.ensure(digest)
    fetch.fail = None
    assert (await cache.ensure(digest)).read_bytes() == blob
    assert len(fetch.calls) == 2


async def test_corrupt_blob_from_an_earlier_run_is_fetched_again(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    cache_dir = tmp_path / "cache"
    path = ArtifactCache(cache_dir, FakeFetch(b"")).path_for(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(blob[:-10])  # torn write before a crash
    fetch = FakeFetch(blob)
    assert (await ArtifactCache(cache_dir, fetch).ensure(digest)).read_bytes() == blob
    assert fetch.calls == [digest]


async def test_corrupt_blob_is_removed_even_if_the_refetch_fails(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    cache = ArtifactCache(tmp_path / "cache", FakeFetch(blob, fail=TimeoutError("slow")))
    path = cache.path_for(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="fetch failed"):
        await cache.ensure(digest)
    assert files_under(tmp_path / "cache") == []


async def test_intact_blob_from_an_earlier_run_is_reused(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    cache_dir = tmp_path / "cache"
    await ArtifactCache(cache_dir, FakeFetch(blob)).ensure(digest)
    fetch = FakeFetch(blob)
    await ArtifactCache(cache_dir, fetch).ensure(digest)
    assert fetch.calls == []


@pytest.mark.parametrize("bad", ["latest", "sha256:" + "A" * 64, "sha256:../../etc"])
async def test_malformed_digest_is_refused_before_fetching(tmp_path: Path, bad: str) -> None:
    fetch = FakeFetch(b"")
    with pytest.raises(ArtifactError, match="invalid digest"):
        await ArtifactCache(tmp_path / "cache", fetch).ensure(bad)
    assert fetch.calls == []
    assert not (tmp_path / "cache").exists()


async def test_unpack_into_existing_empty_task_dirs(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    fetch = FakeFetch(blob)
    cache = ArtifactCache(tmp_path / "cache", fetch)
    tasks = [tmp_path / "alloc" / f"web-{i}" for i in range(3)]
    for task in tasks:
        task.mkdir(parents=True)
    await asyncio.gather(*(cache.unpack(digest, task, MiB) for task in tasks))
    assert fetch.calls == [digest]
    for task in tasks:
        assert (task / "app.py").read_text() == "print('hi')\n"
        assert os.access(task / "run.sh", os.X_OK)


async def test_unpack_over_the_size_limit_raises_artifact_error(tmp_path: Path) -> None:
    digest, blob = packed(tmp_path)
    cache = ArtifactCache(tmp_path / "cache", FakeFetch(blob))
    task = tmp_path / "alloc" / "web-0"
    task.parent.mkdir()
    with pytest.raises(ArtifactError, match="over the limit"):
        await cache.unpack(digest, task, 4)
    assert not task.exists()
    assert list(task.parent.iterdir()) == []


# --- root filesystems ----------------------------------------------------------------------


def packed_rootfs(tmp_path: Path) -> tuple[str, bytes]:
    src = tmp_path / "rootfs"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "usr" / "bin" / "dash").write_bytes(b"\x7fELF")
    (src / "usr" / "bin" / "dash").chmod(0o755)
    (src / "bin").symlink_to("usr/bin")
    (src / "usr" / "bin" / "sh").symlink_to("/bin/dash")
    (src / "etc").mkdir()
    (src / "etc" / "marker").write_text("in the rootfs\n")
    info = pack_directory(src, tmp_path / "rootfs.tar.gz", rootfs=True)
    return info.digest, (tmp_path / "rootfs.tar.gz").read_bytes()


async def test_concurrent_rootfs_callers_share_one_unpacking(tmp_path: Path) -> None:
    digest, blob = packed_rootfs(tmp_path)
    fetch = FakeFetch(blob)
    cache = ArtifactCache(tmp_path / "cache", fetch)
    # A second unpacking into the same name would fail (its destination is not empty):
    # ten callers all succeeding with one path is one unpacking shared.
    paths = await asyncio.gather(*(cache.rootfs(digest, MiB) for _ in range(10)))
    assert set(paths) == {cache.rootfs_path(digest)}
    root = paths[0]
    assert root == tmp_path / "cache" / "rootfs" / digest.removeprefix("sha256:")
    assert fetch.calls == [digest]
    assert (root / "etc" / "marker").read_text() == "in the rootfs\n"
    assert os.readlink(root / "usr" / "bin" / "sh") == "/bin/dash"
    assert os.readlink(root / "bin") == "usr/bin"
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no partial left


async def test_unpacked_rootfs_is_reused_by_a_restarted_agent(tmp_path: Path) -> None:
    digest, blob = packed_rootfs(tmp_path)
    await ArtifactCache(tmp_path / "cache", FakeFetch(blob)).rootfs(digest, MiB)
    fetch = FakeFetch(blob)
    again = ArtifactCache(tmp_path / "cache", fetch)
    assert (await again.rootfs(digest, MiB) / "etc" / "marker").exists()
    assert fetch.calls == []


async def test_partial_rootfs_of_a_crashed_agent_is_removed(tmp_path: Path) -> None:
    digest, blob = packed_rootfs(tmp_path)
    cache = ArtifactCache(tmp_path / "cache", FakeFetch(blob))
    hexd = digest.removeprefix("sha256:")
    partial = tmp_path / "cache" / "rootfs" / f".{hexd}.x1y2.partial"
    (partial / "etc").mkdir(parents=True)
    other = tmp_path / "cache" / "rootfs" / ("0" * 64)  # another digest's tree stays
    other.mkdir()
    root = await cache.rootfs(digest, MiB)
    assert sorted(p.name for p in root.parent.iterdir()) == sorted([hexd, "0" * 64])


async def test_cancelled_caller_leaves_the_unpacking_to_the_others(tmp_path: Path) -> None:
    digest, blob = packed_rootfs(tmp_path)
    fetch = FakeFetch(blob)
    cache = ArtifactCache(tmp_path / "cache", fetch)
    first = asyncio.ensure_future(cache.rootfs(digest, MiB))
    second = asyncio.ensure_future(cache.rootfs(digest, MiB))
    await asyncio.sleep(0)  # both are waiting on the download
    first.cancel()
    assert (await second / "etc" / "marker").exists()
    assert first.cancelled()
    assert fetch.calls == [digest]


async def test_rootfs_that_fails_its_checks_leaves_nothing_and_is_retried(
        tmp_path: Path) -> None:
    # Through-a-symlink writes are refused for a rootfs as for an artifact.
    src = tmp_path / "evil.tar.gz"
    with tarfile.open(src, "w:gz") as tf:
        link = tarfile.TarInfo("etc")
        link.type = tarfile.SYMTYPE
        link.linkname = str(tmp_path / "host")
        tf.addfile(link)
        tf.addfile(tarfile.TarInfo("etc/passwd"), io.BytesIO(b""))
    digest = sha256_file(src)
    fetch = FakeFetch(src.read_bytes())
    cache = ArtifactCache(tmp_path / "cache", fetch)
    for _ in range(2):
        with pytest.raises(ArtifactError, match=r"rootfs sha256:.*goes through symlink"):
            await cache.rootfs(digest, MiB)
    assert list((tmp_path / "cache" / "rootfs").iterdir()) == []
    assert not (tmp_path / "host").exists()
    assert fetch.calls == [digest]  # the blob was fine: downloaded once, unpacked twice
