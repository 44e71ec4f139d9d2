"""Closing a billing period: one finalised invoice per organisation, exactly once.

``close_period`` drafts each organisation's invoice from what the platform already
recorded — the subscription timeline (fixed fees, proration), the period's usage
totals with the exact sum of their request charges, the coupon redemption and tax
rate — finalises it and stores it, in one transaction per organisation.

Idempotent: an invoice's id is derived from (organisation, period), so closing a
period again finds the invoices already there and changes nothing; an
organisation whose invoice was voided is not re-invoiced by a re-run either (a
corrected invoice is a deliberate act, not a side effect of a retry).

Prepaid plans: usage was paid from the wallet as it happened, so their invoice
lists the usage and credits it back as "paid from prepaid credit". (A charge can
only exceed what its wallet paid if it exceeded its worst-case reservation; the
writer logs that as an error, and it is settled by hand, not on this invoice.)

A period still running is refused unless ``allow_open`` (usage after the close
would be left out of the invoice). ``dry_run`` drafts the invoices a close would
create and stores nothing, for a month still running too: closing is final, so it
can be previewed first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing import Invoice, Money, PlanRef, PrepaidPlan
from modelmint.billing.errors import InvalidPeriod
from modelmint.billing.invoicing import draft_invoice
from modelmint.billing.periods import Period
from modelmint.billing.repository import BillingRepository
from modelmint.storage.db import Database
from modelmint.storage.tables import BillingInvoice, BillingSubscription

__all__ = ["ClosedInvoice", "close_period", "invoice_id"]


@dataclass(frozen=True, slots=True)
class ClosedInvoice:
    invoice: Invoice
    created: bool  # False: it already existed; nothing was changed
    stored: bool = True  # False: a dry run's draft, never saved


def invoice_id(organization_id: str, period: Period) -> str:
    return f"inv_{organization_id}_{period.start:%Y%m}"


def close_period(
    database: Database,
    period: Period,
    *,
    organization: str | None = None,
    now: datetime,
    allow_open: bool = False,
    dry_run: bool = False,
) -> list[ClosedInvoice]:
    """Invoice every organisation with a subscription in ``period`` (or just one);
    with ``dry_run``, only draft what would be invoiced."""
    if period.end > now and not allow_open and not dry_run:
        raise InvalidPeriod(
            f"{period} has not ended; closing it now would leave later usage off the "
            "invoice (allow_open / --allow-open to close it anyway)"
        )
    with database.session() as session:
        if organization is not None:
            organization_ids = [accounts.get_org(session, organization).id]
        else:
            organization_ids = _subscribed(session, period)
    return [
        _close_one(database, organization_id, period, now, dry_run)
        for organization_id in organization_ids
    ]


def _subscribed(session: Session, period: Period) -> list[str]:
    rows = session.scalars(
        select(BillingSubscription.organization_id)
        .where(BillingSubscription.starts_at < period.end)
        .where(BillingSubscription.ends_at.is_(None) | (BillingSubscription.ends_at > period.start))
        .distinct()
    )
    return sorted(rows)


def _close_one(
    database: Database, organization_id: str, period: Period, now: datetime, dry_run: bool
) -> ClosedInvoice:
    identifier = invoice_id(organization_id, period)
    with database.session() as session:
        repo = BillingRepository(session)
        if session.get(BillingInvoice, identifier) is not None:
            return ClosedInvoice(repo.load_invoice(identifier), created=False)
        timeline = repo.timeline(organization_id)
        charged = repo.usage_totals(organization_id, period.start)
        invoice = draft_invoice(
            invoice_id=identifier,
            period=period,
            timeline=timeline,
            usage=[c.total for c in charged],
            request_charges={c.total.key: c for c in charged},
            coupon=repo.redemption_for(organization_id, period),
            tax_rate=repo.tax_rate(organization_id),
        )
        prepaid = [s.plan for s in timeline.in_period(period) if isinstance(s.plan, PrepaidPlan)]
        if prepaid:
            _credit_prepaid_usage(invoice, {p.ref for p in prepaid})
        if dry_run:
            return ClosedInvoice(invoice, created=True, stored=False)
        invoice.finalize(now)
        repo.save_invoice(invoice)
        return ClosedInvoice(invoice, created=True)


def _credit_prepaid_usage(invoice: Invoice, plans: set[PlanRef]) -> None:
    billed = sum(
        (line.amount.amount for line in invoice.charge_lines if line.plan in plans),
        Decimal(0),
    )
    if billed > 0:
        invoice.add_adjustment("Paid from prepaid credit", Money(-billed, invoice.currency))
