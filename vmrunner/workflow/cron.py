"""POSIX cron expressions as GitHub's ``on.schedule`` accepts them (UTC, five fields).

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of week
(0-6 or SUN-SAT, 0 is Sunday). Each field is ``*`` or a comma-separated list of values and
ranges (``1-5``), each optionally stepped (``*/15``, ``0-30/10``, ``5/15`` meaning ``5-59/15``).
The ``@daily``-style shortcuts are rejected, as GitHub rejects them.

Day rule (POSIX): when both the day-of-month and the day-of-week field are restricted (not
``*``), a day matches if EITHER matches; when one is ``*``, only the other one counts.

GitHub never runs a schedule more often than every ``GITHUB_MIN_INTERVAL_MINUTES`` minutes. We
accept such expressions (GitHub does too, it just runs them less often) and expose
``CronSchedule.min_interval_minutes`` so the scheduler can honour the same floor.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

from vmrunner.errors import Diagnostic, FilterError

GITHUB_MIN_INTERVAL_MINUTES = 5

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MONTH_LENGTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # longest, February in leap years
_SEARCH_DAYS = 366 * 12  # any valid schedule fires within this (Feb 29 can skip 8 years)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i

    def expected(self) -> str:
        text = f"a number {self.low}-{self.high}"
        if self.names:
            text += f" or a name {self.names[0]}-{self.names[-1]}"
        return text


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _WEEKDAYS),
)


class _CronInvalid(Exception):
    """Internal: why an expression is not valid."""


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron expression: the allowed values of each field.

    ``day_of_month_star``/``day_of_week_star`` record whether that field was written ``*``,
    which decides between the POSIX AND and OR rules for days (see the module docstring).
    """

    source: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    day_of_month_star: bool
    day_of_week_star: bool

    @classmethod
    def parse(cls, expr: str) -> CronSchedule:
        """Parse ``expr``; raise ``FilterError`` saying which field is wrong and why."""
        try:
            return _parse(expr)
        except _CronInvalid as invalid:
            raise FilterError(Diagnostic("", 0, 0, str(invalid))) from None

    def matches(self, when: dt.datetime) -> bool:
        """Whether the schedule fires in the minute of ``when`` (naive means UTC)."""
        when = _as_utc(when)
        return when.minute in self.minutes and when.hour in self.hours and self._day_matches(when)

    def next_after(self, when: dt.datetime) -> dt.datetime:
        """The first minute strictly after ``when`` at which the schedule fires, in UTC."""
        start = _as_utc(when).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = start.replace(hour=0, minute=0)
        for _ in range(_SEARCH_DAYS):
            if day.month in self.months and self._day_matches(day):
                earliest = (start.hour, start.minute) if day.date() == start.date() else (0, 0)
                for hour in hours:
                    for minute in minutes:
                        if (hour, minute) >= earliest:
                            return day.replace(hour=hour, minute=minute)
            day += dt.timedelta(days=1)
        raise FilterError(Diagnostic("", 0, 0, f"cron {self.source!r} never fires"))

    @property
    def min_interval_minutes(self) -> int:
        """The shortest gap between two runs on days that match (a lower bound across days)."""
        times = sorted(hour * 60 + minute for hour in self.hours for minute in self.minutes)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        gaps.append(24 * 60 - times[-1] + times[0])
        return min(gaps)

    def _day_matches(self, day: dt.datetime) -> bool:
        by_month = day.day in self.days_of_month
        by_week = day.isoweekday() % 7 in self.days_of_week
        if self.day_of_month_star or self.day_of_week_star:
            return by_month and by_week
        return by_month or by_week


def validate_cron(expr: str) -> str | None:
    """What is wrong with ``expr`` as a GitHub schedule, or ``None`` when it is valid."""
    try:
        _parse(expr)
    except _CronInvalid as invalid:
        return str(invalid)
    return None


def _as_utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _parse(expr: str) -> CronSchedule:
    if not isinstance(expr, str):
        raise _CronInvalid(f"cron must be a string, got {type(expr).__name__}")
    if expr.strip().startswith("@"):
        raise _CronInvalid(
            f"cron {expr.strip()!r}: GitHub does not support @-shortcuts; write the five fields"
        )
    parts = expr.split()
    if len(parts) != len(_FIELDS):
        raise _CronInvalid(
            f"cron {expr!r} has {len(parts)} field{'s' if len(parts) != 1 else ''}; expected 5: "
            "minute hour day-of-month month day-of-week"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, field) for text, field in zip(parts, _FIELDS, strict=True)
    )
    schedule = CronSchedule(
        expr,
        minutes,
        hours,
        days,
        months,
        weekdays,
        day_of_month_star=parts[2] == "*",
        day_of_week_star=parts[4] == "*",
    )
    if schedule.day_of_week_star and not any(
        min(schedule.days_of_month) <= _MONTH_LENGTH[month - 1] for month in schedule.months
    ):
        raise _CronInvalid(
            f"cron {expr!r} never fires: day-of-month {parts[2]} does not occur in month {parts[3]}"
        )
    return schedule


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        try:
            values.update(_parse_item(item, field))
        except _CronInvalid as invalid:
            where = f" in {text!r}" if item != text else ""
            raise _CronInvalid(f"{field.name} field: {item!r}{where}: {invalid}") from None
    return frozenset(values)


def _parse_item(item: str, field: _Field) -> range:
    if not item:
        raise _CronInvalid(f"empty list item; expected {field.expected()}, a range or *")
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdecimal() or int(step_text) < 1:
            raise _CronInvalid(
                f"the step after / must be a whole number of at least 1, got {step_text!r}"
            )
        step = int(step_text)
    if base == "*":
        return range(field.low, field.high + 1, step)
    low_text, dash, high_text = base.partition("-")
    low = _value(low_text, field)
    if not dash:
        return range(low, (field.high if slash else low) + 1, step)
    high = _value(high_text, field)
    if low > high:
        raise _CronInvalid(f"range {base} goes backwards; write the smaller value first")
    return range(low, high + 1, step)


def _value(text: str, field: _Field) -> int:
    if text.isdecimal() and text.isascii():
        number = int(text)
        if field.low <= number <= field.high:
            return number
        hint = " (0 is Sunday)" if field.name == "day-of-week" and number == 7 else ""
        raise _CronInvalid(f"{number} is out of range {field.low}-{field.high}{hint}")
    if text.upper() in field.names:
        return field.low + field.names.index(text.upper())
    raise _CronInvalid(f"expected {field.expected()}, a range or *, got {text!r}")
