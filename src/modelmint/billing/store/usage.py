"""Period usage totals as stored: what each organisation used and was charged, per
(period, plan version, model, metric), kept as requests are settled.

Rating reads and writes them under the organisation's usage lock (``lock_usage``),
so writers in several processes agree on the order of the charges.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, text, update

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

_TOTAL_KEY = ("organization_id", "period_start", "plan_code", "plan_version", "model", "metric")
_TOTALS = cast(Table, BillingUsageTotal.__table__)
_UPDATE_TOTAL = (
    update(_TOTALS)
    .where(*(_TOTALS.c[c] == bindparam(f"k_{c}") for c in _TOTAL_KEY))
    .values(
        quantity=bindparam("quantity"),
        included=bindparam("included"),
        amount=bindparam("amount"),
        charges=bindparam("charges"),
    )
)


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

    def save_usage_totals(
        self,
        organization_id: str,
        period_start: datetime,
        totals: Iterable[ChargedTotal],
        *,
        stored: set[UsageKey] | None = None,
    ) -> None:
        """Store new values of the given totals (call under ``lock_usage``); ``stored``
        names the keys that have a row already, if the caller read them."""
        wanted = {t.total.key: t for t in totals}
        if not wanted:
            return
        if stored is None:
            stored = {t.total.key for t in self.usage_totals(organization_id, period_start)}
        existing = stored & set(wanted)
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for key, charged in sorted(wanted.items()):
            row = {
                "organization_id": organization_id,
                "period_start": period_start,
                "plan_code": key.plan.code,
                "plan_version": key.plan.version,
                "model": key.model,
                "metric": key.metric.value,
                "quantity": Decimal(charged.total.quantity),
                "included": Decimal(charged.total.included),
                "amount": charged.amount,
                "charges": charged.charges,
            }
            if key in existing:
                updates.append({f"k_{c}" if c in _TOTAL_KEY else c: v for c, v in row.items()})
            else:
                inserts.append(row)
        # One round trip each, with statements built once (the writer calls this per batch).
        if updates:
            self._session.connection().execute(_UPDATE_TOTAL, updates)
        if inserts:
            self._session.execute(insert(BillingUsageTotal), inserts)
