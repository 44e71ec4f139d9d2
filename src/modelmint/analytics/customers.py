"""Customers: the top ones of a window, and everything about one (usage, invoices, wallet)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.analytics.breakdown import Breakdown, BreakdownRow, Dimension, breakdown
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.billing.store.reporting import (
    current_plan_version,
    organization_invoices,
    organization_wallets,
)
from modelmint.clock import utcnow

__all__ = [
    "CustomerDetail",
    "InvoiceSummary",
    "WalletSummary",
    "customer_detail",
    "top_customers",
]


def top_customers(
    session: Session, period: Period, *, limit: int = 10, currency: str | None = None
) -> tuple[BreakdownRow, ...]:
    """Returns the ``limit`` organisations with the most accrued revenue in ``period`` (usage
    and fees; ties by requests), as breakdown rows keyed by organisation id."""
    rows = breakdown(session, period, Dimension.ORGANIZATION, currency=currency).rows
    return rows[: max(0, limit)]


@dataclass(frozen=True, slots=True)
class InvoiceSummary:
    """One invoice of a customer, amounts exact."""

    id: str
    period_start: datetime
    period_end: datetime
    status: str
    currency: str
    subtotal: Decimal
    total: Decimal


@dataclass(frozen=True, slots=True)
class WalletSummary:
    """A prepaid wallet: ``balance`` is the credit left, ``held`` what requests in flight
    hold of it."""

    currency: str
    balance: Decimal
    held: Decimal

    @property
    def available(self) -> Decimal:
        return EXACT.subtract(self.balance, self.held)


@dataclass(frozen=True, slots=True)
class CustomerDetail:
    """One organisation: its current plan (``code@vN`` or None), its usage by model over
    the window, all its invoices (newest first) and its wallets."""

    organization_id: str
    name: str
    created_at: datetime
    plan: str | None
    usage: Breakdown
    invoices: tuple[InvoiceSummary, ...]
    wallets: tuple[WalletSummary, ...]


def _current_plan(session: Session, organization_id: str, now: datetime) -> str | None:
    found = current_plan_version(session, organization_id, now)
    return None if found is None else f"{found[0]}@v{found[1]}"


def customer_detail(
    session: Session,
    organization: str,
    period: Period,
    *,
    currency: str | None = None,
    now: datetime | None = None,
) -> CustomerDetail:
    """Returns the ``CustomerDetail`` of ``organization`` (name or id; ``NotFound`` if
    unknown) with its usage by model in ``period``."""
    org = accounts.get_org(session, organization)
    invoices = organization_invoices(session, org.id)
    wallets = organization_wallets(session, org.id)
    return CustomerDetail(
        organization_id=org.id,
        name=org.name,
        created_at=org.created_at,
        plan=_current_plan(session, org.id, now or utcnow()),
        usage=breakdown(session, period, Dimension.MODEL, currency=currency, organization=org.id),
        invoices=tuple(
            InvoiceSummary(
                i.id, i.period_start, i.period_end, i.status, i.currency, i.subtotal, i.total
            )
            for i in invoices
        ),
        wallets=tuple(WalletSummary(w.currency, w.balance, w.held) for w in wallets),
    )
