"""Read-only queries that reports make of the billing tables.

Analytics (revenue, fees, cohorts, customers, the pricing simulator) and the
customer portal read plans, subscriptions, wallets and invoices here, so that only
the billing store names the ``Billing*`` tables. Each function runs one query and
returns its rows as they are; what the rows mean for a report (which statuses count
as billed, what a fee accrues to) stays with the caller. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, select
from sqlalchemy.orm import Session

from modelmint.billing.periods import Period
from modelmint.storage.tables import (
    BillingInvoice,
    BillingInvoiceLine,
    BillingPlanVersion,
    BillingSubscription,
    BillingWallet,
)

__all__ = [
    "SubscriptionTerms",
    "current_plan_version",
    "find_invoice",
    "invoice_line_amounts",
    "invoices_starting_in",
    "organization_invoices",
    "organization_wallets",
    "plan_codes",
    "plan_currencies",
    "subscribed_organizations",
    "subscription_starts",
    "subscription_terms",
]

# (organisation id, starts at, ends at, plan code, plan kind, plan terms)
SubscriptionTerms = Row[str, datetime, datetime | None, str, str, dict[str, Any]]


# -- plans ------------------------------------------------------------------------------------


def plan_currencies(session: Session) -> set[str]:
    """The currencies that plan versions are priced in."""
    return set(session.scalars(select(BillingPlanVersion.currency).distinct()))


def plan_codes(session: Session, currency: str) -> set[str]:
    """The codes of the plans with a version priced in ``currency``."""
    return set(
        session.scalars(
            select(BillingPlanVersion.code)
            .where(BillingPlanVersion.currency == currency)
            .distinct()
        )
    )


# -- subscriptions ------------------------------------------------------------------------------


def _runs_during(window: Period) -> ColumnElement[bool]:
    """A subscription runs for some of ``window`` (one without an end runs on)."""
    return and_(
        BillingSubscription.starts_at < window.end,
        BillingSubscription.ends_at.is_(None) | (BillingSubscription.ends_at > window.start),
    )


def subscription_starts(
    session: Session, currency: str, kinds: Collection[str]
) -> list[tuple[str, datetime]]:
    """(organisation id, start) of every subscription, ever, to a plan of one of ``kinds``
    priced in ``currency``."""
    rows = session.execute(
        select(BillingSubscription.organization_id, BillingSubscription.starts_at)
        .join(BillingPlanVersion, BillingPlanVersion.id == BillingSubscription.plan_version_id)
        .where(BillingPlanVersion.kind.in_(tuple(kinds)))
        .where(BillingPlanVersion.currency == currency)
    )
    return [(org, starts) for org, starts in rows]


def subscription_terms(
    session: Session, window: Period, currency: str
) -> Sequence[SubscriptionTerms]:
    """The subscriptions to plans priced in ``currency`` that run for some of ``window``,
    with their plan's code, kind and terms."""
    return session.execute(
        select(
            BillingSubscription.organization_id,
            BillingSubscription.starts_at,
            BillingSubscription.ends_at,
            BillingPlanVersion.code,
            BillingPlanVersion.kind,
            BillingPlanVersion.terms,
        )
        .join(BillingPlanVersion, BillingPlanVersion.id == BillingSubscription.plan_version_id)
        .where(_runs_during(window))
        .where(BillingPlanVersion.currency == currency)
    ).all()


def subscribed_organizations(session: Session, window: Period, currency: str) -> set[str]:
    """The organisations with a subscription to a plan priced in ``currency`` that runs for
    some of ``window``."""
    return set(
        session.scalars(
            select(BillingSubscription.organization_id)
            .join(BillingPlanVersion, BillingPlanVersion.id == BillingSubscription.plan_version_id)
            .where(_runs_during(window))
            .where(BillingPlanVersion.currency == currency)
        )
    )


def current_plan_version(
    session: Session, organization_id: str, now: datetime
) -> tuple[str, int] | None:
    """(plan code, version) of the organisation's subscription running at ``now``, if any."""
    row = session.execute(
        select(BillingPlanVersion.code, BillingPlanVersion.version)
        .join(BillingSubscription, BillingSubscription.plan_version_id == BillingPlanVersion.id)
        .where(
            BillingSubscription.organization_id == organization_id,
            BillingSubscription.starts_at <= now,
            BillingSubscription.ends_at.is_(None) | (BillingSubscription.ends_at > now),
        )
    ).first()
    return None if row is None else (row.code, row.version)


# -- wallets -------------------------------------------------------------------------------------


def organization_wallets(session: Session, organization_id: str) -> Sequence[BillingWallet]:
    """The organisation's prepaid wallets, by currency."""
    return session.scalars(
        select(BillingWallet)
        .where(BillingWallet.organization_id == organization_id)
        .order_by(BillingWallet.currency)
    ).all()


# -- invoices ------------------------------------------------------------------------------------


def find_invoice(session: Session, invoice_id: str) -> BillingInvoice | None:
    """The invoice ``invoice_id``, or None if there is none."""
    return session.get(BillingInvoice, invoice_id)


def organization_invoices(session: Session, organization_id: str) -> Sequence[BillingInvoice]:
    """All the organisation's invoices, newest billing period first."""
    return session.scalars(
        select(BillingInvoice)
        .where(BillingInvoice.organization_id == organization_id)
        .order_by(BillingInvoice.period_start.desc(), BillingInvoice.id)
    ).all()


def invoices_starting_in(
    session: Session,
    window: Period,
    currency: str,
    statuses: Collection[str],
    *,
    organization: str | None = None,
) -> list[BillingInvoice]:
    """The invoices in ``currency`` with one of ``statuses`` whose billing period starts
    inside ``window`` (of one organisation, by id, if given)."""
    query = select(BillingInvoice).where(
        BillingInvoice.period_start >= window.start,
        BillingInvoice.period_start < window.end,
        BillingInvoice.currency == currency,
        BillingInvoice.status.in_(tuple(statuses)),
    )
    if organization is not None:
        query = query.where(BillingInvoice.organization_id == organization)
    return list(session.scalars(query))


def invoice_line_amounts(
    session: Session, invoice_ids: Collection[str], kinds: Collection[str]
) -> Sequence[Row[str, str | None, str | None, Decimal]]:
    """(invoice id, plan code, model, amount) of the lines of one of ``kinds`` on the
    invoices ``invoice_ids``."""
    return session.execute(
        select(
            BillingInvoiceLine.invoice_id,
            BillingInvoiceLine.plan_code,
            BillingInvoiceLine.model,
            BillingInvoiceLine.amount,
        ).where(
            BillingInvoiceLine.invoice_id.in_(list(invoice_ids)),
            BillingInvoiceLine.kind.in_(tuple(kinds)),
        )
    ).all()
