"""Invoices, their lines and organisations' tax rates, as stored.

A draft is rewritten whole (lines and totals) each time it is saved; once stored
as finalized, paid or void only its status and time stamps move, and its stored
lines must match the invoice saved. Loading an invoice checks that its lines still
add up to the totals on its row (``ChargeMismatch`` otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, insert, select

from modelmint.billing.errors import ChargeMismatch, InvalidInvoiceTransition
from modelmint.billing.invoices import Invoice, InvoiceLine, InvoiceStatus, LineKind
from modelmint.billing.metrics import Metric
from modelmint.billing.money import Money
from modelmint.billing.periods import Period, utc
from modelmint.billing.plans import PlanRef
from modelmint.billing.serialization import coupon_from_dict, coupon_to_dict
from modelmint.billing.store.base import StorePart, loaded_quantity, stored_quantity
from modelmint.billing.tax import TaxRate
from modelmint.clock import utcnow
from modelmint.errors import Conflict, NotFound
from modelmint.storage.tables import (
    BillingInvoice,
    BillingInvoiceLine,
    BillingTaxRate,
    Organization,
)

__all__ = ["InvoiceHeader", "InvoiceStore"]


# Stored status -> the statuses a later save may record (the domain checks each step).
_LATER_STATES: dict[str, frozenset[str]] = {
    "finalized": frozenset({"finalized", "paid", "void"}),
    "paid": frozenset({"paid", "void"}),  # void: refunded in full
    "void": frozenset({"void"}),
}


@dataclass(frozen=True, slots=True)
class InvoiceHeader:
    """An invoice's row without its lines: enough to list invoices."""

    id: str
    organization_id: str
    organization: str  # the organisation's name
    period_start: datetime
    period_end: datetime
    currency: str
    status: str
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal
    created_at: datetime
    finalized_at: datetime | None
    paid_at: datetime | None
    voided_at: datetime | None


class InvoiceStore(StorePart):
    """Invoices with their lines, and the tax rate each organisation is invoiced at."""

    def save_invoice(self, invoice: Invoice) -> None:
        """Insert ``invoice`` or store its new state.

        A stored draft is rewritten (lines and totals); once stored as finalized, paid
        or void only the status and its time stamps move, and the stored lines must
        match (``InvoiceImmutable`` otherwise, via the domain's own rules).
        """
        self._require_org(invoice.organization_id)
        row = self._session.get(BillingInvoice, invoice.id)
        if row is None:
            row = BillingInvoice(id=invoice.id, organization_id=invoice.organization_id)
            self._session.add(row)
        elif row.organization_id != invoice.organization_id:
            raise Conflict(f"invoice id {invoice.id!r} is taken", param="invoice")
        elif row.status != InvoiceStatus.DRAFT.value:
            if invoice.status.value not in _LATER_STATES[row.status]:
                raise InvalidInvoiceTransition(
                    f"invoice {invoice.id} is stored as {row.status}; "
                    f"it cannot go back to {invoice.status.value}"
                )
            if self._invoice_lines(invoice.id) != list(invoice.charge_lines):
                raise Conflict(f"invoice {invoice.id} is {row.status}; its lines cannot change")
            _set_status(row, invoice)
            self._session.flush()
            return
        else:
            self._session.execute(
                delete(BillingInvoiceLine).where(BillingInvoiceLine.invoice_id == invoice.id)
            )
        _set_invoice(row, invoice)
        self._session.flush()
        lines = [_line_row(invoice.id, i, line) for i, line in enumerate(invoice.charge_lines)]
        if lines:
            self._session.execute(insert(BillingInvoiceLine), lines)

    def _invoice_lines(self, invoice_id: str) -> list[InvoiceLine]:
        rows = self._session.scalars(
            select(BillingInvoiceLine)
            .where(BillingInvoiceLine.invoice_id == invoice_id)
            .order_by(BillingInvoiceLine.position)
        )
        currency = self._session.get(BillingInvoice, invoice_id)
        assert currency is not None
        return [_line_from_row(r, currency.currency) for r in rows]

    def load_invoice(self, invoice_id: str) -> Invoice:
        """The stored invoice; ``ChargeMismatch`` if its lines no longer add up to its totals."""
        row = self._session.get(BillingInvoice, invoice_id)
        if row is None:
            raise NotFound(f"no invoice {invoice_id!r}", param="invoice")
        invoice = Invoice(
            invoice_id=row.id,
            organization_id=row.organization_id,
            period=Period(row.period_start, row.period_end),
            currency=row.currency,
            plans=[PlanRef(code, version) for code, version in row.plans],
            lines=self._invoice_lines(row.id),
            coupon=None if row.coupon is None else coupon_from_dict(row.coupon),
            tax_rate=TaxRate(row.tax_percent, row.tax_name),
        )
        if row.finalized_at is not None:
            invoice.finalize(row.finalized_at)
        if row.paid_at is not None:
            invoice.mark_paid(row.paid_at)
        if row.voided_at is not None and row.paid_at is not None:
            invoice.void_refunded(row.voided_at)
        elif row.voided_at is not None:
            invoice.void(row.voided_at)
        stored = (row.subtotal, row.discount, row.tax, row.total)
        computed = tuple(m.amount for m in (invoice.subtotal, invoice.discount, invoice.tax))
        if stored != (*computed, invoice.total.amount) or invoice.status.value != row.status:
            raise ChargeMismatch(f"invoice {invoice_id}: stored totals disagree with its lines")
        return invoice

    def invoices(self, organization_id: str) -> list[Invoice]:
        """The organisation's invoices, oldest period first."""
        self._require_org(organization_id)
        ids = self._session.scalars(
            select(BillingInvoice.id)
            .where(BillingInvoice.organization_id == organization_id)
            .order_by(BillingInvoice.period_start, BillingInvoice.created_at)
        )
        return [self.load_invoice(invoice_id) for invoice_id in ids]

    def status(self, invoice_id: str) -> str | None:
        """The stored status of the invoice; None if there is no such invoice."""
        row = self._session.get(BillingInvoice, invoice_id)
        return None if row is None else row.status

    def headers(
        self,
        organization_id: str | None = None,
        period_start: datetime | None = None,
        status: str | None = None,
    ) -> list[InvoiceHeader]:
        """Invoice rows without their lines, oldest period first; filters are optional."""
        query = (
            select(BillingInvoice, Organization.name)
            .join(Organization, Organization.id == BillingInvoice.organization_id)
            .order_by(BillingInvoice.period_start, BillingInvoice.created_at, BillingInvoice.id)
        )
        if organization_id is not None:
            query = query.where(BillingInvoice.organization_id == organization_id)
        if period_start is not None:
            query = query.where(BillingInvoice.period_start == period_start)
        if status is not None:
            query = query.where(BillingInvoice.status == status)
        return [
            InvoiceHeader(
                id=row.id,
                organization_id=row.organization_id,
                organization=name,
                period_start=row.period_start,
                period_end=row.period_end,
                currency=row.currency,
                status=row.status,
                subtotal=row.subtotal,
                discount=row.discount,
                tax=row.tax,
                total=row.total,
                created_at=row.created_at,
                finalized_at=row.finalized_at,
                paid_at=row.paid_at,
                voided_at=row.voided_at,
            )
            for row, name in self._session.execute(query)
        ]

    # -- tax rates ---------------------------------------------------------------------------

    def set_tax_rate(self, organization_id: str, rate: TaxRate) -> None:
        """The organisation's tax rate from now on (drafted invoices keep their own)."""
        self._require_org(organization_id)
        row = self._session.get(BillingTaxRate, organization_id)
        if row is None:
            row = BillingTaxRate(organization_id=organization_id)
            self._session.add(row)
        row.name = rate.name
        row.percent = rate.percent
        row.updated_at = utcnow()
        self._session.flush()

    def tax_rate(self, organization_id: str) -> TaxRate | None:
        self._require_org(organization_id)
        row = self._session.get(BillingTaxRate, organization_id)
        return None if row is None else TaxRate(row.percent, row.name)


