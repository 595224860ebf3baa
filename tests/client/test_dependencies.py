"""The HTTP client's async-library probe must be a cached import, not a failed one."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

from httpcore._synchronization import current_async_library


def test_sniffio_is_installed_so_httpcore_does_not_search_sys_path_per_request() -> None:
    # httpcore imports sniffio inside `current_async_library`, called for every lock it
    # sets up and every response it closes. Missing, each call is a failed import.
    assert importlib.util.find_spec("sniffio") is not None

    async def probe() -> str:
        return current_async_library()

    assert asyncio.run(probe()) == "asyncio"
    assert "sniffio" in sys.modules
