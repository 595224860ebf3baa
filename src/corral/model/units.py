"""Units the user writes in a spec: sizes (`128MiB`), durations (`2s`) and cpu cores (`0.25`).

Each parser accepts the canonical form it produces, so a record dumped to JSON and loaded
again is unchanged: sizes dump as integer bytes, durations as float seconds, cpu as float
cores. Errors are `ValueError` with a message that says what was expected; pydantic turns
them into field errors with a path.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Cpu", "Duration", "Size", "format_duration", "format_size", "parse_cpu",
           "parse_duration", "parse_size"]

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_size(value: Any) -> int:
    """`128MiB`, `1GiB`, `512k` or a whole number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 128MiB or 1GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            # Decimal, not float: a byte count above 2**53 must not come back rounded.
            return int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
        if value.strip().startswith("-"):
            raise ValueError(f"a size cannot be negative, got {value!r}")
    raise ValueError(f"expected a size such as 128MiB or 1GiB, got {value!r}")


def parse_duration(value: Any) -> float:
    """`500ms`, `2s`, `5m`, `1h30m` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 2s or 5m")
    if isinstance(value, int | float):
        # YAML's .nan and .inf are floats; no timer can wait for either.
        if not math.isfinite(value):
            raise ValueError(f"expected a duration such as 500ms, 2s or 5m, got {value!r}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text) and math.isfinite(total):
            return total
    raise ValueError(f"expected a duration such as 500ms, 2s or 5m, got {value!r}")


def parse_cpu(value: Any) -> float:
    """`0.25` cores, `2`, or `250m` millicores -> cores."""
    if isinstance(value, bool):
        raise ValueError("expected cpu cores such as 0.25 or 2")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("cpu cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("m"):
                return parse_cpu(float(text[:-1]) / 1000)
            return parse_cpu(float(text))
        except ValueError as exc:
            if "negative" in str(exc):
                raise
    raise ValueError(f"expected cpu cores such as 0.25 or 2, got {value!r}")


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    # Whole seconds from here, in compound form: rounding 150s to "2m" or 9000s to "2h"
    # misreported a timeout by a fifth or more.
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts)


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Cpu = Annotated[float, BeforeValidator(parse_cpu)]
