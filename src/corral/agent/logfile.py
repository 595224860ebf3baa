"""The on-disk log format of an instance's output, and its writer.

Each stream of an instance goes to `<log_dir>/<stream>.log`, one record per output line:

    2026-01-02T03:04:05.123456Z the text

The timestamp is when the line was read (UTC, microseconds), so stdout and stderr can be
merged by time. Files rotate by size to `<stream>.log.1` (newest) .. `.log.<keep>`; the text
is always valid UTF-8 (invalid bytes become U+FFFD) and never contains a newline.

This module imports only `os` and `time` (no asyncio, pathlib, typing, datetime or other
corral module): the per-instance supervisor (`agent/shim.py`), one small Python process
per instance, writes the logs with it, and each import costs every instance start time and
memory. `agent/logs.py` re-exports the
writer for the agent and holds the readers (`read_logs`, `follow_logs`), which parse what
is written here.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # the annotations only; `typing` costs the shim ~1.5 MB
    from collections.abc import Callable, Iterable, Sequence
    from typing import BinaryIO

__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_LINE", "LogWriter", "format_time"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3
# Longer lines are split (Docker's json-file driver splits at 16 KiB too), so one runaway line
# cannot hold the whole pipe buffer hostage nor exceed a rotated file on its own.
DEFAULT_MAX_LINE = 16 * 1024


def format_time(t: float) -> str:
    """RFC 3339, UTC, microseconds: `2026-01-02T03:04:05.123456Z`; the same text as
    `datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")` (microseconds
    rounded half to even, as datetime does) without importing datetime (~1.5 ms)."""
    whole = int(t)
    # `t - whole` is exact (what C's modf gives), so the rounding is datetime's.
    micros = round((t - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micros:06d}Z"


class LogWriter:
    """Writes one stream of one instance, rotating by size. Not thread-safe; one per stream.
    Appends to an existing file, so a restarted instance continues the same log."""

    def __init__(self, log_dir: str | os.PathLike[str], stream: str, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP,
                 clock: Callable[[], float] = time.time,
                 max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 4:
            raise ValueError("max_line must leave room for one UTF-8 character")
        self.path = os.path.join(os.fspath(log_dir), f"{stream}.log")
        self._max_bytes = max_bytes
        self._keep = keep
        self._clock = clock
        self._max_line = max_line
        os.makedirs(log_dir, exist_ok=True)
        # Unbuffered: each `write` is one syscall, so readers see whole lines at once.
        self._file: BinaryIO | None = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = self._file.tell()
        self._pending = b""
        self._last = 0.0

    def write(self, data: bytes) -> None:
        """Log every complete line of `data`; keep an unfinished last line for later, unless
        it is already longer than a line may be."""
        buf = self._pending + data
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) >= self._max_line:
            cut = _cut(self._pending, self._max_line)
            lines.append(self._pending[:cut])
            self._pending = self._pending[cut:]
        if lines:
            self._emit(lines)

    def close(self) -> None:
        """Log what is left of an unfinished line and close the file; idempotent."""
        if self._file is None:
            return
        if self._pending:
            self._emit([self._pending])
            self._pending = b""
        self._file.close()
        self._file = None

    def _emit(self, lines: Sequence[bytes]) -> None:
        assert self._file is not None, "write after close"
        # One timestamp per read: the lines arrived together. Never earlier than the last
        # one, so a stream's file stays sorted even if the wall clock steps back.
        now = max(self._clock(), self._last)
        self._last = now
        stamp = format_time(now).encode() + b" "
        out: list[bytes] = []
        size = 0
        for raw in lines:
            for piece in _split(raw.removesuffix(b"\r"), self._max_line):
                record = stamp + piece.decode("utf-8", "replace").encode() + b"\n"
                if self._size + size + len(record) > self._max_bytes and self._size + size > 0:
                    self._file.write(b"".join(out))
                    out, size = [], 0
                    self._rotate()
                out.append(record)
                size += len(record)
        self._file.write(b"".join(out))
        self._size += size

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        base = self.path
        if self._keep > 0:
            for i in range(self._keep - 1, 0, -1):
                if os.path.exists(f"{base}.{i}"):
                    os.replace(f"{base}.{i}", f"{base}.{i + 1}")
            os.replace(base, f"{base}.1")
        else:
            os.unlink(base)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0


def _cut(data: bytes, limit: int) -> int:
    """The largest cut <= `limit` that does not split a UTF-8 character."""
    if len(data) <= limit:
        return len(data)
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut or limit


def _split(line: bytes, limit: int) -> Iterable[bytes]:
    while len(line) > limit:
        cut = _cut(line, limit)
        yield line[:cut]
        line = line[cut:]
    yield line
