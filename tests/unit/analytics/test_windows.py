"""Which rollup rows a window reads: whole days from the daily rollup, ragged hours hourly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelmint.analytics.windows import ceil_hour, days_of, hours_in, split
from modelmint.billing.periods import Period


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def covered_hours(window: Period) -> set[datetime]:
    parts = split(window)
    hours: set[datetime] = set()
    if parts.days_from is not None and parts.days_to is not None:
        moment = parts.days_from
        while moment < parts.days_to:
            hours.add(moment)
            moment += timedelta(hours=1)
    for start, end in parts.hours:
        moment = start
        while moment < end:
            hours.add(moment)
            moment += timedelta(hours=1)
    return hours


def test_a_month_is_read_from_whole_days_only() -> None:
    parts = split(Period.month(2026, 11))
    assert (parts.days_from, parts.days_to, parts.hours) == (
        at(1),
        datetime(2026, 12, 1, tzinfo=UTC),
        (),
    )


def test_ragged_edges_are_read_by_the_hour_and_nothing_twice() -> None:
    window = Period(at(3, 5, 30), at(9, 17, 10))
    parts = split(window)
    assert (parts.days_from, parts.days_to) == (at(4), at(9))
    assert parts.hours == ((at(3, 6), at(4)), (at(9), at(9, 18)))
    expected = {at(3, 6) + timedelta(hours=h) for h in range(hours_in(window))}
    assert covered_hours(window) == expected


def test_a_window_inside_one_day_or_one_hour() -> None:
    assert split(Period(at(3, 1), at(3, 4))).hours == ((at(3, 1), at(3, 4)),)
    assert split(Period(at(3, 1, 10), at(3, 1, 50))).hours == ()  # no hour starts inside it
    assert hours_in(Period(at(3, 1, 10), at(3, 1, 50))) == 0


def test_ceil_hour_and_days_of() -> None:
    assert ceil_hour(at(3, 1)) == at(3, 1)
    assert ceil_hour(at(3, 1, 1)) == at(3, 2)
    assert days_of(Period(at(3, 22), at(5, 1))) == [at(3), at(4), at(5)]
