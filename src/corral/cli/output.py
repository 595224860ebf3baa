"""How every verb prints: a table for people, `--json` for programs, errors on stderr with
an exit code that means something.

Exit codes (documented in the README):
0 success · 1 the operation failed (an instance failed to start, a deployment failed) ·
2 bad usage or invalid input (spec errors, unknown names) · 3 the server cannot be reached
or refused the token · 4 not found.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_UNREACHABLE", "EXIT_USAGE", "ago", "console",
           "die", "err_console", "print_json", "table"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4

# Piped output is never wrapped (like kubectl): a table row stays one line for grep and awk.
console = Console(highlight=False, soft_wrap=True,
                  width=None if sys.stdout.isatty() else 10_000)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
          ) -> None:
    t = Table(title=title, box=None, header_style="bold", pad_edge=False, show_edge=False)
    for c in columns:
        t.add_column(c, no_wrap=True, overflow="ellipsis")
    for row in rows:
        # Cells are data (reasons, messages), never markup: a "[" in one must print as is.
        t.add_row(*(Text("-" if v is None or v == "" else str(v)) for v in row))
    console.print(t)


def die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", markup=True)
    raise SystemExit(code)


def ago(when: float | None, now: float | None = None) -> str:
    if not when:
        return "-"
    now = now if now is not None else dt.datetime.now(dt.UTC).timestamp()
    delta = max(0.0, now - when)
    if delta < 60:
        return f"{delta:.0f}s"
    if delta < 3600:
        return f"{delta / 60:.0f}m"
    if delta < 86400:
        return f"{delta / 3600:.0f}h"
    return f"{delta / 86400:.0f}d"
