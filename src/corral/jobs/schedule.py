"""Schedules: when a job fires. Cron expressions and ISO 8601 repeating intervals.

One parser serves validation and execution: `spec/checks.py` calls `parse_schedule` to
report a bad `schedule:` (its `ValueError` says what is wrong), and the cron controller
(`jobs/cron.py`) asks the same objects for fire times. A `Schedule` answers one question,
`next_after(t)`: the first fire time strictly after `t` (epoch seconds), or None once a
finite schedule is used up. Everything is pure: no clock, times are passed in.

Cron (`*/15 * * * *`, `0 9 * * MON-FRI`, `@daily`): the classic five fields, with names,
ranges, steps, lists and the `@hourly`...`@yearly` macros; nothing else (no seconds, no
`L`, `W`, `#` or `H`), so a spec means the same everywhere. When both day fields are
restricted a day matching either runs (classic cron). `parse_cron` checks the syntax with
messages naming the field; `croniter` then walks the wall clock of the job's `time_zone`.
Across daylight-saving changes (Vixie cron's rule, also croniter's own):

- A schedule that names its hours (`30 2 * * *`, `0 */2 * * *`) fires once per matching
  wall time. When the clocks go back and show 01:30 twice, it fires the first time only.
  When they jump from 02:00 to 03:00, a 02:30 run fires at 03:00, the first instant after
  the jump (late rather than lost; several skipped times make one run). robfig/cron, which
  Kubernetes uses, drops such a run instead.
- A schedule that runs every hour (hour field `*`: `*/15 * * * *`, `@hourly`) keeps to real
  time: nothing fires in the skipped hour, and the repeated hour fires in both passes, so
  `*/15` stays 15 minutes apart.

ISO 8601 repeating intervals as Chronos writes them, `R[n]/START/PERIOD`:

- `R5/...` fires five times (START, START + PERIOD, ... START + 4 PERIOD); `R/...`
  without a number never stops; `R0/...` never fires.
- PERIOD is `P[nY][nM][nW][nD][T[nH][nM][nS]]` (`PT1H`, `P1D`, `P1M`, `P1DT12H30M`); only
  seconds may have a fraction; a zero period is an error.
- The k-th time is START + k x PERIOD computed from START, not by adding PERIOD again and
  again: a monthly schedule from 31 January fires on the last day of shorter months and
  goes back to the 31st.
- START with `Z` or an offset is a fixed instant, and PERIOD steps in that fixed offset
  (`P1D` is always 24 hours, as in Chronos); `time_zone` does not apply. START without an
  offset is a wall time in the job's `time_zone`: years, months, weeks and days move the
  date on that wall clock (02:30 every day, summer and winter), then hours, minutes and
  seconds add elapsed time. A wall time the clocks skip or repeat is handled as for cron.

The wall clock is walked one constant-offset stretch at a time, the changes of offset being
found by probing the zone once a day and bisecting: this assumes at most one change of
offset within a day, which holds for every zone in tzdata in modern times.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from croniter import CroniterBadDateError, croniter

__all__ = [
    "CronFields", "CronSchedule", "IntervalSchedule", "Period", "Schedule", "fires_between",
    "load_zone", "parse_cron", "parse_period", "parse_repeating_interval", "parse_schedule",
]

_EPOCH = datetime.datetime(1970, 1, 1)
_DAY = 86400.0
# Bounds the walk over offset changes (two a year in most zones): a schedule that has not
# fired after this many is treated as never firing.
_MAX_SEGMENTS = 1000


class Schedule(Protocol):
    def next_after(self, t: float) -> float | None:
        """The first fire time strictly after `t` (epoch seconds); None when none is left."""
        ...


def fires_between(schedule: Schedule, after: float, until: float, *,
                  limit: int) -> list[float]:
    """The fire times in (after, until], in order: the first `limit` of them."""
    out: list[float] = []
    t = after
    while len(out) < limit:
        nxt = schedule.next_after(t)
        if nxt is None or nxt > until:
            break
        out.append(nxt)
        t = nxt
    return out


def parse_schedule(text: str, time_zone: str = "UTC") -> CronSchedule | IntervalSchedule:
    """A job's `schedule:` (cron, or ISO 8601 when it starts with R) evaluated in
    `time_zone`; raises ValueError saying what is wrong."""
    load_zone(time_zone)
    if text.strip().startswith("R"):
        return parse_repeating_interval(text, time_zone)
    return CronSchedule(text=text, time_zone=time_zone, fields=parse_cron(text))


def load_zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}; expected a zoneinfo name such as UTC "
                         "or Europe/Paris") from None


# --- cron syntax ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class CronFields:
    """A 5-field cron expression as the set of values each field allows. Classic cron runs
    when minute, hour and month match and *either* day field matches if both are restricted;
    `days_any` / `weekdays_any` record which were `*`. Sunday is 0."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_any: bool
    weekdays_any: bool

    def matches(self, wall: datetime.datetime) -> bool:
        """Whether a wall-clock time (seconds ignored) is one this expression names."""
        if wall.minute not in self.minutes or wall.hour not in self.hours or \
                wall.month not in self.months:
            return False
        day = wall.day in self.days
        weekday = wall.isoweekday() % 7 in self.weekdays
        if self.days_any or self.weekdays_any:
            return day and weekday
        return day or weekday

    def canonical(self) -> str:
        """The same schedule as plain numeric lists, the only syntax given to croniter, so
        its reading cannot differ from ours (it treats a field listing every value as `*`,
        which would turn the either-day rule into both-days)."""
        days_any, weekdays_any = self.days_any, self.weekdays_any
        if not days_any and not weekdays_any and (len(self.days) == 31 or
                                                  len(self.weekdays) == 7):
            days_any = weekdays_any = True  # either day field matches every day
        parts = [_cron_list(self.minutes), _cron_list(self.hours),
                 "*" if days_any else _cron_list(self.days), _cron_list(self.months),
                 "*" if weekdays_any else _cron_list(self.weekdays)]
        return " ".join(parts)


