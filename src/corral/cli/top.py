"""`corral top [APP]`: the process table, refreshed live and sorted by cpu, until q or
Ctrl-C. The same data as `corral ps` (cpu and memory are the agents' latest usage samples,
so they change every `--usage-interval` of the agents); `--count N` stops after N
refreshes (for scripts and tests)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corral.cli.common import call
from corral.cli.output import EXIT_USAGE, console, die
from corral.cli.ps import ROW_COLUMNS, row
from corral.client import Client
from corral.model.units import parse_duration

__all__ = ["by_cpu", "top"]


def by_cpu(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Busiest first; instances not measured yet last; ties by app, service, id."""
    return sorted(items, key=lambda i: (i.get("usage_cpu") is None, -(i.get("usage_cpu") or 0.0),
                                        i["app"], i["service"], i["id"]))


def _render(items: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False, show_edge=False)
    for c in ROW_COLUMNS:
        t.add_column(c, no_wrap=True, overflow="ellipsis")
    now = time.time()
    for i in by_cpu(items):
        t.add_row(*(Text("-" if v is None or v == "" else str(v)) for v in row(i, now)))
    return t


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one by one, unechoed) while it is a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_within(fd: int | None, seconds: float) -> bool:
    """Wait `seconds`; True as soon as q is pressed."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if fd is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready and os.read(fd, 1) in (b"q", b"Q"):
            return True
    return False


def top(
    app: str = typer.Argument(None, help="Only this application."),
    node: str = typer.Option(None, "--node", help="Only instances on this node."),
    namespace: str = typer.Option(None, "-n", "--namespace"),
    interval: str = typer.Option("2s", "--interval", help="Time between refreshes."),
    count: int = typer.Option(0, "--count", help="Stop after N refreshes (0: never)."),
) -> None:
    """The process table, live, busiest first (q or Ctrl-C to quit)."""
    try:
        every = parse_duration(interval)
    except ValueError as exc:
        die(f"--interval: {exc}", EXIT_USAGE)
    if every <= 0:
        die("--interval must be more than 0", EXIT_USAGE)

    async def fetch(client: Client) -> list[dict[str, Any]]:
        return list(await client.list_instances(app=app, node=node, namespace=namespace))

    title = f"corral top{' ' + app if app else ''} (every {interval}; q to quit)"
    shown = 0
    try:
        with _keys() as fd, Live(_render(call(fetch), title), console=console,
                                 auto_refresh=False) as live:
            shown += 1
            while not (count and shown >= count):
                if _quit_within(fd, every):
                    break
                live.update(_render(call(fetch), title), refresh=True)
                shown += 1
    except KeyboardInterrupt:
        pass  # Ctrl-C is the ordinary way out, as q is
