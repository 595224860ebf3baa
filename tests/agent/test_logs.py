"""agent/logs.py: line format, partial and long lines, rotation, and the readers (tail, since,
merge, follow across rotations)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.agent.logs import LogLine, LogWriter, follow_logs, format_time, read_logs

T0 = 1_700_000_000.0


class StepClock:
    """Each call returns the next time, `step` seconds later."""

    def __init__(self, start: float = T0, step: float = 1.0) -> None:
        self.now = start - step
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


def test_lines_are_timestamped_in_utc_with_microseconds(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, "stdout", clock=lambda: T0 + 0.000123)
    w.write(b"hello\nworld\n")
    w.close()
    assert (tmp_path / "stdout.log").read_text() == (
        "2023-11-14T22:13:20.000123Z hello\n2023-11-14T22:13:20.000123Z world\n")
    assert format_time(0.5) == "1970-01-01T00:00:00.500000Z"
    [first, _] = read_logs(tmp_path)
    assert first == LogLine(time=T0 + 0.000123, stream="stdout", text="hello")


def test_partial_line_waits_for_its_end_or_close(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, "stdout", clock=StepClock())
    w.write(b"hel")
    assert read_logs(tmp_path) == []
    w.write(b"lo\r\nno newline at the end")
    assert texts(read_logs(tmp_path)) == ["hello"]  # CRLF loses its CR
    w.close()
    w.close()
    assert texts(read_logs(tmp_path)) == ["hello", "no newline at the end"]


def test_long_lines_are_split_without_breaking_characters(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, "stdout", clock=StepClock(), max_line=10)
    w.write(b"0123456789abcdefghij" + b"xyz\n")
    w.write("ééééééé\n".encode())  # 2 bytes each: a cut at 10 would split nothing, at 9 would
    w.write(b"\xff\xfe bad utf-8\n")
    w.write(b"A" * 25)  # unfinished but longer than a line may be: written already
    assert texts(read_logs(tmp_path)) == [
        "0123456789", "abcdefghij", "xyz", "ééééé", "éé", "\ufffd\ufffd bad utf", "-8",
        "AAAAAAAAAA", "AAAAAAAAAA"]
    w.close()
    assert texts(read_logs(tmp_path))[-1] == "AAAAA"


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    clock = StepClock()
    w = LogWriter(tmp_path, "stdout", clock=clock, max_bytes=200, keep=2)
    for i in range(40):
        w.write(f"line {i:02}\n".encode())  # 36 bytes a record: 5 records a file
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["stdout.log", "stdout.log.1", "stdout.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    got = texts(read_logs(tmp_path))
    # The newest 3 files: 40 lines, 5 per file, so lines 25..39; nothing lost in between.
    assert got == [f"line {i:02}" for i in range(25, 40)]
    assert texts(read_logs(tmp_path, tail=7)) == [f"line {i:02}" for i in range(33, 40)]
    assert texts(read_logs(tmp_path, since=T0 + 27)) == [f"line {i:02}" for i in range(27, 40)]
    assert texts(read_logs(tmp_path, since=T0 + 27, tail=2)) == ["line 38", "line 39"]
    assert read_logs(tmp_path, tail=0) == []


def test_writer_appends_after_restart(tmp_path: Path) -> None:
    for word in ("before", "after"):
        w = LogWriter(tmp_path, "stderr", clock=StepClock())
        w.write(f"{word}\n".encode())
        w.close()
    assert texts(read_logs(tmp_path)) == ["before", "after"]


def test_streams_are_merged_by_time(tmp_path: Path) -> None:
    clock = StepClock()
    out = LogWriter(tmp_path, "stdout", clock=clock)
    err = LogWriter(tmp_path, "stderr", clock=clock)
    out.write(b"o1\n")
    err.write(b"e1\n")
    out.write(b"o2\n")
    err.write(b"e2\n")
    out.close()
    err.close()
    lines = read_logs(tmp_path)
    assert [(line.stream, line.text) for line in lines] == [
        ("stdout", "o1"), ("stderr", "e1"), ("stdout", "o2"), ("stderr", "e2")]
    assert texts(read_logs(tmp_path, streams=("stderr",))) == ["e1", "e2"]
    assert texts(read_logs(tmp_path, tail=3)) == ["e1", "o2", "e2"]


def test_reader_of_an_instance_without_logs(tmp_path: Path) -> None:
    assert read_logs(tmp_path / "missing") == []


async def test_pump_copies_a_stream_and_flushes_at_eof(tmp_path: Path) -> None:
    reader = asyncio.StreamReader()
    w = LogWriter(tmp_path, "stdout", clock=StepClock())
    pump = asyncio.create_task(w.pump(reader))
    reader.feed_data(b"one\ntw")
    reader.feed_data(b"o\nthree")
    reader.feed_eof()
    await asyncio.wait_for(pump, 5)
    assert texts(read_logs(tmp_path)) == ["one", "two", "three"]


async def next_lines(it: AsyncIterator[LogLine], n: int) -> list[str]:
    return [(await asyncio.wait_for(anext(it), 5)).text for _ in range(n)]


async def test_follow_sees_new_lines_across_rotations(tmp_path: Path) -> None:
    clock = StepClock()
    w = LogWriter(tmp_path, "stdout", clock=clock, max_bytes=100, keep=5)
    w.write(b"old 1\nold 2\n")
    it = follow_logs(tmp_path, tail=1, poll_interval=0.01)
    try:
        assert await next_lines(it, 1) == ["old 2"]
        w.write(b"new 1\n")
        assert await next_lines(it, 1) == ["new 1"]
        # Several rotations between two polls (records are 34 bytes, 2 per file): nothing
        # lost, nothing repeated, in order.
        burst = [f"burst {i}" for i in range(9)]
        w.write("".join(f"{b}\n" for b in burst).encode())
        assert await next_lines(it, 9) == burst
        w.write(b"partial")
        w.close()
        assert await next_lines(it, 1) == ["partial"]
        err = LogWriter(tmp_path, "stderr", clock=clock)  # a stream that starts late
        err.write(b"late\n")
        err.close()
        line = await asyncio.wait_for(anext(it), 5)
        assert (line.stream, line.text) == ("stderr", "late")
    finally:
        await it.aclose()


async def test_follow_filters_by_since(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, "stdout", clock=StepClock())
    w.write(b"a\n")  # one timestamp per write: T0
    w.write(b"b\n")  # T0 + 1
    it = follow_logs(tmp_path, since=T0 + 1, poll_interval=0.01)
    try:
        assert await next_lines(it, 1) == ["b"]
        w.write(b"c\n")
        assert await next_lines(it, 1) == ["c"]
    finally:
        await it.aclose()
        w.close()


def test_writer_rejects_a_line_limit_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_line"):
        LogWriter(tmp_path, "stdout", max_line=2)
