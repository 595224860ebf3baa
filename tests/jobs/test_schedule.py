"""Schedules: cron and ISO 8601 fire times, in named time zones, across DST changes.

2026's changes: America/New_York springs forward on 8 March (02:00 EST -> 03:00 EDT) and
falls back on 1 November (02:00 EDT -> 01:00 EST); Europe/Berlin on 29 March (02:00 CET ->
03:00 CEST) and 25 October (03:00 CEST -> 02:00 CET).
"""

from __future__ import annotations

import datetime
import itertools
import zoneinfo

import pytest

from corral.jobs.schedule import (
    CronSchedule,
    IntervalSchedule,
    Schedule,
    fires_between,
    parse_cron,
    parse_period,
    parse_repeating_interval,
    parse_schedule,
)


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def fires(schedule: Schedule, start: str, n: int, tz: str) -> list[str]:
    """The next `n` fire times after `start`, as local ISO strings ("None" once used up)."""
    zone = zoneinfo.ZoneInfo(tz)
    out: list[str] = []
    t: float | None = at(start)
    while len(out) < n:
        assert t is not None
        t = schedule.next_after(t)
        out.append("None" if t is None else
                   datetime.datetime.fromtimestamp(t, zone).isoformat())
        if t is None:
            break
    return out


def cron(expr: str, tz: str = "UTC") -> CronSchedule:
    schedule = parse_schedule(expr, tz)
    assert isinstance(schedule, CronSchedule)
    return schedule


def iso(text: str, tz: str = "UTC") -> IntervalSchedule:
    schedule = parse_schedule(text, tz)
    assert isinstance(schedule, IntervalSchedule)
    return schedule


# --- cron -----------------------------------------------------------------------------------

def test_cron_fires_on_the_utc_clock_by_default() -> None:
    assert fires(cron("*/15 * * * *"), "2026-05-04T10:07:00+00:00", 4, "UTC") == [
        "2026-05-04T10:15:00+00:00", "2026-05-04T10:30:00+00:00",
        "2026-05-04T10:45:00+00:00", "2026-05-04T11:00:00+00:00"]


def test_cron_fires_on_the_wall_clock_of_its_time_zone() -> None:
    # Friday 10:00 in Paris: the next weekday 09:00 is Monday's.
    assert fires(cron("0 9 * * MON-FRI", "Europe/Paris"), "2026-01-09T10:00:00+01:00", 2,
                 "Europe/Paris") == ["2026-01-12T09:00:00+01:00", "2026-01-13T09:00:00+01:00"]


def test_next_after_is_strictly_after() -> None:
    schedule = cron("0 * * * *")
    t = at("2026-05-04T10:00:00+00:00")
    assert schedule.next_after(t) == t + 3600
    assert schedule.next_after(t - 0.5) == t


def test_either_restricted_day_field_matches() -> None:
    # The 13th, or any Friday (classic cron): Fri 2 Jan, Fri 9 Jan, Tue 13 Jan.
    assert fires(cron("0 0 13 * FRI"), "2026-01-01T00:00:00+00:00", 3, "UTC") == [
        "2026-01-02T00:00:00+00:00", "2026-01-09T00:00:00+00:00", "2026-01-13T00:00:00+00:00"]
    # A day field listing every value is not `*`: every day matches.
    assert len(set(fires(cron("0 0 1-31 * FRI"), "2026-01-01T00:00:00+00:00", 3, "UTC"))) == 3
    assert fires(cron("0 0 1 * 0-7"), "2026-01-01T00:00:00+00:00", 2, "UTC") == [
        "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"]


