"""End-to-end fixtures: a real `corral up` cluster (server, agent, SQLite, cgroups, real
processes). These tests need root for cgroups; elsewhere they are skipped with the reason
printed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.testing.cluster import LocalCluster, local_cluster

pytestmark = pytest.mark.e2e


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: instances run in cgroups (CI runs as root)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "needs a cgroup filesystem at /sys/fs/cgroup"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("cluster")
    with local_cluster(root) as c:
        yield c
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with local_cluster(tmp_path / "c") as c:
        yield c
