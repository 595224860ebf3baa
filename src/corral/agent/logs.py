"""Instance logs on the node: the readers behind `corral logs` (history, `--tail`,
`--since`, `-f`), and the writer re-exported for agent code.

The format (one timestamped record per line, size rotation to `<stream>.log.1..keep`) is
defined and written by `agent/logfile.py`, which the per-instance shim (`agent/shim.py`)
uses without asyncio; this module parses it back:

    2026-01-02T03:04:05.123456Z the text

Readers hold the current file open while they read the rotated ones, and skip a rotated file
that is the one they hold: a rotation between the two steps neither loses nor repeats lines.

Neighbours: `agent/logfile.py` (the writer), `agent/shim.py` (writes every instance's logs);
the agent's log endpoint uses the readers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal

from corral.agent import logfile
from corral.agent.logfile import DEFAULT_KEEP, DEFAULT_MAX_BYTES, DEFAULT_MAX_LINE, format_time

__all__ = [
    "DEFAULT_KEEP", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_LINE", "STREAMS", "LogLine", "LogWriter",
    "follow_logs", "format_time", "read_logs",
]

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLine:
    time: float
    stream: str
    text: str


class LogWriter(logfile.LogWriter):
    """`logfile.LogWriter` (the format, rotation, partial and long lines) plus `pump`, for
    agent code that holds a stream itself rather than leaving it to the instance's shim."""

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Copy `reader` into the log until end of file, then close."""
        try:
            while chunk := await reader.read(_READ_SIZE):
                self.write(chunk)
        finally:
            self.close()


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
