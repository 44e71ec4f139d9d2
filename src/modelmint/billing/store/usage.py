"""Period usage totals as stored: what each organisation used and was charged, per
(period, plan version, model, metric), kept as requests are settled.

The metering writer adds to them (``charging.settlement_sql``): rating reads them under
the organisation's usage lock (``lock_usage``), so that writers in several processes
agree on the order of the charges, and stores what each batch adds, never a new value,
as quick batches add to the same rows without that lock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text

from modelmint.billing.metrics import Metric
from modelmint.billing.plans import PlanRef
from modelmint.billing.rating import ChargedTotal, UsageKey, UsageTotal
from modelmint.billing.store.base import StorePart, loaded_quantity
from modelmint.storage.tables import BillingUsageTotal

__all__ = ["USAGE_LOCK_SPACE", "UsageStore"]

# The first key of PostgreSQL advisory locks that serialise rating per organisation
# (the second is the organisation id's hash); distinct from the migration lock's. The
# metering writer's settlement (``charging.settlement_sql``) takes the same lock.
USAGE_LOCK_SPACE = 0x6D6D6272  # "mmbr"


class UsageStore(StorePart):
    """Running usage totals per organisation and period."""

    def lock_usage(self, organization_id: str) -> None:
        """Serialise rating of the organisation's requests until the transaction ends.

        PostgreSQL: a transaction-scoped advisory lock keyed by the organisation.
        SQLite: the caller already holds the database's only write lock.
        """
        if self._on_postgresql():
            self._session.execute(
                text("SELECT pg_advisory_xact_lock(:space, hashtext(:org))"),
                {"space": USAGE_LOCK_SPACE, "org": organization_id},
            )

    def usage_totals(self, organization_id: str, period_start: datetime) -> list[ChargedTotal]:
        """The organisation's running totals for the period that starts at ``period_start``."""
        rows = self._session.scalars(
            select(BillingUsageTotal).where(
                BillingUsageTotal.organization_id == organization_id,
                BillingUsageTotal.period_start == period_start,
            )
        )
        totals = []
        for row in rows:
            metric = Metric(row.metric)
            key = UsageKey(PlanRef(row.plan_code, row.plan_version), row.model, metric)
            quantity = loaded_quantity(row.quantity, metric)
            included = loaded_quantity(row.included, metric)
            assert quantity is not None and included is not None
            totals.append(
                ChargedTotal(UsageTotal(key, quantity, included), row.amount, row.charges)
            )
        return totals
