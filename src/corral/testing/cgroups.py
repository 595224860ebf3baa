"""Real cgroups for tests that need them: skip (with the reason) where they cannot be
written, and always remove the test's parent group afterwards, also after a failure."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from corral.agent.cgroups import CgroupRoot, NoCgroups, detect

__all__ = ["real_cgroups"]


def real_cgroups(parent: str) -> Iterator[CgroupRoot]:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: cgroups are written (euid {os.geteuid()})")
    found = detect()
    if isinstance(found, NoCgroups):
        pytest.skip(f"needs cgroups: {found.reason}")
    try:
        yield found
    finally:
        asyncio.run(found.remove_parent(parent))
        assert not any(d.exists() for d in found.parent_dirs(parent))
