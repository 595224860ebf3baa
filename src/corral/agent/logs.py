"""Instance logs on the node: the writer the drivers pump output into, and the readers
behind `corral logs` (history, `--tail`, `--since`, `-f`).

Each stream of an instance goes to `<log_dir>/<stream>.log`, one line per output line:

    2026-01-02T03:04:05.123456Z the text

The timestamp is when the agent read the line (UTC, microseconds), so stdout and stderr can be
merged by time. Files rotate by size to `<stream>.log.1` (newest) .. `.log.<keep>`; the text
is always valid UTF-8 (invalid bytes become U+FFFD) and never contains a newline.

Readers hold the current file open while they read the rotated ones, and skip a rotated file
that is the one they hold: a rotation between the two steps neither loses nor repeats lines.

Neighbours: `agent/drivers/` create writers; the agent's log endpoint uses the readers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

__all__ = [
    "DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_LINE", "STREAMS", "LogLine", "LogWriter",
    "follow_logs", "format_time", "read_logs",
]

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3
# Longer lines are split (Docker's json-file driver splits at 16 KiB too), so one runaway line
# cannot hold the whole pipe buffer hostage nor exceed a rotated file on its own.
DEFAULT_MAX_LINE = 16 * 1024
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    time: float
    stream: str
    text: str


def format_time(t: float) -> str:
    """RFC 3339, UTC, microseconds: `2026-01-02T03:04:05.123456Z`."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogWriter:
    """Writes one stream of one instance, rotating by size. Not thread-safe; one per stream.
    Appends to an existing file, so an agent restart continues the same log."""

    def __init__(self, log_dir: Path, stream: Stream, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int = DEFAULT_KEEP, clock: Callable[[], float] = time.time,
                 max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 4:
            raise ValueError("max_line must leave room for one UTF-8 character")
        self.path = log_dir / f"{stream}.log"
        self._max_bytes = max_bytes
        self._keep = keep
        self._clock = clock
        self._max_line = max_line
        log_dir.mkdir(parents=True, exist_ok=True)
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

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Copy `reader` into the log until end of file, then close."""
        try:
            while chunk := await reader.read(_READ_SIZE):
                self.write(chunk)
        finally:
            self.close()

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
        base = str(self.path)
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


def _parse(raw: bytes, stream: str) -> LogLine | None:
    stamp, sep, text = raw.partition(b" ")
    try:
        t = datetime.fromisoformat(stamp.decode()).timestamp()
    except ValueError:
        return None  # not written by LogWriter; skip rather than fail the whole read
    return LogLine(time=t, stream=stream, text=text.decode("utf-8", "replace") if sep else "")


class _Cursor:
    """Reads one stream: its history, then what is appended, across rotations."""

    def __init__(self, log_dir: Path, stream: str) -> None:
        self.stream = stream
        self.path = log_dir / f"{stream}.log"
        self._file: BinaryIO | None = None
        self._partial = b""
        self._open_current()

    def _open_current(self) -> None:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            self._file = None
        self._partial = b""

    def _ino(self) -> int | None:
        return os.fstat(self._file.fileno()).st_ino if self._file is not None else None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _rotated(self) -> list[tuple[Path, int]]:
        """Rotated files, newest first, with their inode numbers."""
        out = []
        i = 1
        while True:
            p = Path(f"{self.path}.{i}")
            try:
                out.append((p, p.stat().st_ino))
            except FileNotFoundError:
                return out
            i += 1

    def _read_new(self) -> list[LogLine]:
        """Complete lines appended to the held file since the last read."""
        if self._file is None:
            return []
        if os.fstat(self._file.fileno()).st_size < self._file.tell():
            self._file.seek(0)  # truncated under us (copytruncate by an outside tool)
            self._partial = b""
        data = self._partial + self._file.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return self._parse_all(lines)

    def _parse_all(self, lines: Iterable[bytes]) -> list[LogLine]:
        return [p for raw in lines if raw and (p := _parse(raw, self.stream)) is not None]

    def _read_file(self, path: Path) -> list[LogLine]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []  # rotated out of `keep` meanwhile
        return self._parse_all(data.split(b"\n"))

    def history(self, *, since: float | None, tail: int | None) -> list[LogLine]:
        """Lines so far, oldest first. Rotated files are read newest first and only as far
        back as `since` and `tail` need."""
        chunks = [self._read_new()]
        held = self._ino()
        count = len(chunks[0])

        def enough() -> bool:
            if tail is not None and count >= tail:
                return True
            first = next((c[0] for c in reversed(chunks) if c), None)
            return since is not None and first is not None and first.time < since

        for path, ino in self._rotated():
            if enough():
                break
            if ino == held:
                continue
            chunks.append(self._read_file(path))
            count += len(chunks[-1])
        lines = [line for chunk in reversed(chunks) for line in chunk]
        if since is not None:
            lines = [line for line in lines if line.time >= since]
        return _tail(lines, tail)

    def poll(self) -> list[LogLine]:
        """Lines written since the last call, following the file through rotations."""
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None
        held = self._ino()
        # Read the held file to its end first: once the writer has rotated, nothing more is
        # written to it, so what is there is complete.
        lines = self._read_new()
        if current is None or current == held:
            return lines
        rotated = self._rotated()
        inodes = [ino for _, ino in rotated]
        # Files rotated after the one held (several rotations between two polls): those
        # newer than it, oldest first. If it is gone altogether, all of them.
        newer = rotated[:inodes.index(held)] if held in inodes else rotated
        self.close()
        self._open_current()
        now_held = self._ino()
        for path, ino in reversed(newer):
            if ino != now_held:
                lines.extend(self._read_file(path))
        lines.extend(self._read_new())
        return lines


def _tail(lines: list[LogLine], tail: int | None) -> list[LogLine]:
    if tail is None:
        return lines
    return lines[-tail:] if tail > 0 else []


def _merge(per_stream: Iterable[list[LogLine]]) -> list[LogLine]:
    # Stable: at equal times, lines keep stream order (stdout before stderr).
    return sorted((line for lines in per_stream for line in lines), key=lambda line: line.time)


def read_logs(log_dir: Path, *, streams: Sequence[str] = STREAMS, since: float | None = None,
              tail: int | None = None) -> list[LogLine]:
    """Lines of `streams` merged by time, oldest first, across rotated files: those at or
    after `since`, and of those the last `tail`."""
    cursors = [_Cursor(log_dir, s) for s in streams]
    try:
        lines = _merge(c.history(since=since, tail=tail) for c in cursors)
    finally:
        for c in cursors:
            c.close()
    return _tail(lines, tail)


async def follow_logs(log_dir: Path, *, streams: Sequence[str] = STREAMS,
                      since: float | None = None, tail: int | None = None,
                      poll_interval: float = 0.25) -> AsyncIterator[LogLine]:
    """`read_logs`, then every new line as it is written, until the caller stops iterating.
    New lines are merged by time within each poll."""
    cursors = [_Cursor(log_dir, s) for s in streams]
    try:
        history = _merge(c.history(since=since, tail=tail) for c in cursors)
        for line in _tail(history, tail):
            yield line
        while True:
            await asyncio.sleep(poll_interval)
            for line in _merge(c.poll() for c in cursors):
                if since is None or line.time >= since:
                    yield line
    finally:
        for c in cursors:
            c.close()
