"""POSIX cron expressions as GitHub's ``on.schedule`` accepts them (UTC, five fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed cron expression: the allowed values of each field.

    ``day_of_month_star``/``day_of_week_star`` record whether the field was ``*`` (or ``*/n``
    ... only ``*``): POSIX runs a job when either day field matches, unless one of them is ``*``.
    """

    source: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]
    day_of_month_star: bool
    day_of_week_star: bool
