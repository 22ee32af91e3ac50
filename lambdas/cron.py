"""When an EventBridge Scheduler schedule fires: its cron and rate expressions, evaluated in a time zone.

The rules are EventBridge Scheduler's, from "Schedule types on EventBridge Scheduler"
(https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html):

- ``cron(minutes hours day-of-month month day-of-week year)``: minutes 0-59, hours 0-23,
  day-of-month 1-31 (``L`` last day, ``nW`` the weekday nearest day n, ``LW`` the last weekday),
  month 1-12 or JAN-DEC, day-of-week 1-7 or SUN-SAT (1 = Sunday; ``L`` alone = Saturday, ``nL``
  the last such day of the month, ``n#k`` the k-th such day), year 1970-2199; ``,`` ``-`` ``*``
  ``/``; exactly one of day-of-month and day-of-week is ``?``.
- The expression is evaluated on the wall clock of the schedule's time zone
  (``ScheduleExpressionTimezone``). Daylight saving time: "When the time shifts forward in
  Spring, your schedule invocation gets skipped if the cron expression falls on a non-existent
  date and time. When the time shifts back in the Fall, your schedule runs only once" (the
  first of the two instants, which is what this module assumes).
- ``rate(value unit)``: every value minutes, hours or days from when the schedule was created
  (its phase is not in the template, so only its interval is known here).

Stdlib only: the bundler puts this module into every function's package beside ``contract.py``;
config uses it at synth and ``pipeline-ops`` to show the next runs.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from typing import Callable, Iterator
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
MONTHS = {name: i for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
#: 1 = Sunday, as EventBridge counts.
WEEKDAYS = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)}
_RATE_RE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_MINUTES = {"minute": 1, "hour": 60, "day": 1440}
#: How far ahead fire times are looked for before a schedule counts as never firing again.
HORIZON_DAYS = 366 * 5


class CronError(ValueError):
    """A schedule expression EventBridge Scheduler would not accept; the message says which part."""


def _aws_weekday(day: dt.date) -> int:
    return (day.isoweekday() % 7) + 1  # Monday=1..Sunday=7 -> Sunday=1..Saturday=7


def _value(token: str, low: int, high: int, names: dict[str, int], what: str) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        raise CronError(f"{what} {token!r} is not a number{' or a name' if names else ''}")
    number = int(token)
    if not low <= number <= high:
        raise CronError(f"{what} {number} is outside {low}-{high}")
    return number


def _set(field: str, low: int, high: int, what: str, names: dict[str, int] | None = None) -> frozenset[int]:
    """The values a plain field (``*``, ``a``, ``a-b``, ``a/n``, ``a-b/n``, lists of these) stands for."""
    names = names or {}
    out: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{what} step {step_text!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, low, high, names, what), _value(b, low, high, names, what)
            if end < start:
                raise CronError(f"{what} range {base!r} runs backwards")
        else:
            start = _value(base, low, high, names, what)
            end = high if step_text else start
        out.update(range(start, end + 1, step))
    if not out:
        raise CronError(f"{what} {field!r} matches nothing")
    return frozenset(out)


def _day_of_month(field: str) -> Callable[[dt.date], bool]:
    if field == "?":
        return lambda day: True
    if field == "L":
        return lambda day: day.day == calendar.monthrange(day.year, day.month)[1]
    if field == "LW":
        def last_weekday(day: dt.date) -> bool:
            last = dt.date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
            while last.weekday() >= 5:
                last -= dt.timedelta(days=1)
            return day == last
        return last_weekday
    match = re.fullmatch(r"(\d{1,2})W", field)
    if match:
        target = _value(match.group(1), 1, 31, {}, "day-of-month")

        def nearest_weekday(day: dt.date) -> bool:
            last = calendar.monthrange(day.year, day.month)[1]
            if target > last:
                return False
            wanted = dt.date(day.year, day.month, target)
            if wanted.weekday() == 5:  # Saturday: the Friday before, unless that is last month
                wanted = wanted - dt.timedelta(days=1) if target > 1 else wanted + dt.timedelta(days=2)
            elif wanted.weekday() == 6:  # Sunday: the Monday after, unless that is next month
                wanted = wanted + dt.timedelta(days=1) if target < last else wanted - dt.timedelta(days=2)
            return day == wanted
        return nearest_weekday
    days = _set(field, 1, 31, "day-of-month")
    return lambda day: day.day in days


def _day_of_week(field: str) -> Callable[[dt.date], bool]:
    if field == "?":
        return lambda day: True
    if field == "L":
        return lambda day: _aws_weekday(day) == 7
    match = re.fullmatch(r"(\w+)L", field)
    if match:
        weekday = _value(match.group(1), 1, 7, WEEKDAYS, "day-of-week")
        last = lambda day: day.day + 7 > calendar.monthrange(day.year, day.month)[1]  # noqa: E731
        return lambda day: _aws_weekday(day) == weekday and last(day)
    match = re.fullmatch(r"(\w+)#(\d)", field)
    if match:
        weekday = _value(match.group(1), 1, 7, WEEKDAYS, "day-of-week")
        nth = int(match.group(2))
        if not 1 <= nth <= 5:
            raise CronError(f"day-of-week {field!r}: the week number after '#' must be 1-5")
        return lambda day: _aws_weekday(day) == weekday and (day.day - 1) // 7 + 1 == nth
    days = _set(field, 1, 7, "day-of-week", WEEKDAYS)
    return lambda day: _aws_weekday(day) in days


@dataclass(frozen=True)
class Cron:
    """A parsed ``cron(...)`` expression."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    years: frozenset[int]
    day_of_month: Callable[[dt.date], bool]
    day_of_week: Callable[[dt.date], bool]

    def runs_on(self, day: dt.date) -> bool:
        return (day.year in self.years and day.month in self.months
                and self.day_of_month(day) and self.day_of_week(day))

    def fires_after(self, after: dt.datetime, zone: ZoneInfo, *, horizon_days: int = HORIZON_DAYS
                    ) -> Iterator[dt.datetime]:
        """Every fire time (aware, UTC) strictly after ``after``, in order, within ``horizon_days``."""
        after = after.astimezone(UTC)
        day = after.astimezone(zone).date() - dt.timedelta(days=1)  # a fold can put a fire before local midnight
        end = day + dt.timedelta(days=horizon_days)
        while day <= end:
            if day.year > max(self.years):
                return
            if self.runs_on(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        fire = _instant(dt.datetime(day.year, day.month, day.day, hour, minute), zone)
                        if fire is not None and fire > after:
                            yield fire
            day += dt.timedelta(days=1)


    def fires_before(self, before: dt.datetime, zone: ZoneInfo, *, horizon_days: int = HORIZON_DAYS
                     ) -> Iterator[dt.datetime]:
        """Every fire time (aware, UTC) at or before ``before``, newest first, within ``horizon_days``."""
        before = before.astimezone(UTC)
        day = before.astimezone(zone).date() + dt.timedelta(days=1)
        end = day - dt.timedelta(days=horizon_days)
        while day >= end:
            if day.year < min(self.years):
                return
            if self.runs_on(day):
                for hour in reversed(self.hours):
                    for minute in reversed(self.minutes):
                        fire = _instant(dt.datetime(day.year, day.month, day.day, hour, minute), zone)
                        if fire is not None and fire <= before:
                            yield fire
            day -= dt.timedelta(days=1)


def _instant(local: dt.datetime, zone: ZoneInfo) -> dt.datetime | None:
    """The UTC instant of a wall-clock time in ``zone``: None if the clock skips it (spring forward),
    the first of the two if it happens twice (fall back)."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) != local:
        return None
    return first


def parse_cron(expression: str) -> Cron:
    if not (expression.startswith("cron(") and expression.endswith(")")):
        raise CronError("expected 'cron(minutes hours day-of-month month day-of-week year)'")
    fields = expression[5:-1].split()
    if len(fields) != 6:
        raise CronError("cron() takes 6 fields: minutes hours day-of-month month day-of-week year")
    minutes, hours, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise CronError("exactly one of day-of-month and day-of-week must be '?'")
    return Cron(
        expression=expression,
        minutes=tuple(sorted(_set(minutes, 0, 59, "minute"))),
        hours=tuple(sorted(_set(hours, 0, 23, "hour"))),
        months=_set(month, 1, 12, "month", MONTHS),
        years=_set(year, 1970, 2199, "year"),
        day_of_month=_day_of_month(dom),
        day_of_week=_day_of_week(dow),
    )


def rate_minutes(expression: str) -> int | None:
    """The interval of a ``rate(...)`` expression in minutes; None if it is not one."""
    match = _RATE_RE.match(expression)
    if not match:
        return None
    return int(match.group(1)) * _UNIT_MINUTES[match.group(2).rstrip("s")]


def check_expression(expression: str) -> None:
    """Raise :class:`CronError` unless ``expression`` is a valid ``rate(...)`` or ``cron(...)``."""
    match = _RATE_RE.match(expression)
    if match:
        n, unit = int(match.group(1)), match.group(2)
        if n < 1:
            raise CronError("a rate must be at least 1")
        if (n == 1) != (not unit.endswith("s")):
            raise CronError(f"use '{unit.rstrip('s')}' for 1 and '{unit.rstrip('s')}s' otherwise")
        return
    if expression.startswith("cron("):
        parse_cron(expression)
        return
    raise CronError("expected 'rate(N unit)' or 'cron(min hour day month weekday year)'")


def next_fires(expression: str, zone_name: str, after: dt.datetime, count: int = 1) -> list[dt.datetime]:
    """The next ``count`` fire times (UTC) of a cron expression in ``zone_name`` after ``after``."""
    out = []
    for fire in parse_cron(expression).fires_after(after, ZoneInfo(zone_name)):
        out.append(fire)
        if len(out) == count:
            break
    return out


def last_fire(expression: str, zone_name: str, before: dt.datetime) -> dt.datetime | None:
    """The latest fire time (UTC) at or before ``before``, if any within the horizon."""
    return next(parse_cron(expression).fires_before(before, ZoneInfo(zone_name)), None)


def fires_between(expression: str, zone_name: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Fire times (UTC) in ``(start, end]``."""
    out = []
    for fire in parse_cron(expression).fires_after(start, ZoneInfo(zone_name)):
        if fire > end:
            break
        out.append(fire)
    return out


def shortest_interval(expression: str, zone_name: str, *, at_least: dt.timedelta,
                      start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=UTC), days: int = 400) -> dt.timedelta | None:
    """The shortest time between two runs within ``days`` from ``start`` if it is under ``at_least``, else None.

    A rate's interval is its rate; a cron's is measured over more than a year of its fire times in
    its zone, so daylight saving days (23 or 25 hours) count."""
    minutes = rate_minutes(expression)
    if minutes is not None:
        interval = dt.timedelta(minutes=minutes)
        return interval if interval < at_least else None
    previous = None
    shortest = None
    end = start + dt.timedelta(days=days)
    for fire in parse_cron(expression).fires_after(start, ZoneInfo(zone_name), horizon_days=days):
        if fire > end:
            break
        if previous is not None and fire - previous < at_least:
            gap = fire - previous
            shortest = gap if shortest is None or gap < shortest else shortest
            if gap <= dt.timedelta(minutes=1):
                break
        previous = fire
    return shortest
