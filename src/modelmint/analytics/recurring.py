"""Monthly and annual recurring revenue (MRR, ARR) at an instant.

MRR has two parts here, because ModelMint sells both fees and usage:

* fixed: the monthly fees of the subscriptions and licences running at ``at``
  (what the business will bill next month if nothing changes);
* usage: usage charges accrued over the 30 days before ``at`` (the hour under way
  included), the run rate of metered revenue.

ARR is twelve times MRR.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint.analytics.currencies import report_currency
from modelmint.analytics.fees import fee_spans
from modelmint.analytics.rollups import read_sums
from modelmint.analytics.windows import ceil_hour
from modelmint.billing.exact import EXACT, exact_sum
from modelmint.billing.periods import Period, utc
from modelmint.clock import utcnow

__all__ = ["USAGE_RUN_RATE_DAYS", "RecurringRevenue", "recurring_revenue"]

USAGE_RUN_RATE_DAYS = 30


@dataclass(frozen=True, slots=True)
class RecurringRevenue:
    """MRR and ARR at ``at`` in ``currency``, exact; ``subscriptions`` counts the running
    subscriptions with a fee."""

    at: datetime
    currency: str
    fixed_mrr: Decimal
    usage_mrr: Decimal
    subscriptions: int

    @property
    def mrr(self) -> Decimal:
        return EXACT.add(self.fixed_mrr, self.usage_mrr)

    @property
    def arr(self) -> Decimal:
        return EXACT.multiply(self.mrr, 12)


def recurring_revenue(
    session: Session, at: datetime | None = None, *, currency: str | None = None
) -> RecurringRevenue:
    """Returns the ``RecurringRevenue`` (fixed and usage MRR, and ARR) at ``at`` (default:
    now)."""
    moment = utc(at) if at is not None else utcnow()
    code = report_currency(session, currency)
    instant = Period(moment, moment + timedelta(microseconds=1))
    running = [
        span
        for span in fee_spans(session, instant, code)
        if span.start <= moment and (span.end is None or moment < span.end)
    ]
    end = ceil_hour(moment)  # the hour under way counts
    window = Period(end - timedelta(days=USAGE_RUN_RATE_DAYS), end)
    usage = read_sums(session, window, (), currency=code)
    usage_revenue = usage[()].revenue if () in usage else Decimal(0)
    return RecurringRevenue(
        at=moment,
        currency=code,
        fixed_mrr=exact_sum(span.fee.amount for span in running),
        usage_mrr=usage_revenue,
        subscriptions=len(running),
    )