def _cron_list(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


_MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
                "DEC"]
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_CRON_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS),
)
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
_LONGEST_MONTH = {m: calendar.monthrange(2000, m)[1] for m in range(1, 13)}  # a leap year


def _cron_value(text: str, field: str, lo: int, hi: int, names: Mapping[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"{field}: {text!r} is not a number" +
                         (" or a name such as " + next(iter(names)) if names else ""))
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is out of range {lo}-{hi}")
    return value


def _cron_field(text: str, field: str, lo: int, hi: int,
                names: Mapping[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field}: step {step_text!r} must be a whole number above 0")
            step = int(step_text)
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            first = _cron_value(a, field, lo, hi, names)
            last = _cron_value(b, field, lo, hi, names)
            if first > last:
                raise ValueError(f"{field}: range {base!r} goes backwards")
        else:
            first = _cron_value(base, field, lo, hi, names)
            # `5/15` means "from 5, every 15" (Vixie cron and most of its successors).
            last = hi if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(expr: str) -> CronFields:
    """A 5-field cron expression (`*/15 * * * *`, `0 9 * * MON-FRI`) or a macro such as
    `@daily`; raises ValueError saying which field is wrong."""
    text = _MACROS.get(expr.strip().lower(), expr)
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), "
                         f"found {len(parts)}")
    sets = [_cron_field(part, *spec) for part, spec in zip(parts, _CRON_FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
    fields = CronFields(minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3],
                        weekdays=weekdays, days_any=parts[2] == "*",
                        weekdays_any=parts[4] == "*")
    if fields.weekdays_any and not any(d <= _LONGEST_MONTH[m]
                                       for d in fields.days for m in fields.months):
        days = ", ".join(str(d) for d in sorted(fields.days))
        months = ", ".join(_MONTH_NAMES[m - 1] for m in sorted(fields.months))
        raise ValueError(f"day of month {days} never occurs in {months}: the schedule would "
                         "never fire")
    return fields


# --- cron evaluation ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class CronSchedule:
    text: str
    time_zone: str
    fields: CronFields

    @property
    def hourly(self) -> bool:
        """Runs in every hour of the day, so it keeps to real time across offset changes."""
        return len(self.fields.hours) == 24

    def next_after(self, t: float) -> float | None:
        try:
            # Fires fall on whole minutes, so "after t" is "after t's whole second"; and the
            # datetimes below keep microseconds, rounding 59.9999998 s up to 60 s, which
            # would skip a fire at 60 s.
            return self._next_after(math.floor(t))
        except (OverflowError, ValueError, OSError):  # past the calendar's end
            return None

    def _next_after(self, t: float) -> float | None:
        zone = load_zone(self.time_zone)
        expr = _canonical(self.fields)
        once_per_wall = not self.hourly
        # Walls below `floor` were shown before the clocks went back: already fired.
        floor = _repeat_floor(zone, t) if once_per_wall else None
        u, inclusive = t, False
        for _ in range(_MAX_SEGMENTS):
            off = _offset(zone, u)
            start, incl = u + off, inclusive
            if floor is not None and floor > start:
                start, incl = floor, True
            wall = _cron_next_wall(expr, start, inclusive=incl)
            if wall is None:
                return None
            candidate = wall - off
            change = _next_transition(zone, u, candidate)
            if change is None:
                return candidate
            after = _offset(zone, change)
            if once_per_wall and after > off and wall < change + after:
                return change  # the clocks skip this wall time: fire as they land
            floor = change + off if once_per_wall and after < off else None
            u, inclusive = change, True
        return None


def _cron_next_wall(expr: str, start: float, *, inclusive: bool) -> float | None:
    """The first wall time (seconds on a naive clock from 1970) matching `expr` after
    `start`, or at it when `inclusive`."""
    if inclusive:
        # croniter answers strictly after a time, to the minute: ask from a second before
        # the first whole minute at or after `start`.
        start = math.ceil(start / 60.0) * 60.0 - 1.0
    try:
        nxt = _croniter(expr).get_next(datetime.datetime,
                                       start_time=_EPOCH + datetime.timedelta(seconds=start))
    except (CroniterBadDateError, OverflowError, ValueError):
        return None  # nothing within croniter's search horizon (50 years) or the calendar
    return (nxt - _EPOCH).total_seconds()


@functools.lru_cache(maxsize=256)
def _canonical(fields: CronFields) -> str:
    return fields.canonical()


@functools.lru_cache(maxsize=256)
def _croniter(expr: str) -> croniter:
    # A croniter is an iterator, but every use passes `start_time`, which resets it, so one
    # per expression can be shared (one thread: the server's event loop).
    return croniter(expr, _EPOCH)


# --- time zones -----------------------------------------------------------------------------

def _offset(zone: datetime.tzinfo, t: float) -> float:
    """The zone's UTC offset at instant `t`, in seconds."""
    off = datetime.datetime.fromtimestamp(t, zone).utcoffset()
    assert off is not None
    return off.total_seconds()


def _next_transition(zone: datetime.tzinfo, after: float, until: float) -> float | None:
    """The first instant in (after, until] whose UTC offset differs from the one at `after`."""
    base = _offset(zone, after)
    lo = after
    while lo < until:
        hi = min(lo + _DAY, until)
        if _offset(zone, hi) != base:
            # Offsets change on whole seconds: bisect on integers. `a` keeps the old offset.
            a, b = math.floor(lo), math.ceil(hi)
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(zone, mid) == base:
                    a = mid
                else:
                    b = mid
            return float(b)
        lo = hi
    return None


def _repeat_floor(zone: datetime.tzinfo, t: float) -> float | None:
    """If `t` lies in the stretch the clocks repeat after going back, the wall time they had
    reached before going back (walls below it were shown once already); else None."""
    before, now = _offset(zone, t - _DAY), _offset(zone, t)
    if before <= now:
        return None
    change = _next_transition(zone, t - _DAY, t)
    if change is None:
        return None
    reached = change + before
    return reached if t + now < reached else None


def _resolve(zone: datetime.tzinfo, wall: datetime.datetime) -> float:
    """The instant a naive wall time names in `zone`: its first occurrence when the clocks
    show it twice, the instant they jump past it when they skip it."""
    first = wall.replace(tzinfo=zone, fold=0)  # PEP 495: fold=0 is the earlier reading
    ts = first.timestamp()
    if datetime.datetime.fromtimestamp(ts, zone).replace(tzinfo=None) == wall:
        return ts
    # In a gap, fold=0 reads the wall with the offset from before the jump (an instant after
    # it) and fold=1 with the offset from after (an instant before it).
    change = _next_transition(zone, wall.replace(tzinfo=zone, fold=1).timestamp(), ts)
    return ts if change is None else change


# --- ISO 8601 repeating intervals -----------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """An ISO 8601 duration: calendar parts (years, months, weeks, days) and exact parts."""

    text: str
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: float = 0.0

    @property
    def exact_seconds(self) -> float:
        return self.hours * 3600.0 + self.minutes * 60.0 + self.seconds

    @property
    def average_seconds(self) -> float:
        """The mean length (a Gregorian month is 30.436875 days), to estimate counts."""
        return (self.years * 12 + self.months) * 2_629_746.0 + \
            (self.weeks * 7 + self.days) * _DAY + self.exact_seconds


_PERIOD = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
                     r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:[.,]\d+)?)S)?)?")