def test_a_date_that_comes_every_four_years() -> None:
    assert fires(cron("0 0 29 2 *"), "2026-01-01T00:00:00+00:00", 2, "UTC") == [
        "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]


@pytest.mark.parametrize(("expr", "fragment"), [
    ("0 0 30 2 *", "day of month 30 never occurs in FEB"),
    ("0 0 31 4,6 *", "day of month 31 never occurs in APR, JUN"),
])
def test_a_date_that_never_comes_is_refused(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_cron(expr)
    # With a weekday as well, the weekday still fires.
    parse_cron(expr.replace(" *", " MON"))


def test_unknown_time_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        parse_schedule("* * * * *", "Mars/Olympus")


def test_croniter_sees_only_plain_lists() -> None:
    assert parse_cron("*/20 9-11 * JAN-mar mon-FRI").canonical() == \
        "0,20,40 9,10,11 * 1,2,3 1,2,3,4,5"
    assert parse_cron("@weekly").canonical() == "0 0 * 1,2,3,4,5,6,7,8,9,10,11,12 0"


# --- cron across DST changes ----------------------------------------------------------------

@pytest.mark.parametrize(("tz", "start", "expected"), [
    ("America/New_York", "2026-03-07T00:00:00-05:00",
     ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("Europe/Berlin", "2026-03-28T00:00:00+01:00",
     ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
])
def test_a_skipped_wall_time_fires_as_the_clocks_land(tz: str, start: str,
                                                      expected: list[str]) -> None:
    assert fires(cron("30 2 * * *", tz), start, 3, tz) == expected


def test_several_skipped_times_make_one_run() -> None:
    assert fires(cron("0,20,40 2 * * *", "Europe/Berlin"), "2026-03-28T23:00:00+01:00", 3,
                 "Europe/Berlin") == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00",
                                      "2026-03-30T02:20:00+02:00"]


@pytest.mark.parametrize(("tz", "expr", "start", "expected"), [
    ("America/New_York", "30 1 * * *", "2026-10-31T12:00:00-04:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("Europe/Berlin", "30 2 * * *", "2026-10-24T12:00:00+02:00",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
])
def test_a_repeated_wall_time_fires_once(tz: str, expr: str, start: str,
                                         expected: list[str]) -> None:
    assert fires(cron(expr, tz), start, 2, tz) == expected


def test_in_the_repeated_hour_a_named_time_already_fired_is_not_due_again() -> None:
    # 01:10 EST is the second pass through 01:xx: 01:30 fired at 01:30 EDT already.
    schedule = cron("30 1 * * *", "America/New_York")
    assert fires(schedule, "2026-11-01T01:10:00-05:00", 1, "America/New_York") == [
        "2026-11-02T01:30:00-05:00"]
    # In the first pass it is still ahead.
    assert fires(schedule, "2026-11-01T01:10:00-04:00", 1, "America/New_York") == [
        "2026-11-01T01:30:00-04:00"]


def test_an_every_hour_schedule_keeps_to_real_time() -> None:
    ny = "America/New_York"
    # Back: the repeated hour fires in both passes.
    assert fires(cron("*/30 * * * *", ny), "2026-11-01T00:10:00-04:00", 6, ny) == [
        "2026-11-01T00:30:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00", "2026-11-01T01:30:00-05:00", "2026-11-01T02:00:00-05:00"]
    # Forward: nothing in the hour that does not exist.
    assert fires(cron("*/30 * * * *", ny), "2026-03-08T01:10:00-05:00", 3, ny) == [
        "2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]
    # @hourly is an hour apart in real time through both days.
    for day in ("2026-03-07T20:00:00-05:00", "2026-10-31T20:00:00-04:00"):
        t = at(day)
        times = [t := cron("@hourly", ny).next_after(t) or 0.0 for _ in range(12)]
        assert [b - a for a, b in itertools.pairwise(times)] == [3600.0] * 11


def test_a_half_hour_dst_change() -> None:
    # Lord Howe Island moves its clocks by 30 minutes (5 April 2026: 02:00 -> 01:30).
    tz = "Australia/Lord_Howe"
    assert fires(cron("45 1 * * *", tz), "2026-04-04T12:00:00+11:00", 2, tz) == [
        "2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]


# --- ISO 8601 repeating intervals -----------------------------------------------------------

def test_parse_repeating_interval() -> None:
    schedule = parse_repeating_interval("R/2026-01-01T00:00:00Z/PT1H")
    assert schedule.repeats is None
    assert schedule.start == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert (schedule.period.text, schedule.period.hours) == ("PT1H", 1)
    assert parse_repeating_interval("R5/2026-01-01T06:30:00+02:00/P1D").repeats == 5
    assert parse_repeating_interval("R0/2026-01-01/P1Y2M").repeats == 0


@pytest.mark.parametrize(("period", "parts"), [
    ("PT1H", {"hours": 1}), ("P1D", {"days": 1}), ("PT30M", {"minutes": 30}),
    ("P1W", {"weeks": 1}), ("PT0.5S", {"seconds": 0.5}), ("PT1,5S", {"seconds": 1.5}),
    ("P1M", {"months": 1}), ("P1Y", {"years": 1}),
    ("P1DT12H30M", {"days": 1, "hours": 12, "minutes": 30}),
    ("P1Y2M3DT4H5M6S", {"years": 1, "months": 2, "days": 3, "hours": 4, "minutes": 5,
                        "seconds": 6.0}),
])
def test_iso_periods_accepted(period: str, parts: dict[str, float]) -> None:
    parsed = parse_period(period)
    assert {k: getattr(parsed, k) for k in parts} == parts
    assert parse_repeating_interval(f"R/2026-01-01T00:00:00Z/{period}").period == parsed


@pytest.mark.parametrize(("period", "fragment"), [
    ("P", "has no parts"), ("PT", "has no parts"), ("1H", "(it must start with P)"),
    ("P1H", "hours and seconds go after T, as in PT1H"), ("PT1.5H", "only seconds may have"),
    ("PT0S", "'PT0S' is zero"), ("P0D", "'P0D' is zero"), ("P1D1Y", "not an ISO 8601 duration"),
    ("P1DT", "T must be followed by"), ("soon", "is not an ISO 8601 duration"),
])
def test_bad_periods_say_what_is_wrong(period: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_period(period)
    assert fragment in str(info.value)
    assert f"period {period!r}" in str(info.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("R/2026-01-01T00:00:00Z", "found 2 parts"),
    ("X/2026-01-01T00:00:00Z/PT1H", "repeat count 'X'"),
    ("R-1/2026-01-01T00:00:00Z/PT1H", "repeat count 'R-1'"),
    ("R/tomorrow/PT1H", "start 'tomorrow' is not an ISO 8601 date"),
    ("R//PT1H", "start ''"),
    ("R/2026-01-01T00:00:00Z/P", "has no parts"),
    ("R/2026-01-01T00:00:00Z/PT0S", "is zero"),
    ("R/2026-01-01T00:00:00Z/PT1H/x", "found 4 parts"),
])
def test_iso_intervals_refused(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_repeating_interval(text)
    assert fragment in str(info.value)


def test_r5_fires_five_times_then_stops() -> None:
    schedule = iso("R5/2026-01-01T00:00:00Z/PT1H")
    assert fires(schedule, "2025-12-31T00:00:00+00:00", 7, "UTC") == [
        f"2026-01-01T0{h}:00:00+00:00" for h in range(5)] + ["None"]
    assert schedule.next_after(at("2030-01-01T00:00:00+00:00")) is None
    assert iso("R0/2026-01-01T00:00:00Z/PT1H").next_after(0.0) is None
    assert fires(iso("R1/2026-01-01T00:00:00Z/PT1H"), "2025-01-01T00:00:00+00:00", 2,
                 "UTC") == ["2026-01-01T00:00:00+00:00", "None"]


def test_unlimited_interval_from_a_start_long_past() -> None:
    assert fires(iso("R/2026-01-01T00:00:00Z/PT1H"), "2030-06-01T00:30:00+00:00", 2,
                 "UTC") == ["2030-06-01T01:00:00+00:00", "2030-06-01T02:00:00+00:00"]
    assert fires(iso("R/2026-01-01T00:00:00Z/PT0.5S"), "2026-01-01T00:00:10.2+00:00", 2,
                 "UTC") == ["2026-01-01T00:00:10.500000+00:00", "2026-01-01T00:00:11+00:00"]


def test_months_are_counted_from_the_start_not_added_up() -> None:
    assert fires(iso("R/2026-01-31T10:00:00Z/P1M"), "2026-01-01T00:00:00+00:00", 5, "UTC") == [
        "2026-01-31T10:00:00+00:00", "2026-02-28T10:00:00+00:00", "2026-03-31T10:00:00+00:00",
        "2026-04-30T10:00:00+00:00", "2026-05-31T10:00:00+00:00"]
    # A leap day, yearly: the 28th in common years, the 29th again in a leap year.
    assert fires(iso("R/2028-02-29T00:00:00Z/P1Y"), "2029-01-01T00:00:00+00:00", 4, "UTC") == [
        "2029-02-28T00:00:00+00:00", "2030-02-28T00:00:00+00:00", "2031-02-28T00:00:00+00:00",
        "2032-02-29T00:00:00+00:00"]


def test_a_start_without_offset_steps_days_on_the_zone_wall_clock() -> None:
    berlin = "Europe/Berlin"
    schedule = iso("R/2026-03-27T02:30:00/P1D", berlin)
    assert fires(schedule, "2026-03-27T00:00:00+01:00", 4, berlin) == [
        "2026-03-27T02:30:00+01:00", "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist: as the clocks land
        "2026-03-30T02:30:00+02:00"]
    autumn = iso("R/2026-10-24T02:30:00/P1D", berlin)
    assert fires(autumn, "2026-10-24T00:00:00+02:00", 3, berlin) == [
        "2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00",  # once, the first time
        "2026-10-26T02:30:00+01:00"]


def test_a_start_with_an_offset_steps_in_that_offset() -> None:
    # P1D is 24 hours: the Berlin wall clock moves to 03:30 in summer time.
    schedule = iso("R/2026-03-28T02:30:00+01:00/P1D", "Europe/Berlin")
    assert fires(schedule, "2026-03-28T00:00:00+01:00", 3, "Europe/Berlin") == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-30T03:30:00+02:00"]


def test_calendar_parts_then_elapsed_time() -> None:
    # P1DT12H from noon the day before spring-forward: a calendar day to 29 March 12:00
    # CEST, then 12 hours; 23 hours of a short day plus 12.
    schedule = iso("R/2026-03-28T12:00:00/P1DT12H", "Europe/Berlin")
    first, second = schedule.fire(0), schedule.fire(1)
    assert second - first == (23 + 12) * 3600
    assert datetime.datetime.fromtimestamp(second, zoneinfo.ZoneInfo("Europe/Berlin")) \
        .isoformat() == "2026-03-30T00:00:00+02:00"


def test_weeks_and_the_end_of_the_calendar() -> None:
    assert fires(iso("R3/2026-01-05T08:00:00Z/P1W"), "2026-01-01T00:00:00+00:00", 4,
                 "UTC")[-2:] == ["2026-01-19T08:00:00+00:00", "None"]
    assert iso("R/9998-01-01T00:00:00Z/P1Y").next_after(at("9999-06-01T00:00:00+00:00")) \
        is None


def test_fires_between_is_bounded_and_half_open() -> None:
    schedule = cron("0 * * * *")
    a = at("2026-05-04T10:00:00+00:00")
    assert fires_between(schedule, a, a + 3 * 3600, limit=10) == [
        a + 3600, a + 7200, a + 3 * 3600]
    assert fires_between(schedule, a, a + 3 * 3600, limit=2) == [a + 3600, a + 7200]
    assert fires_between(schedule, a, a + 3599, limit=10) == []
