"""Growth and churn by monthly cohort.

An organisation's cohort is the calendar month of its first activity: its first
usage (the daily rollup) or the start of its first paid subscription, whichever
came first. It is active in a month when it used a model or accrued a fixed fee
then. For each month of the report:

* ``active``, ``new`` (first active that month), ``churned`` (active the month
  before, not this one), churn rate = churned / active the month before;
* revenue (usage charges + accrued fees) and its growth on the month before.

And for each cohort that starts inside the report, how many of its organisations
were active, and what they paid, in each month since (a retention triangle).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelmint.analytics.currencies import report_currency
from modelmint.analytics.fees import accrue, fee_spans
from modelmint.analytics.ratios import percent, ratio
from modelmint.analytics.rollups import read_sums
from modelmint.billing.exact import EXACT, exact_sum
from modelmint.billing.periods import Period, utc
from modelmint.billing.store.reporting import subscription_starts
from modelmint.clock import utcnow
from modelmint.storage.tables import AnalyticsUsageDaily

__all__ = ["Cohort", "CohortReport", "MonthGrowth", "cohorts"]

_ZERO = Decimal(0)
# The plan kinds whose subscription makes an organisation a paying one from its start.
_PAID_KINDS = ("subscription", "enterprise")


@dataclass(frozen=True, slots=True)
class Cohort:
    """Organisations first active in ``month`` (``YYYY-MM``): how many were active, and
    their revenue, in each month from that one on (index 0 = the cohort's own month)."""

    month: str
    size: int
    active: tuple[int, ...]
    revenue: tuple[Decimal, ...]


@dataclass(frozen=True, slots=True)
class MonthGrowth:
    """One month of the report: organisations active, new and churned, and revenue."""

    month: str
    active: int
    new: int
    churned: int
    revenue: Decimal
    churn_rate: Decimal | None  # churned / active the month before (4 decimals)
    revenue_growth_pct: Decimal | None  # on the month before (2 decimals)


@dataclass(frozen=True, slots=True)
class CohortReport:
    """``months`` months up to and including the one that holds ``until``. ``earlier``
    counts organisations active in the report whose cohort precedes it."""

    currency: str
    months: tuple[str, ...]
    cohorts: tuple[Cohort, ...]
    growth: tuple[MonthGrowth, ...]
    earlier: int


def _label(month: Period) -> str:
    return f"{month.start:%Y-%m}"


def _first_months(session: Session, currency: str) -> dict[str, str]:
    """Organisation id -> the month of its first usage or first paid subscription."""
    first: dict[str, datetime] = {}
    usage = select(AnalyticsUsageDaily.organization_id, func.min(AnalyticsUsageDaily.day))
    for org, day in session.execute(usage.group_by(AnalyticsUsageDaily.organization_id)):
        first[org] = utc(day)
    for org, starts in subscription_starts(session, currency, _PAID_KINDS):
        if org not in first or starts < first[org]:
            first[org] = starts
    return {org: _label(Period.containing(moment)) for org, moment in first.items()}


def _activity(
    session: Session, window: Period, currency: str
) -> tuple[dict[tuple[str, str], Decimal], set[tuple[str, str]]]:
    """(organisation, month) -> revenue, and the (organisation, month) pairs active."""
    revenue: dict[tuple[str, str], Decimal] = defaultdict(lambda: _ZERO)
    active: set[tuple[str, str]] = set()
    sums = read_sums(session, window, ("organization_id", "day"), currency=currency)
    for (org, day), measured in sums.items():
        key = (org, _label(Period.containing(day)))
        revenue[key] = EXACT.add(revenue[key], measured.revenue)
        if measured.requests or measured.errors:
            active.add(key)
    for (org, _plan, day), amount in accrue(fee_spans(session, window, currency), window).items():
        key = (org, _label(Period.containing(day)))
        revenue[key] = EXACT.add(revenue[key], amount)
        if amount:
            active.add(key)
    return dict(revenue), active


def cohorts(
    session: Session,
    *,
    months: int = 6,
    until: datetime | None = None,
    currency: str | None = None,
) -> CohortReport:
    """Returns the ``CohortReport`` of the ``months`` calendar months ending with the one
    that holds ``until`` (default: now)."""
    code = report_currency(session, currency)
    last = Period.containing(until or utcnow())
    periods = [last.shifted(-offset) for offset in range(max(1, months) - 1, -1, -1)]
    labels = [_label(p) for p in periods]
    window = Period(periods[0].start, periods[-1].end)
    first = _first_months(session, code)
    revenue, active = _activity(session, window, code)
    growth: list[MonthGrowth] = []
    for index, month in enumerate(labels):
        now_active = {org for org, m in active if m == month}
        before = {org for org, m in active if index and m == labels[index - 1]}
        month_revenue = exact_sum(a for (_org, m), a in revenue.items() if m == month)
        previous_revenue = growth[-1].revenue if growth else None
        churned = len(before - now_active)
        growth.append(
            MonthGrowth(
                month=month,
                active=len(now_active),
                new=sum(1 for org in now_active if first.get(org) == month),
                churned=churned,
                revenue=month_revenue,
                churn_rate=ratio(churned, len(before), places=4) if index else None,
                revenue_growth_pct=(
                    None
                    if previous_revenue is None
                    else percent(EXACT.subtract(month_revenue, previous_revenue), previous_revenue)
                ),
            )
        )
    rows = []
    for index, month in enumerate(labels):
        members = {org for org, m in first.items() if m == month}
        following = labels[index:]
        rows.append(
            Cohort(
                month=month,
                size=len(members),
                active=tuple(sum(1 for org in members if (org, m) in active) for m in following),
                revenue=tuple(
                    exact_sum(revenue.get((org, m), _ZERO) for org in members) for m in following
                ),
            )
        )
    in_report = {org for org, _ in active}
    earlier = sum(1 for org in in_report if first.get(org, labels[0]) < labels[0])
    return CohortReport(code, tuple(labels), tuple(rows), tuple(growth), earlier)
