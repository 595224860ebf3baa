"""Units in a spec file: sizes, durations and cpu, parsed and formatted (model/units.py).

Round trips are checked with hypothesis wherever the formatted text is exact; the examples
pin the forms DESIGN.md promises (`128MiB`, `1GiB`, `500ms`, `2s`, `5m`, `0.25`)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from corral.model.units import (
    format_duration,
    format_size,
    parse_cpu,
    parse_duration,
    parse_size,
)

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(("text", "expected"), [
    ("128MiB", 128 * MiB), ("1GiB", GiB), ("512k", 512_000), ("512KiB", 512 * KiB),
    ("1.5GiB", 1536 * MiB), ("2TiB", 2 * TiB), ("64 mib", 64 * MiB), ("100", 100),
    ("10b", 10), ("1MB", 1_000_000), ("0", 0), (4096, 4096),
])
def test_parse_size_examples(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("lots", "expected a size such as 128MiB or 1GiB, got 'lots'"), ("-5MiB", "negative"),
    (-1, "negative"), ("12 parsecs", "got '12 parsecs'"), ("", "expected a size"),
    (True, "expected a size"), (1.5, "expected a size"), ("1e9", "expected a size"),
    (None, "expected a size"),
])
def test_parse_size_refuses(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert fragment in str(info.value)


# Floats hold every whole number only up to 2**53; past it, odd byte counts used to round.
@given(st.one_of(st.integers(min_value=0, max_value=2**80),
                 st.integers(min_value=2**53, max_value=2**64).map(lambda n: n | 1)))
@example(2**53 + 1)
def test_parse_size_is_exact_for_whole_numbers(n: int) -> None:
    assert parse_size(str(n)) == n
    assert parse_size(n) == n


@given(st.integers(min_value=0, max_value=10**9),
       st.sampled_from([("B", 1), ("KiB", KiB), ("MiB", MiB), ("GiB", GiB), ("TiB", TiB),
                        ("k", 1000), ("MB", 1000**2), ("g", 1000**3)]))
def test_parse_size_multiplies_exactly(n: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_size(f"{n}{suffix}") == n * factor


def _exact_sizes() -> st.SearchStrategy[int]:
    # format_size shows one decimal in the largest unit that fits, so it is exact for byte
    # counts below 1KiB and for whole or half multiples of KiB, MiB and GiB.
    small = st.integers(min_value=0, max_value=KiB - 1)
    below_next = st.builds(lambda k, half, f: k * f + half * f // 2,
                           st.integers(1, 1023), st.integers(0, 1),
                           st.sampled_from([KiB, MiB, GiB]))
    big = st.builds(lambda k: k * GiB, st.integers(1, 10**6))
    return st.one_of(small, below_next, big)


@given(_exact_sizes())
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n


def test_format_size_examples() -> None:
    assert [format_size(n) for n in (0, 1023, KiB, 1536, 128 * MiB, GiB, 3 * TiB)] == [
        "0B", "1023B", "1KiB", "1.5KiB", "128MiB", "1GiB", "3072GiB"]


@pytest.mark.parametrize(("text", "expected"), [
    ("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h30m", 5400.0), ("1d", 86400.0),
    ("1.5s", 1.5), ("1m30s", 90.0), (10, 10.0), (2.5, 2.5), (0, 0.0), (" 2s ", 2.0),
])
def test_parse_duration_examples(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("value", [
    "2 weeks", "5x", "10", "", "s", "1s2", "2s 1m", "-2s", -1, True, None, math.nan, math.inf,
    -math.inf, "9" * 400 + "s",
])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert "duration" in str(info.value)


@given(st.integers(min_value=0, max_value=999))
def test_duration_round_trip_below_a_second(ms: int) -> None:
    assert math.isclose(parse_duration(format_duration(ms / 1000)), ms / 1000, abs_tol=1e-12)


@given(st.integers(min_value=10, max_value=1199))
def test_duration_round_trip_tenths_below_two_minutes(tenths: int) -> None:
    assert parse_duration(format_duration(tenths / 10)) == tenths / 10


@given(st.integers(min_value=1, max_value=10**8))
def test_duration_round_trip_whole_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 1000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_compound_durations_add_up(h: int, m: int, s: int, ms: int) -> None:
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert math.isclose(parse_duration(f"{h}h{m}m{s}s{ms}ms"), expected, abs_tol=1e-9)


def test_format_duration_examples() -> None:
    assert [format_duration(s) for s in (0.5, 2, 1.5, 90, 150, 300, 5400, 7200, 86400)] == [
        "500ms", "2s", "1.5s", "90s", "2m30s", "5m", "1h30m", "2h", "24h"]


@pytest.mark.parametrize(("value", "expected"), [
    (0.25, 0.25), ("0.25", 0.25), (2, 2.0), ("250m", 0.25), ("1500m", 1.5), ("2", 2.0),
])
def test_parse_cpu_examples(value: str | float, expected: float) -> None:
    assert parse_cpu(value) == expected


@pytest.mark.parametrize("value", ["lots", "2 cores", -1, "-0.5", "-250m", True, None, ""])
def test_parse_cpu_refuses(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpu(value)
    assert "cpu" in str(info.value)


@given(st.integers(min_value=1, max_value=1_000_000))
def test_millicores(m: int) -> None:
    assert math.isclose(parse_cpu(f"{m}m"), m / 1000)
