"""Revenue invoiced: what the finalised (and paid) invoices of a window bill.

An invoice belongs to the window that holds the start of its billing period. Void
and draft invoices are left out. ``billed`` is the sum of the fee and usage lines:
what was charged for the period, the figure comparable with accrued revenue (each
line is the exact accrued amount rounded once). Adjustments (such as prepaid usage
credited back because the wallet already paid it) are in ``subtotal``, which the
invoice's discount and tax then apply to. Fee and usage lines are also summed per
organisation, plan and model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.billing.store.reporting import invoice_line_amounts, invoices_starting_in

__all__ = ["BILLED_STATUSES", "InvoicedRevenue", "invoiced_revenue"]

BILLED_STATUSES = ("finalized", "paid")
_BILLED_LINES = ("fixed_fee", "proration_charge", "proration_credit", "usage")
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class InvoicedRevenue:
    """Totals of a window's invoices in one currency, exact; per-key sums of their lines."""

    currency: str
    invoices: int = 0
    billed: Decimal = _ZERO
    subtotal: Decimal = _ZERO
    discount: Decimal = _ZERO
    tax: Decimal = _ZERO
    total: Decimal = _ZERO
    paid: Decimal = _ZERO
    by_organization: dict[str, Decimal] = field(default_factory=dict)
    by_plan: dict[str, Decimal] = field(default_factory=dict)
    by_model: dict[str, Decimal] = field(default_factory=dict)


def _add(sums: dict[str, Decimal], key: str, amount: Decimal) -> None:
    sums[key] = EXACT.add(sums.get(key, _ZERO), amount)


def invoiced_revenue(
    session: Session, window: Period, currency: str, *, organization: str | None = None
) -> InvoicedRevenue:
    """Returns the ``InvoicedRevenue`` of the invoices in ``currency`` whose billing period
    starts inside ``window`` (of one organisation, by id, if given): totals (billed,
    subtotal, discount, tax, total, paid) and sums of fee and usage lines per
    organisation, plan code and model."""
    invoices = invoices_starting_in(
        session, window, currency, BILLED_STATUSES, organization=organization
    )
    sums = {name: _ZERO for name in ("billed", "subtotal", "discount", "tax", "total", "paid")}
    for invoice in invoices:
        for name in ("subtotal", "discount", "tax", "total"):
            sums[name] = EXACT.add(sums[name], getattr(invoice, name))
        if invoice.status == "paid":
            sums["paid"] = EXACT.add(sums["paid"], invoice.total)
    owners = {invoice.id: invoice.organization_id for invoice in invoices}
    by_org: dict[str, Decimal] = {}
    by_plan: dict[str, Decimal] = {}
    by_model: dict[str, Decimal] = {}
    if invoices:
        lines = invoice_line_amounts(session, list(owners), _BILLED_LINES)
        for invoice_id, plan_code, model, amount in lines:
            sums["billed"] = EXACT.add(sums["billed"], amount)
            _add(by_org, owners[invoice_id], amount)
            if plan_code is not None:
                _add(by_plan, plan_code, amount)
            if model is not None:
                _add(by_model, model, amount)
    return InvoicedRevenue(
        currency=currency,
        invoices=len(invoices),
        by_organization=dict(by_org),
        by_plan=by_plan,
        by_model=by_model,
        **sums,
    )
