"""Invoices for people: listing and showing them, marking them paid or void, and
closing a billing period into one finalised invoice per organisation, exactly once.

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

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing import Invoice, Money, PlanRef, PrepaidPlan
from modelmint.billing.errors import InvalidPeriod
from modelmint.billing.invoices import InvoiceStatus
from modelmint.billing.invoicing import draft_invoice
from modelmint.billing.periods import Period
from modelmint.billing.serialization import Json, decimal_text
from modelmint.billing.store import BillingStore
from modelmint.billing_admin.fields import iso
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest
from modelmint.storage.db import Database
from modelmint.storage.tables import Organization

__all__ = [
    "ClosedInvoice",
    "close_period",
    "invoice_csv",
    "invoice_id",
    "invoice_pdf",
    "list_invoices",
    "pay_invoice",
    "show_invoice",
    "void_invoice",
]


def _invoice_status(status: str) -> InvoiceStatus:
    try:
        return InvoiceStatus(status)
    except ValueError:
        choices = ", ".join(s.value for s in InvoiceStatus)
        raise InvalidRequest(f"status {status!r} is not one of {choices}", param="status") from None


def list_invoices(
    session: Session, org: str | None = None, period: str | None = None, status: str | None = None
) -> list[Json]:
    """Invoice headers (totals, status), oldest period first; filters are optional."""
    # Headers come from the invoice rows alone: loading every invoice's lines to list
    # them would cost a query per invoice, and ``show_invoice`` checks the lines.
    headers = BillingStore(session).invoices.headers(
        organization_id=None if org is None else accounts.get_org(session, org).id,
        period_start=None if period is None else Period.parse(period).start,
        status=None if status is None else _invoice_status(status).value,
    )
    return [
        {
            "id": h.id,
            "organization_id": h.organization_id,
            "organization": h.organization,
            "period_start": iso(h.period_start),
            "period_end": iso(h.period_end),
            "currency": h.currency,
            "status": h.status,
            "subtotal": decimal_text(h.subtotal),
            "discount": decimal_text(h.discount),
            "tax": decimal_text(h.tax),
            "total": decimal_text(h.total),
            "created_at": iso(h.created_at),
            "finalized_at": iso(h.finalized_at),
            "paid_at": iso(h.paid_at),
            "voided_at": iso(h.voided_at),
        }
        for h in headers
    ]


def show_invoice(session: Session, invoice_id: str) -> Json:
    """The invoice with its lines and totals (``Invoice.to_dict``)."""
    return BillingStore(session).invoices.load_invoice(invoice_id).to_dict()


def invoice_csv(session: Session, invoice_id: str) -> str:
    """The invoice's lines, discount and tax included, as CSV with a header row."""
    return BillingStore(session).invoices.load_invoice(invoice_id).lines_csv()


def invoice_pdf(session: Session, invoice_id: str) -> bytes:
    """The invoice as a PDF document, with the organisation's name in its header."""
    # Imported here: reportlab takes about 0.2 s to import, which every CLI command and
    # server start would pay for a path that only this function takes.
    from modelmint.billing.invoice_pdf import invoice_pdf as render

    invoice = BillingStore(session).invoices.load_invoice(invoice_id)
    org = session.get(Organization, invoice.organization_id)
    return render(invoice, organization_name=None if org is None else org.name)


def pay_invoice(session: Session, invoice_id: str, at: datetime | None = None) -> Json:
    """Mark a finalized invoice paid; any other state is ``InvalidInvoiceTransition``."""
    invoices = BillingStore(session).invoices
    invoice = invoices.load_invoice(invoice_id)
    invoice.mark_paid(at or utcnow())
    invoices.save_invoice(invoice)
    return invoice.to_dict()


def void_invoice(session: Session, invoice_id: str, at: datetime | None = None) -> Json:
    """Void a draft or finalized invoice; a paid one is refunded by a credit instead."""
    invoices = BillingStore(session).invoices
    invoice = invoices.load_invoice(invoice_id)
    invoice.void(at or utcnow())
    invoices.save_invoice(invoice)
    return invoice.to_dict()


# -- closing a period -----------------------------------------------------------------------


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
            organization_ids = BillingStore(session).subscriptions.subscribed_in(period)
    return [
        _close_one(database, organization_id, period, now, dry_run)
        for organization_id in organization_ids
    ]


def _close_one(
    database: Database, organization_id: str, period: Period, now: datetime, dry_run: bool
) -> ClosedInvoice:
    identifier = invoice_id(organization_id, period)
    with database.session() as session:
        store = BillingStore(session)
        if store.invoices.status(identifier) is not None:
            return ClosedInvoice(store.invoices.load_invoice(identifier), created=False)
        timeline = store.subscriptions.timeline(organization_id)
        charged = store.usage.usage_totals(organization_id, period.start)
        invoice = draft_invoice(
            invoice_id=identifier,
            period=period,
            timeline=timeline,
            usage=[c.total for c in charged],
            request_charges={c.total.key: c for c in charged},
            coupon=store.coupons.redemption_for(organization_id, period),
            tax_rate=store.invoices.tax_rate(organization_id),
        )
        prepaid = [s.plan for s in timeline.in_period(period) if isinstance(s.plan, PrepaidPlan)]
        if prepaid:
            _credit_prepaid_usage(invoice, {p.ref for p in prepaid})
        if dry_run:
            return ClosedInvoice(invoice, created=True, stored=False)
        invoice.finalize(now)
        store.invoices.save_invoice(invoice)
        return ClosedInvoice(invoice, created=True)


def _credit_prepaid_usage(invoice: Invoice, plans: set[PlanRef]) -> None:
    billed = sum(
        (line.amount.amount for line in invoice.charge_lines if line.plan in plans),
        Decimal(0),
    )
    if billed > 0:
        invoice.add_adjustment("Paid from prepaid credit", Money(-billed, invoice.currency))
