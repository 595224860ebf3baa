"""The CLI's one way to call the API: build a client from `CORRAL_ADDR`/`CORRAL_TOKEN`
(or the config `corral up` wrote), run the coroutine, and turn client errors into messages
and exit codes. The only place the sync CLI meets the async client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from corral.cli.output import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_USAGE, die
from corral.client import ApiError, Client, Unreachable, load_config

__all__ = ["call", "split_target"]

T = TypeVar("T")


def call(fn: Callable[[Client], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Client(load_config()) as client:
            return await fn(client)

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Unreachable as exc:
        die(str(exc), EXIT_UNREACHABLE)
    except ApiError as exc:
        if exc.status in (401, 403):
            die(f"{exc.message} (server {load_config().addr})", EXIT_UNREACHABLE)
        if exc.status == 404:
            die(exc.message, EXIT_NOT_FOUND)
        if exc.status in (400, 409, 413, 422):
            die(exc.message, EXIT_USAGE)
        die(f"server error {exc.status}: {exc.message}", EXIT_FAILED)


def split_target(target: str) -> tuple[str, str | None, str | None]:
    """`APP[/SERVICE[/ID]]` -> (app, service, id)."""
    parts = target.strip("/").split("/")
    if not parts[0] or len(parts) > 3:
        die(f"expected APP[/SERVICE[/ID]], got {target!r}", EXIT_USAGE)
    return (parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)