# -- row <-> domain ----------------------------------------------------------------------------


def _set_invoice(row: BillingInvoice, invoice: Invoice) -> None:
    row.period_start = invoice.period.start
    row.period_end = invoice.period.end
    row.currency = invoice.currency
    row.plans = [[ref.code, ref.version] for ref in invoice.plans]
    row.coupon = None if invoice.coupon is None else coupon_to_dict(invoice.coupon)
    row.tax_name = invoice.tax_rate.name
    row.tax_percent = invoice.tax_rate.percent
    row.subtotal = invoice.subtotal.amount
    row.discount = invoice.discount.amount
    row.tax = invoice.tax.amount
    row.total = invoice.total.amount
    row.usage_exact_total = invoice.usage_exact_total
    _set_status(row, invoice)


def _set_status(row: BillingInvoice, invoice: Invoice) -> None:
    row.status = invoice.status.value
    row.finalized_at = invoice.stamp(InvoiceStatus.FINALIZED)
    row.paid_at = invoice.stamp(InvoiceStatus.PAID)
    row.voided_at = invoice.stamp(InvoiceStatus.VOID)


def _line_row(invoice_id: str, position: int, line: InvoiceLine) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "position": position,
        "kind": line.kind.value,
        "description": line.description,
        "amount": line.amount.amount,
        "exact_amount": line.exact_amount,
        "plan_code": None if line.plan is None else line.plan.code,
        "plan_version": None if line.plan is None else line.plan.version,
        "model": line.model,
        "metric": None if line.metric is None else line.metric.value,
        "quantity": stored_quantity(line.quantity),
        "included": stored_quantity(line.included),
        "overage": stored_quantity(line.overage),
        "charges": line.charges,
        "span_start": None if line.span is None else line.span.start,
        "span_end": None if line.span is None else line.span.end,
    }


def _line_from_row(row: BillingInvoiceLine, currency: str) -> InvoiceLine:
    metric = None if row.metric is None else Metric(row.metric)
    plan = (
        None
        if row.plan_code is None or row.plan_version is None
        else PlanRef(row.plan_code, row.plan_version)
    )
    span = (
        None
        if row.span_start is None or row.span_end is None
        else Period(utc(row.span_start), utc(row.span_end))
    )
    return InvoiceLine(
        kind=LineKind(row.kind),
        description=row.description,
        amount=Money(row.amount, currency),
        exact_amount=row.exact_amount,
        plan=plan,
        model=row.model,
        metric=metric,
        quantity=loaded_quantity(row.quantity, metric),
        included=loaded_quantity(row.included, metric),
        overage=loaded_quantity(row.overage, metric),
        charges=row.charges,
        span=span,
    )
