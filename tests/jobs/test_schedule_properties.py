"""Property tests: schedules against independent, deliberately naive models.

Cron: the model walks real time minute by minute and reads each minute's wall clock with
`datetime.fromtimestamp` (no croniter, no offset arithmetic). A schedule that runs every
hour fires at every minute whose wall time matches; one that names its hours fires at the
first occurrence of a matching wall time (`fold == 0`) and, when the clocks jump, at the
first minute after the jump if a skipped wall time matched. Start times cluster around the
2026 offset changes of zones with 1-hour, 30-minute and 45-minute offsets.

ISO 8601: fire times increase strictly, `next_after` walks them one by one, and the wall
time of the k-th equals START plus k periods added by `dateutil.relativedelta`.
"""

from __future__ import annotations

import datetime
import functools
import zoneinfo

from dateutil.relativedelta import relativedelta
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.jobs.schedule import CronFields, parse_cron, parse_repeating_interval, parse_schedule

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "Pacific/Chatham", "America/Santiago")
YEAR_START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
HORIZON = 2 * 24 * 60  # minutes the model looks ahead


@functools.cache
def changes(tz: str) -> tuple[float, ...]:
    """The instants in 2026 at which the zone's offset changes (to the hour: the model only
    needs start times near them)."""
    zone = zoneinfo.ZoneInfo(tz)
    out = []
    prev = datetime.datetime.fromtimestamp(YEAR_START, zone).utcoffset()
    for h in range(1, 366 * 24):
        t = YEAR_START + h * 3600
        off = datetime.datetime.fromtimestamp(t, zone).utcoffset()
        if off != prev:
            out.append(t)
        prev = off
    return tuple(out) or (YEAR_START + 100 * 86400,)


