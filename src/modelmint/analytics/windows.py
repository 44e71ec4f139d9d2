"""Time windows of reports: which rollup rows a span of time reads.

Reports take a ``billing.Period``: a calendar month (``Period.parse("2026-11")``) or
any span ``Period(start, end)``. Rollups hold whole hours, so a window counts the
hours that start inside it. Whole UTC days inside the window are read from the daily
rollup (24 times fewer rows); the hours at its ragged edges from the hourly one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modelmint.billing.periods import Period
from modelmint.clock import utcnow

__all__ = [
    "DAY",
    "HOUR",
    "Split",
    "ceil_hour",
    "current_month",
    "days_of",
    "hours_in",
    "split",
    "to_day",
    "to_hour",
]

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def to_hour(moment: datetime) -> datetime:
    """The UTC hour that holds ``moment``."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def to_day(moment: datetime) -> datetime:
    """The UTC day (midnight) that holds ``moment``."""
    return to_hour(moment).replace(hour=0)


def ceil_hour(moment: datetime) -> datetime:
    """The first UTC hour boundary at or after ``moment``."""
    floor = to_hour(moment)
    return floor if floor == moment else floor + HOUR


def _ceil_day(moment: datetime) -> datetime:
    floor = to_day(moment)
    return floor if floor == moment else floor + DAY


@dataclass(frozen=True, slots=True)
class Split:
    """Where a window's rows come from: days ``[days_from, days_to)`` from the daily
    rollup, and the hour ranges ``hours`` (half-open) from the hourly one."""

    days_from: datetime | None
    days_to: datetime | None
    hours: tuple[tuple[datetime, datetime], ...]


def split(window: Period) -> Split:
    """The daily and hourly parts of ``window`` (hours that start inside it)."""
    first, last = ceil_hour(window.start), ceil_hour(window.end)
    if first >= last:
        return Split(None, None, ())
    days_from, days_to = _ceil_day(first), to_day(last)
    if days_from >= days_to:
        return Split(None, None, ((first, last),))
    edges = tuple((a, b) for a, b in ((first, days_from), (days_to, last)) if a < b)
    return Split(days_from, days_to, edges)


def hours_in(window: Period) -> int:
    """How many rollup hours ``window`` covers."""
    first, last = ceil_hour(window.start), ceil_hour(window.end)
    return max(0, (last - first) // HOUR)


def days_of(window: Period) -> list[datetime]:
    """The UTC days ``window`` touches, in order."""
    days, day = [], to_day(window.start)
    while day < window.end:
        days.append(day)
        day += DAY
    return days


def current_month(now: datetime | None = None) -> Period:
    """The calendar month (UTC) that holds ``now`` (default: the present)."""
    return Period.containing(now or utcnow())
