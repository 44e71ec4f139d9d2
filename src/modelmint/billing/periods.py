"""Billing periods: calendar months in UTC, as half-open spans ``[start, end)``.

``Period.month(2026, 11)`` is ``[2026-11-01T00:00Z, 2026-12-01T00:00Z)``: an instant
belongs to exactly one period, and a period's length is its real length (28 to 31
days), so proration is by the actual share of *this* month. All datetimes in
billing must be timezone-aware and are normalised to UTC; a naive datetime is
refused, because guessing its zone would move usage between months.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modelmint.billing.errors import InvalidPeriod

__all__ = ["Period", "utc"]

_MONTH = re.compile(r"(\d{4})-(\d{2})")


def utc(instant: datetime, what: str = "instant") -> datetime:
    """``instant`` in UTC; a naive datetime raises ``InvalidPeriod``."""
    if not isinstance(instant, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise InvalidPeriod(f"{what} {instant.isoformat()} has no timezone; billing needs UTC")
    return instant.astimezone(UTC)


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A span of time ``[start, end)`` in UTC; billing periods are calendar months."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start, "period start"))
        object.__setattr__(self, "end", utc(self.end, "period end"))
        if self.end <= self.start:
            raise InvalidPeriod(
                f"period end {self.end.isoformat()} is not after start {self.start.isoformat()}"
            )

    @classmethod
    def month(cls, year: int, month: int) -> Period:
        """The calendar month ``year-month`` in UTC."""
        if not 1 <= month <= 12:
            raise InvalidPeriod(f"month must be 1..12, got {month}")
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return cls(start, end)

    @classmethod
    def parse(cls, text: str) -> Period:
        """``"2026-11"`` -> that calendar month; ``InvalidPeriod`` for anything else."""
        match = _MONTH.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidPeriod(f"period {text!r} is not a month such as '2026-11'", param="period")
        return cls.month(int(match[1]), int(match[2]))

    @classmethod
    def containing(cls, instant: datetime) -> Period:
        """The calendar month that holds ``instant``."""
        moment = utc(instant)
        return cls.month(moment.year, moment.month)

    def next(self) -> Period:
        """The calendar month after this one (for a month period)."""
        return Period.containing(self.end)

    def shifted(self, months: int) -> Period:
        """The calendar month ``months`` after (or before) this one's start."""
        index = self.start.year * 12 + self.start.month - 1 + months
        return Period.month(index // 12, index % 12 + 1)

    def contains(self, instant: datetime) -> bool:
        return self.start <= utc(instant) < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def clip(self, start: datetime, end: datetime | None) -> Period | None:
        """The part of ``[start, end)`` inside this period (``end=None``: open), or None."""
        lower = max(self.start, utc(start, "start"))
        upper = self.end if end is None else min(self.end, utc(end, "end"))
        return Period(lower, upper) if lower < upper else None

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"