def model_next(fields: CronFields, tz: str, t: float) -> float | None:
    zone = zoneinfo.ZoneInfo(tz)
    every_hour = len(fields.hours) == 24
    u = (t // 60) * 60 + 60
    prev = datetime.datetime.fromtimestamp(u - 60, zone).replace(tzinfo=None)
    for _ in range(HORIZON):
        wall = datetime.datetime.fromtimestamp(u, zone)
        naive = wall.replace(tzinfo=None, fold=0)
        if every_hour:
            if fields.matches(naive):
                return u
        else:
            if wall.fold == 0 and fields.matches(naive):
                return u
            skipped = prev + datetime.timedelta(minutes=1)
            while skipped < naive:
                if fields.matches(skipped):
                    return u
                skipped += datetime.timedelta(minutes=1)
        prev = naive
        u += 60
    return None


def cron_list(values: set[int], full: int) -> str:
    return "*" if len(values) == full else ",".join(str(v) for v in sorted(values))


@st.composite
def cron_cases(draw: st.DrawFn) -> tuple[str, str, float]:
    """(expression, zone, start): starts near an offset change, hours often the ones the
    change skips or repeats."""
    tz = draw(st.sampled_from(ZONES))
    zone = zoneinfo.ZoneInfo(tz)
    near = draw(st.sampled_from(changes(tz)))
    spread = draw(st.sampled_from([3 * 3600, 2 * 86400]))
    start = near + draw(st.floats(-spread, spread / 2, allow_nan=False))
    around = {datetime.datetime.fromtimestamp(near + d, zone).hour for d in (-3600, -1, 0)}
    minutes = draw(st.one_of(st.sets(st.integers(0, 59), min_size=1, max_size=4),
                             st.sampled_from([{0, 15, 30, 45}, set(range(60)), {0, 30}])))
    hours = draw(st.one_of(st.just(set(range(24))),
                           st.sets(st.sampled_from(sorted(around)), min_size=1),
                           st.sets(st.integers(0, 23), min_size=1, max_size=3)))
    days = draw(st.one_of(st.just(set(range(1, 32))),
                          st.sets(st.integers(1, 31), min_size=1, max_size=10)))
    weekdays = draw(st.one_of(st.just(set(range(7))),
                              st.sets(st.integers(0, 6), min_size=1, max_size=3)))
    expr = " ".join([cron_list(minutes, 60), cron_list(hours, 24), cron_list(days, 31), "*",
                     cron_list(weekdays, 7)])
    return expr, tz, start


@settings(max_examples=200, deadline=None)
@given(case=cron_cases())
def test_cron_matches_the_minute_by_minute_model(case: tuple[str, str, float]) -> None:
    expr, tz, t = case
    schedule = parse_schedule(expr, tz)
    fields = parse_cron(expr)
    for _ in range(6):
        got = schedule.next_after(t)
        want = model_next(fields, tz, t)
        if want is not None:
            assert got == want, (expr, tz, t)
        else:
            assert got is None or got > (t // 60) * 60 + HORIZON * 60, (expr, tz, t)
            return
        assert got > t
        t = got


@st.composite
def interval_texts(draw: st.DrawFn) -> str:
    start = draw(st.datetimes(datetime.datetime(2025, 1, 1), datetime.datetime(2027, 12, 31)))
    start = start.replace(second=0, microsecond=0)
    suffix = draw(st.sampled_from(["", "Z", "+02:00", "-05:30"]))
    parts = draw(st.sampled_from([
        "P1D", "P1W", "P1M", "P1Y", "P2M", "PT1H", "PT90M", "P1DT12H", "P3DT1H30M", "PT45M",
        "P1Y2M3DT4H",
    ]))
    return f"R/{start.isoformat()}{suffix}/{parts}"


@st.composite
def daily_through_a_change(draw: st.DrawFn, tz: str, k: int) -> str:
    """A daily schedule whose k-th time falls in the small hours of an offset change day."""
    day = datetime.datetime.fromtimestamp(draw(st.sampled_from(changes(tz))),
                                          zoneinfo.ZoneInfo(tz)).date()
    start = datetime.datetime.combine(day - datetime.timedelta(days=k), datetime.time(
        draw(st.integers(0, 3)), draw(st.sampled_from([0, 15, 30, 45]))))
    return f"R/{start.isoformat()}/P1D"


@settings(max_examples=200, deadline=None)
@given(data=st.data(), tz=st.sampled_from(ZONES), k=st.integers(0, 60))
def test_iso_interval_steps_match_the_calendar(data: st.DataObject, tz: str, k: int) -> None:
    text = data.draw(st.one_of(interval_texts(), daily_through_a_change(tz, k)))
    schedule = parse_schedule(text, tz)
    interval = parse_repeating_interval(text, tz)
    a, b = interval.fire(k), interval.fire(k + 1)
    assert a < b
    assert schedule.next_after(a) == b
    assert schedule.next_after(a - 1) == a
    p = interval.period
    step = relativedelta(years=k * p.years, months=k * p.months, weeks=k * p.weeks,
                         days=k * p.days)
    exact = k * p.exact_seconds
    if interval.start.tzinfo is not None:
        assert a == (interval.start + step).timestamp() + exact
        return
    zone = zoneinfo.ZoneInfo(tz)
    wall = interval.start + step
    first = wall.replace(tzinfo=zone, fold=0)
    if datetime.datetime.fromtimestamp(first.timestamp(), zone).replace(tzinfo=None) == wall:
        assert a == first.timestamp() + exact
    else:  # a wall time the clocks skip: the instant they land past it
        landed = a - exact
        assert datetime.datetime.fromtimestamp(landed - 1, zone).replace(tzinfo=None) < wall
        assert datetime.datetime.fromtimestamp(landed, zone).replace(tzinfo=None) > wall


def test_a_time_a_hair_before_a_fire_gets_that_fire() -> None:
    # Found by the property above: a timedelta rounds 1775865599.9999998 s up to the whole
    # second, which is itself a fire time, so the next one was answered.
    schedule = parse_schedule("0,15,30,45 * * * *", "UTC")
    assert schedule.next_after(1775865599.9999998) == 1775865600.0
    assert schedule.next_after(1775865600.0) == 1775866500.0
    assert schedule.next_after(1775865600.4) == 1775866500.0