_PERIOD_FORM = "P[nY][nM][nW][nD][T[nH][nM][nS]], such as PT1H, P1D, P1M or P1DT12H30M"


def parse_period(text: str) -> Period:
    """An ISO 8601 duration such as `PT1H` or `P1DT12H30M`; raises ValueError naming the
    problem."""
    if text in ("P", "PT"):
        raise ValueError(f"period {text!r} has no parts: expected {_PERIOD_FORM}")
    m = _PERIOD.fullmatch(text)
    if m is None:
        if not text.startswith("P"):
            why = " (it must start with P)"
        elif re.search(r"\d+[.,]\d*[YMWDH]", text):
            why = " (only seconds may have a fraction)"
        elif "T" not in text and re.search(r"\d+[HS]", text):
            why = " (hours and seconds go after T, as in PT1H)"
        elif text.endswith("T"):
            why = " (T must be followed by hours, minutes or seconds)"
        else:
            why = ""
        raise ValueError(f"period {text!r} is not an ISO 8601 duration{why}: expected "
                         f"{_PERIOD_FORM}")
    ints = [int(g) if g else 0 for g in m.groups()[:6]]
    seconds = float(m.group(7).replace(",", ".")) if m.group(7) else 0.0
    period = Period(text=text, years=ints[0], months=ints[1], weeks=ints[2], days=ints[3],
                    hours=ints[4], minutes=ints[5], seconds=seconds)
    if period.average_seconds <= 0:
        raise ValueError(f"period {text!r} is zero: a schedule must move forward")
    return period


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalSchedule:
    text: str
    repeats: int | None  # None: unlimited (`R/...`)
    # As written: aware (`Z` or an offset: a fixed instant) or naive (a wall time in
    # `time_zone`).
    start: datetime.datetime
    period: Period
    time_zone: str = "UTC"

    def fire(self, k: int) -> float:
        """The k-th fire time (from 0), whatever `repeats` says; raises OverflowError past
        the calendar's end (year 9999)."""
        p, s = self.period, self.start
        year, month0 = divmod(s.month - 1 + k * (p.years * 12 + p.months), 12)
        year += s.year
        if not datetime.MINYEAR <= year <= datetime.MAXYEAR:
            raise OverflowError("past the end of the calendar")
        day = min(s.day, calendar.monthrange(year, month0 + 1)[1])
        wall = s.replace(year=year, month=month0 + 1, day=day) + \
            datetime.timedelta(days=k * (p.weeks * 7 + p.days))
        base = wall.timestamp() if wall.tzinfo is not None else \
            _resolve(load_zone(self.time_zone), wall)
        return base + k * p.exact_seconds

    def next_after(self, t: float) -> float | None:
        if self.repeats == 0:
            return None
        try:
            first = self.fire(0)
            if t < first:
                return first
            # An estimate from the mean period, then exact steps: months and offset changes
            # move it by a few at most.
            k = max(1, int((t - first) // self.period.average_seconds))
            while k > 1 and self.fire(k - 1) > t:
                k -= 1
            while self.fire(k) <= t:
                k += 1
            if self.repeats is not None and k >= self.repeats:
                return None
            return self.fire(k)
        except (OverflowError, ValueError):  # past the calendar's end
            return None


def parse_repeating_interval(text: str, time_zone: str = "UTC") -> IntervalSchedule:
    """`R[n]/<start>/<period>` (ISO 8601, as Chronos uses it); raises ValueError saying
    which part is wrong."""
    parts = text.strip().split("/")
    if len(parts) != 3:
        raise ValueError("expected R[n]/<start>/<period> such as R/2026-01-01T00:00:00Z/PT1H, "
                         f"found {len(parts)} part{'s' if len(parts) != 1 else ''}")
    if not re.fullmatch(r"R\d*", parts[0]):
        raise ValueError(f"repeat count {parts[0]!r} must be R (no end) or R and a whole "
                         "number, such as R5")
    repeats = int(parts[0][1:]) if len(parts[0]) > 1 else None
    try:
        start = datetime.datetime.fromisoformat(parts[1])
    except ValueError:
        raise ValueError(f"start {parts[1]!r} is not an ISO 8601 date and time such as "
                         "2026-01-01T00:00:00Z") from None
    load_zone(time_zone)
    return IntervalSchedule(text=text, repeats=repeats, start=start,
                            period=parse_period(parts[2]), time_zone=time_zone)
