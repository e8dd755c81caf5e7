"""Cron schedules as GitHub accepts them: validation messages, matching and the next run."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmrunner.errors import FilterError
from vmrunner.workflow.cron import GITHUB_MIN_INTERVAL_MINUTES, CronSchedule, validate_cron

UTC = dt.UTC


def runs(expr: str, start: dt.datetime, count: int) -> list[dt.datetime]:
    schedule = CronSchedule.parse(expr)
    found = []
    for _ in range(count):
        start = schedule.next_after(start)
        found.append(start)
    return found


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_github_docs_twice_a_day() -> None:
    # "30 5,17 * * *": every day at 5:30 and 17:30 UTC
    assert runs("30 5,17 * * *", at("2026-03-01 06:00"), 3) == [
        at("2026-03-01 17:30"),
        at("2026-03-02 05:30"),
        at("2026-03-02 17:30"),
    ]


def test_github_docs_monday_and_wednesday() -> None:
    found = runs("30 5 * * 1,3", at("2026-11-26 11:00"), 4)  # a Thursday
    assert [run.strftime("%a %H:%M") for run in found] == ["Mon 05:30", "Wed 05:30"] * 2
    assert found[0] == at("2026-11-30 05:30")


def test_either_day_field_matches_when_both_are_restricted() -> None:
    # POSIX: "0 12 13 * 5" runs on every 13th AND on every Friday
    found = runs("0 12 13 * 5", at("2026-01-01 00:00"), 4)
    assert found == [
        at("2026-01-02 12:00"),
        at("2026-01-09 12:00"),
        at("2026-01-13 12:00"),
        at("2026-01-16 12:00"),
    ]


def test_a_star_day_field_leaves_the_other_in_charge() -> None:
    assert runs("0 0 * * MON", at("2026-11-26 00:00"), 1) == [at("2026-11-30 00:00")]
    assert runs("0 0 1 * *", at("2026-11-26 00:00"), 1) == [at("2026-12-01 00:00")]


def test_names_ranges_steps_and_lists() -> None:
    schedule = CronSchedule.parse("0-30/10 */6 1,15 jan-Mar Mon-fri")
    assert schedule.minutes == {0, 10, 20, 30}
    assert schedule.hours == {0, 6, 12, 18}
    assert schedule.days_of_month == {1, 15}
    assert schedule.months == {1, 2, 3}
    assert schedule.days_of_week == {1, 2, 3, 4, 5}
    assert CronSchedule.parse("5/20 * * * *").minutes == {5, 25, 45}
    assert CronSchedule.parse("0 0 * * SUN,sat").days_of_week == {0, 6}


def test_february_29th_waits_for_a_leap_year() -> None:
    assert runs("0 0 29 2 *", at("2097-01-01 00:00"), 1) == [at("2104-02-29 00:00")]


def test_next_after_is_strictly_later_and_ignores_seconds() -> None:
    schedule = CronSchedule.parse("*/5 * * * *")
    assert schedule.next_after(at("2026-01-01 00:05")) == at("2026-01-01 00:10")
    assert schedule.next_after(at("2026-01-01 00:04:59.9")) == at("2026-01-01 00:05")
    assert schedule.next_after(at("2026-12-31 23:59")) == at("2027-01-01 00:00")


def test_naive_times_are_utc_and_aware_ones_are_converted() -> None:
    schedule = CronSchedule.parse("0 12 * * *")
    assert schedule.matches(dt.datetime(2026, 5, 1, 12, 0))
    paris = dt.timezone(dt.timedelta(hours=2))
    assert schedule.matches(dt.datetime(2026, 5, 1, 14, 0, tzinfo=paris))
    assert not schedule.matches(dt.datetime(2026, 5, 1, 12, 0, tzinfo=paris))
    assert schedule.next_after(dt.datetime(2026, 5, 1, 13, 0, tzinfo=paris)).tzinfo == UTC


@pytest.mark.parametrize(
    ("expr", "fragments"),
    [
        ("@daily", ["@-shortcuts"]),
        ("0 0 * *", ["4 fields", "expected 5"]),
        ("0 0 * * * *", ["6 fields"]),
        ("", ["0 fields"]),
        ("60 * * * *", ["minute field", "60 is out of range 0-59"]),
        ("0 24 * * *", ["hour field", "out of range 0-23"]),
        ("0 0 0 * *", ["day-of-month field", "out of range 1-31"]),
        ("0 0 * 13 *", ["month field", "out of range 1-12"]),
        ("0 0 * * 7", ["day-of-week field", "out of range 0-6", "0 is Sunday"]),
        ("0 0 * FOO *", ["month field", "JAN-DEC", "'FOO'"]),
        ("0 0 * * MON-", ["day-of-week field", "SUN-SAT"]),
        ("x * * * *", ["minute field", "got 'x'"]),
        ("30-10 * * * *", ["minute field", "goes backwards"]),
        ("*/0 * * * *", ["minute field", "step", "at least 1"]),
        ("*/x * * * *", ["step"]),
        ("1,,2 * * * *", ["minute field", "empty list item"]),
        ("0 0 30 2 *", ["never fires", "day-of-month 30"]),
        ("0 0 31 4,6,9,11 *", ["never fires"]),
        ("0 0 * JAN MON", None),
        ("0 0 30 2 MON", None),  # OR rule: still runs on Mondays in February
    ],
)
def test_validation_says_which_field_and_what_was_expected(
    expr: str, fragments: list[str] | None
) -> None:
    message = validate_cron(expr)
    if fragments is None:
        assert message is None
        return
    assert message is not None
    for fragment in fragments:
        assert fragment in message
    with pytest.raises(FilterError) as raised:
        CronSchedule.parse(expr)
    assert raised.value.diagnostics[0].message == message


def test_frequent_schedules_are_accepted_and_their_interval_is_exposed() -> None:
    every_minute = CronSchedule.parse("* * * * *")
    assert every_minute.min_interval_minutes == 1 < GITHUB_MIN_INTERVAL_MINUTES
    assert CronSchedule.parse("*/15 * * * *").min_interval_minutes == 15
    assert CronSchedule.parse("58,3 * * * *").min_interval_minutes == 5  # across the hour
    assert CronSchedule.parse("0 9 * * *").min_interval_minutes == 24 * 60


@given(st.text())
def test_any_text_yields_a_message_or_a_schedule(text: str) -> None:
    message = validate_cron(text)
    if message is None:
        assert isinstance(CronSchedule.parse(text), CronSchedule)
    else:
        assert isinstance(message, str)
        assert message
        with pytest.raises(FilterError):
            CronSchedule.parse(text)


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    single = number.map(str)
    span = st.tuples(number, number).map(lambda pair: f"{min(pair)}-{max(pair)}")
    step = st.tuples(st.sampled_from(["*", f"{low}-{high}"]), st.integers(1, high - low + 1)).map(
        lambda pair: f"{pair[0]}/{pair[1]}"
    )
    item = st.one_of(single, span, step)
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


# Day fields stay within "every day" or "some weekdays", so the next run is at most a week away
# and can be checked minute by minute.
_FREQUENT = st.tuples(_field(0, 59), _field(0, 23), _field(0, 6)).map(
    lambda f: f"{f[0]} {f[1]} * * {f[2]}"
)
_WHEN = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2090, 1, 1))


@settings(max_examples=60, deadline=None)
@given(_FREQUENT, _WHEN)
def test_next_after_is_the_first_matching_minute(expr: str, when: dt.datetime) -> None:
    schedule = CronSchedule.parse(expr)
    found = schedule.next_after(when)
    assert found > when.replace(tzinfo=UTC)
    assert schedule.matches(found)
    minute = when.replace(second=0, microsecond=0, tzinfo=UTC) + dt.timedelta(minutes=1)
    while minute < found:
        assert not schedule.matches(minute)
        minute += dt.timedelta(minutes=1)


@settings(max_examples=60, deadline=None)
@given(st.tuples(_field(0, 59), _field(0, 23), _field(1, 31), _field(1, 12), _field(0, 6)), _WHEN)
def test_next_run_of_any_generated_schedule_matches(
    fields: tuple[str, ...], when: dt.datetime
) -> None:
    expr = " ".join(fields)
    if validate_cron(expr) is not None:
        assert "never fires" in (validate_cron(expr) or "")
        return
    schedule = CronSchedule.parse(expr)
    found = schedule.next_after(when)
    assert found > when.replace(tzinfo=UTC)
    assert schedule.matches(found)
    assert schedule.next_after(found - dt.timedelta(minutes=1)) == found
