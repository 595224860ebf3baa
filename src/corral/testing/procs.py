"""Process helpers for tests that start real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["gone", "until"]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds; a failed assertion after `timeout` (a hang guard,
    not a claim about speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead; whoever inherited it has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2:].split()[0] == b"Z"
