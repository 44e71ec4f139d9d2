"""The overview: a window's totals, its revenue, cost and margin day by day, and MRR.

What the dashboard's first page and ``modelmint report`` lead with. Everything comes
from the rollups (``breakdown`` by day) and the subscriptions (fees, MRR), never
from raw usage rows, so it stays fast however much usage is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from modelmint.analytics.breakdown import BreakdownRow, Dimension, breakdown
from modelmint.analytics.currencies import report_currency
from modelmint.analytics.recurring import RecurringRevenue, recurring_revenue
from modelmint.billing.periods import Period

__all__ = ["Overview", "overview"]


@dataclass(frozen=True, slots=True)
class Overview:
    """A window in one currency: ``total`` (every measure), one row per UTC day of the
    window in ``days`` (zeros included, so charts have no gaps), and the MRR at the
    window's end (or now, if sooner)."""

    period: Period
    currency: str
    total: BreakdownRow
    days: tuple[BreakdownRow, ...]
    recurring: RecurringRevenue


def overview(
    session: Session, period: Period, *, currency: str | None = None, now: datetime | None = None
) -> Overview:
    """Returns the ``Overview`` of ``period``: totals, daily rows and recurring revenue."""
    code = report_currency(session, currency)
    by_day = breakdown(session, period, Dimension.DAY, currency=code)
    at = period.end if now is None else min(period.end, now)
    return Overview(
        period=period,
        currency=code,
        total=by_day.total,
        days=by_day.rows,
        recurring=recurring_revenue(session, at, currency=code),
    )
