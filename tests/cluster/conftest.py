"""Multi-host fixtures: clusters of network-namespace hosts (`corral.testing.hosts`). They
need root (namespaces, cgroups), `ip` and `nsenter`; elsewhere every test here is skipped
with the reason printed (`pytest -ra`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from corral.testing.hosts import NetnsCluster
from corral.testing.netns import unavailable_reason

APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="session")
def netns_ok() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def make_cluster(netns_ok: None) -> Iterator[Callable[..., NetnsCluster]]:
    """`make_cluster(agents, **options)` starts a cluster; every one started is torn down
    when the test ends, whatever happened."""
    with ExitStack() as stack:
        def make(*args: Any, **kwargs: Any) -> NetnsCluster:
            return stack.enter_context(NetnsCluster(*args, **kwargs))
        yield make


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    """The web app, beside the spec files (artifact paths are relative to the spec)."""
    dest = tmp_path / "web"
    shutil.copytree(APPS / "web", dest)
    return dest


@pytest.fixture
def web_spec(web_dir: Path) -> Callable[..., Path]:
    """`web_spec(name, instances, cpu=...)` writes a spec of one `web` service running the
    web app, and returns its path."""
    def write(name: str, instances: int, *, cpu: float = 0.1) -> Path:
        path = web_dir.parent / f"{name}.yaml"
        path.write_text(f"""
name: {name}
services:
  web:
    instances: {instances}
    artifact: ./{web_dir.name}
    command: [python3, server.py, "${{PORT_HTTP}}"]
    resources: {{cpu: {cpu}, memory: 64MiB}}
    ports: [{{name: http}}]
    restart: {{policy: always, backoff: 200ms, max_backoff: 2s}}
""")
        return path
    return write
