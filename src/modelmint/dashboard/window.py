"""The time window a report page shows, chosen in its query string.

``?period=2026-11`` is a calendar month; ``?days=7`` the last seven days up to the
end of the current hour; nothing means the last 30 days. Custom spans use
``?start=2026-11-01&end=2026-11-15`` (dates, UTC; the end day is included).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from modelmint.billing.periods import Period
from modelmint.errors import InvalidRequest

__all__ = ["DAY_CHOICES", "DEFAULT_DAYS", "ReportWindow", "report_window"]

DEFAULT_DAYS = 30
DAY_CHOICES = (1, 7, 30, 90, 365)
_MAX_DAYS = 3 * 366


@dataclass(frozen=True, slots=True)
class ReportWindow:
    """A window and how the page's filter form shows it."""

    period: Period
    label: str
    month: str = ""
    days: int | None = None
    start: str = ""
    end: str = ""

    def query(self) -> dict[str, str]:
        """The query parameters that select this window again (for links and pagers)."""
        if self.month:
            return {"period": self.month}
        if self.start:
            return {"start": self.start, "end": self.end}
        return {"days": str(self.days)}


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date such as 2026-11-01", param=name) from None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def report_window(
    now: datetime,
    *,
    period: str | None = None,
    days: int | None = None,
    start: str | None = None,
    end: str | None = None,
) -> ReportWindow:
    """The window the query asks for (a month, dates, or the last ``days`` days)."""
    if period:
        month = Period.parse(period)
        return ReportWindow(month, f"{month.start:%B %Y}", month=f"{month.start:%Y-%m}")
    if start or end:
        first = _date(start or "", "start")
        last = _date(end or "", "end") if end else now.date()
        if last < first or (last - first).days >= _MAX_DAYS:
            raise InvalidRequest(f"the end must follow the start, within {_MAX_DAYS} days")
        span = Period(_midnight(first), _midnight(last) + timedelta(days=1))
        label = f"{first.isoformat()} to {last.isoformat()}"
        return ReportWindow(span, label, start=first.isoformat(), end=last.isoformat())
    count = days or DEFAULT_DAYS
    if not 1 <= count <= _MAX_DAYS:
        raise InvalidRequest(f"days must be 1..{_MAX_DAYS}", param="days")
    # Up to the end of the current hour, so this hour's traffic is in the picture.
    end_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    span = Period(end_hour - timedelta(days=count), end_hour)
    return ReportWindow(span, f"last {count} day{'s' if count != 1 else ''}", days=count)
