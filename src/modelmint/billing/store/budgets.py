"""Monthly budgets and month-to-date spend as stored.

A budget row caps the spend of an organisation (``api_key_id`` "") or one of its
keys. A spend row per (scope, month) keeps what was charged (``amount``), what
admission holds for requests in flight (``held``) and what gateway processes
leased (``leased``); spend is kept only where a budget or a hold reads it.

Spend rows are locked in one order everywhere (``lock_spend``: organisation first,
then keys, sorted), so admission and writers never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.dialects import postgresql, sqlite

from modelmint.billing.budgets import Budget
from modelmint.billing.exact import exact_sum
from modelmint.billing.money import Money
from modelmint.billing.periods import Period
from modelmint.billing.store.base import StorePart
from modelmint.billing.store.usage import UsageStore
from modelmint.clock import utcnow
from modelmint.errors import NotFound
from modelmint.storage.tables import BillingBudget, BillingSpend, UsageRecord

__all__ = ["BudgetStore"]


def _spend_row(
    organization_id: str, api_key_id: str, period_start: datetime
) -> tuple[ColumnElement[bool], ...]:
    return (
        BillingSpend.organization_id == organization_id,
        BillingSpend.api_key_id == api_key_id,
        BillingSpend.period_start == period_start,
    )


class BudgetStore(StorePart):
    """Budgets and the month-to-date spend they are checked against."""

    # -- budgets -----------------------------------------------------------------------------

    def set_budget(self, organization_id: str, api_key_id: str, budget: Budget) -> None:
        """The monthly budget of the organisation (``api_key_id`` "") or one of its keys.

        The metering writer keeps month-to-date spend only where a budget reads it, so
        the month's spend of this scope is recomputed here from what was charged,
        under the organisation's usage lock (no writer can charge meanwhile).
        """
        self._require_org(organization_id)
        UsageStore(self._session).lock_usage(organization_id)
        month = Period.containing(utcnow())
        # Locked before reading what was charged: on SQLite this write takes the lock.
        self.lock_spend(organization_id, [api_key_id], month.start, budget.limit.currency)
        charged = self._charged(organization_id, api_key_id, month)
        held = self._session.scalar(
            select(BillingSpend.held).where(*_spend_row(organization_id, api_key_id, month.start))
        )
        self.set_spend(
            organization_id, api_key_id, month.start, amount=charged, held=held or Decimal(0)
        )
        row = self._session.get(BillingBudget, (organization_id, api_key_id))
        if row is None:
            row = BillingBudget(organization_id=organization_id, api_key_id=api_key_id)
            self._session.add(row)
        row.amount = budget.limit.amount
        row.currency = budget.limit.currency
        row.hard = budget.hard
        row.thresholds = list(budget.thresholds)
        row.updated_at = utcnow()
        self._flush("budget changed concurrently; retry")

    def _charged(self, organization_id: str, api_key_id: str, month: Period) -> Decimal:
        """What the organisation (``api_key_id`` "") or one key was charged in ``month``."""
        if not api_key_id:
            totals = UsageStore(self._session).usage_totals(organization_id, month.start)
            return exact_sum(t.amount for t in totals)
        charges = self._session.scalars(
            select(UsageRecord.charge).where(
                UsageRecord.organization_id == organization_id,
                UsageRecord.api_key_id == api_key_id,
                UsageRecord.created_at >= month.start,
                UsageRecord.created_at < month.end,
                UsageRecord.charge.is_not(None),
            )
        )
        return exact_sum(c for c in charges if c is not None)

    def remove_budget(self, organization_id: str, api_key_id: str) -> None:
        row = self._session.get(BillingBudget, (organization_id, api_key_id))
        if row is None:
            raise NotFound("no such budget", param="budget")
        self._session.delete(row)
        self._session.flush()

    def budgets(self, organization_id: str) -> dict[str, Budget]:
        """The organisation's budgets by key id ("" for the organisation itself)."""
        rows = self._session.scalars(
            select(BillingBudget).where(BillingBudget.organization_id == organization_id)
        )
        return {r.api_key_id: _budget(r) for r in rows}

    def budget(self, organization_id: str, api_key_id: str) -> Budget | None:
        """One scope's budget, if it has one."""
        row = self._session.get(BillingBudget, (organization_id, api_key_id))
        return None if row is None else _budget(row)

    # -- month-to-date spend -----------------------------------------------------------------

    def lock_spend(
        self,
        organization_id: str,
        api_key_ids: Iterable[str],
        period_start: datetime,
        currency: str,
    ) -> dict[str, tuple[Decimal, Decimal]]:
        """Lock the month-to-date spend rows (organisation first, then keys, sorted) until
        the transaction ends, creating missing ones; returns ``{key: (amount, held)}``.

        One order everywhere, so admission and writers never wait on each other in a
        cycle. On SQLite the first write takes the database's write lock.
        """
        scopes = sorted(set(api_key_ids) | {""})
        rows = [
            {
                "organization_id": organization_id,
                "api_key_id": scope,
                "period_start": period_start,
                "currency": currency,
                "amount": Decimal(0),
                "held": Decimal(0),
            }
            for scope in scopes
        ]
        upsert = postgresql.insert if self._on_postgresql() else sqlite.insert
        self._session.execute(upsert(BillingSpend).values(rows).on_conflict_do_nothing())
        found: dict[str, tuple[Decimal, Decimal]] = {}
        for scope in scopes:
            row = self._session.scalar(
                select(BillingSpend)
                .where(*_spend_row(organization_id, scope, period_start))
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            assert row is not None  # inserted above if missing
            found[scope] = (row.amount, row.held)
        return found

    def spend_leased(
        self, organization_id: str, api_key_ids: Iterable[str], period_start: datetime
    ) -> dict[str, Decimal]:
        """What gateway processes leased of each scope's month (rows ``lock_spend`` locked)."""
        scopes = sorted(set(api_key_ids) | {""})
        rows = self._session.execute(
            select(BillingSpend.api_key_id, BillingSpend.leased).where(
                BillingSpend.organization_id == organization_id,
                BillingSpend.api_key_id.in_(scopes),
                BillingSpend.period_start == period_start,
            )
        ).all()
        found = {scope: Decimal(0) for scope in scopes}
        found.update({scope: leased for scope, leased in rows})
        return found

    def leased(self, organization_id: str, api_key_id: str, period_start: datetime) -> Decimal:
        """What gateway processes leased of one scope's month."""
        leased = self._session.scalar(
            select(BillingSpend.leased).where(
                *_spend_row(organization_id, api_key_id, period_start)
            )
        )
        return leased or Decimal(0)

    def set_leased(
        self, organization_id: str, api_key_id: str, period_start: datetime, leased: Decimal
    ) -> None:
        """The new ``leased`` sum of a spend row this transaction locked."""
        self._session.execute(
            update(BillingSpend)
            .where(*_spend_row(organization_id, api_key_id, period_start))
            .values(leased=leased)
        )

    def set_spend(
        self,
        organization_id: str,
        api_key_id: str,
        period_start: datetime,
        *,
        amount: Decimal,
        held: Decimal,
    ) -> None:
        """New values of a spend row this transaction locked (``lock_spend``)."""
        self._session.execute(
            update(BillingSpend)
            .where(*_spend_row(organization_id, api_key_id, period_start))
            .values(amount=amount, held=held)
        )

    def spend(
        self, organization_id: str, api_key_id: str, period_start: datetime
    ) -> tuple[Decimal, Decimal]:
        """(charged, held) of one scope's month; zeros if nothing was kept."""
        row = self._session.get(BillingSpend, (organization_id, api_key_id, period_start))
        return (Decimal(0), Decimal(0)) if row is None else (row.amount, row.held)


def _budget(row: BillingBudget) -> Budget:
    return Budget(Money(row.amount, row.currency), row.hard, tuple(row.thresholds))
