"""Invoices: the lines an organisation owes for one period, and their life cycle.

Order and rounding of an invoice:

    charge lines (fixed fees, proration charges and credits, usage, adjustments)
      -> subtotal  = sum of the charge lines
      -> discount  = the coupon on the subtotal, never more than it (never below zero)
      -> tax       = tax rate on (subtotal - discount)
      -> total     = subtotal - discount + tax

Every line is rounded once, half-even, to minor units when it is made; subtotal,
discount base, tax base and total are sums of rounded lines, so a printed invoice
always adds up. A usage line also keeps ``exact_amount``, the unrounded sum it was
rounded from, and ``rounding_difference`` reports how far the rounded usage lines
are from the exact charges (less than half a minor unit per line).

Life cycle: ``draft -> finalized -> paid``, ``draft | finalized -> void``, and
``paid -> void`` only through a full refund (``void_refunded``).
Anything else (finalizing twice, paying a draft or a void invoice, voiding a paid
one) raises ``InvalidInvoiceTransition``. Only a draft takes new lines; after that
the invoice is immutable (``InvoiceImmutable``) and its totals can never change,
whatever later happens to plans or prices: lines hold amounts, not formulas.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from modelmint.billing.coupons import Coupon
from modelmint.billing.errors import (
    CurrencyMismatch,
    InvalidInvoiceTransition,
    InvoiceImmutable,
)
from modelmint.billing.exact import EXACT, Quantity, exact_sum
from modelmint.billing.metrics import Metric
from modelmint.billing.money import Money
from modelmint.billing.periods import Period, utc
from modelmint.billing.plans import PlanRef
from modelmint.billing.tax import TaxRate

__all__ = ["CSV_COLUMNS", "Invoice", "InvoiceLine", "InvoiceStatus", "LineKind"]


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    FINALIZED = "finalized"
    PAID = "paid"
    VOID = "void"


_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    InvoiceStatus.DRAFT: frozenset({InvoiceStatus.FINALIZED, InvoiceStatus.VOID}),
    InvoiceStatus.FINALIZED: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
    InvoiceStatus.PAID: frozenset(),
    InvoiceStatus.VOID: frozenset(),
}


class LineKind(StrEnum):
    FIXED_FEE = "fixed_fee"
    PRORATION_CHARGE = "proration_charge"
    PRORATION_CREDIT = "proration_credit"
    USAGE = "usage"
    ADJUSTMENT = "adjustment"
    DISCOUNT = "discount"
    TAX = "tax"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return f"{value:f}"  # never "1.5E-7" in a document a customer reads
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line; ``amount`` is in minor units, the other fields explain it."""

    kind: LineKind
    description: str
    amount: Money
    exact_amount: Decimal | None = None  # usage: the unrounded sum of request charges
    plan: PlanRef | None = None
    model: str | None = None
    metric: Metric | None = None
    quantity: Quantity | None = None
    included: Quantity | None = None
    overage: Quantity | None = None
    charges: int | None = None  # usage: how many request charges were summed
    span: Period | None = None  # fees and proration: the part of the period covered

    def __post_init__(self) -> None:
        if not self.amount.is_quantized:
            raise ValueError(f"invoice line amount {self.amount} is not in minor units")

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "kind": self.kind.value,
            "description": self.description,
            "plan": _text(self.plan),
            "model": self.model,
            "metric": None if self.metric is None else self.metric.value,
            "quantity": _text(self.quantity),
            "included": _text(self.included),
            "overage": _text(self.overage),
            "charges": self.charges,
            "exact_amount": _text(self.exact_amount),
            "amount": _text(self.amount.amount),
            "currency": self.amount.currency,
            "span_start": None if self.span is None else self.span.start.isoformat(),
            "span_end": None if self.span is None else self.span.end.isoformat(),
        }


CSV_COLUMNS = (
    "kind",
    "description",
    "plan",
    "model",
    "metric",
    "quantity",
    "included",
    "overage",
    "charges",
    "exact_amount",
    "amount",
    "currency",
    "span_start",
    "span_end",
)
"""Columns of ``Invoice.lines_csv`` (the keys of ``InvoiceLine.to_dict``), in order."""


class Invoice:
    """One organisation's bill for one period, from draft to paid or void."""

    def __init__(
        self,
        *,
        invoice_id: str,
        organization_id: str,
        period: Period,
        currency: str,
        plans: Iterable[PlanRef] = (),
        lines: Iterable[InvoiceLine] = (),
        coupon: Coupon | None = None,
        tax_rate: TaxRate | None = None,
    ) -> None:
        self.id = invoice_id
        self.organization_id = organization_id
        self.period = period
        self.currency = Money.zero(currency).currency
        self.plans = tuple(plans)
        self.coupon = coupon
        self.tax_rate = tax_rate if tax_rate is not None else TaxRate.none()
        self._status = InvoiceStatus.DRAFT
        self._charge_lines: list[InvoiceLine] = []
        self._stamps: dict[InvoiceStatus, datetime] = {}
        for line in lines:
            self._add(line)

    # -- lines and totals -----------------------------------------------------------------

    def _add(self, line: InvoiceLine) -> InvoiceLine:
        if self._status is not InvoiceStatus.DRAFT:
            raise InvoiceImmutable(f"invoice {self.id} is {self._status.value}; only drafts change")
        if line.kind in (LineKind.DISCOUNT, LineKind.TAX):
            raise ValueError("discount and tax lines are derived, not added")
        if line.amount.currency != self.currency:
            raise CurrencyMismatch(
                f"a {line.amount.currency} line on a {self.currency} invoice {self.id}"
            )
        self._charge_lines.append(line)
        return line

    def add_adjustment(self, description: str, amount: Money) -> InvoiceLine:
        """A manual charge (positive) or credit (negative), rounded to minor units."""
        return self._add(InvoiceLine(LineKind.ADJUSTMENT, description, amount.quantize()))

    @property
    def charge_lines(self) -> tuple[InvoiceLine, ...]:
        return tuple(self._charge_lines)

    @property
    def subtotal(self) -> Money:
        return Money.total((line.amount for line in self._charge_lines), self.currency)

    @property
    def discount(self) -> Money:
        """The coupon's discount (positive), between zero and the subtotal."""
        if self.coupon is None:
            return Money.zero(self.currency)
        return self.coupon.discount_on(self.subtotal)

    @property
    def tax(self) -> Money:
        return self.tax_rate.tax_on(self.subtotal - self.discount)

    @property
    def total(self) -> Money:
        return self.subtotal - self.discount + self.tax

    @property
    def lines(self) -> tuple[InvoiceLine, ...]:
        """Charge lines, then the discount and tax lines when they are not zero."""
        derived: list[InvoiceLine] = []
        discount = self.discount
        if not discount.is_zero:
            assert self.coupon is not None
            derived.append(InvoiceLine(LineKind.DISCOUNT, f"Coupon {self.coupon.code}", -discount))
        tax = self.tax
        if not tax.is_zero:
            derived.append(InvoiceLine(LineKind.TAX, str(self.tax_rate), tax))
        return (*self._charge_lines, *derived)

    @property
    def usage_exact_total(self) -> Decimal:
        """The unrounded sum of every request charge behind the usage lines."""
        return exact_sum(
            line.exact_amount
            for line in self._charge_lines
            if line.kind is LineKind.USAGE and line.exact_amount is not None
        )

    @property
    def rounding_difference(self) -> Decimal:
        """Rounded usage lines minus the exact charges: under half a minor unit per line."""
        rounded = exact_sum(
            line.amount.amount for line in self._charge_lines if line.kind is LineKind.USAGE
        )
        return EXACT.subtract(rounded, self.usage_exact_total)

    # -- life cycle -----------------------------------------------------------------------

    @property
    def status(self) -> InvoiceStatus:
        return self._status

    def stamp(self, status: InvoiceStatus) -> datetime | None:
        """When the invoice entered ``status`` (None if it never did)."""
        return self._stamps.get(status)

    def _move(self, target: InvoiceStatus, at: datetime) -> None:
        if target not in _TRANSITIONS[self._status]:
            raise InvalidInvoiceTransition(
                f"invoice {self.id} is {self._status.value}; it cannot become {target.value}"
            )
        self._stamps[target] = utc(at, f"{target.value} time")
        self._status = target

    def finalize(self, at: datetime) -> None:
        """Freeze the invoice: no more lines, totals fixed, ready to be sent."""
        self._move(InvoiceStatus.FINALIZED, at)

    def mark_paid(self, at: datetime) -> None:
        self._move(InvoiceStatus.PAID, at)

    def void(self, at: datetime) -> None:
        """Cancel the invoice; a paid invoice is refunded first (``void_refunded``)."""
        self._move(InvoiceStatus.VOID, at)

    def void_refunded(self, at: datetime) -> None:
        """Cancel a paid invoice whose payment was refunded in full: the refund is its
        credit note (``payments.collection.Payments.refund_invoice``). Its totals stay
        as they were billed; ``paid_at`` and ``void_at`` both remain on record."""
        if self._status is not InvoiceStatus.PAID:
            raise InvalidInvoiceTransition(
                f"invoice {self.id} is {self._status.value}; only a paid invoice is refunded"
            )
        self._stamps[InvoiceStatus.VOID] = utc(at, "void time")
        self._status = InvoiceStatus.VOID

    # -- export -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view: amounts as decimal strings, instants as ISO 8601."""
        stamps = {f"{status.value}_at": _text(self.stamp(status)) for status in InvoiceStatus}
        del stamps["draft_at"]
        return {
            "id": self.id,
            "organization_id": self.organization_id,
            "period_start": self.period.start.isoformat(),
            "period_end": self.period.end.isoformat(),
            "currency": self.currency,
            "status": self._status.value,
            "plans": [str(ref) for ref in self.plans],
            "coupon": None if self.coupon is None else self.coupon.code,
            "tax_rate": _text(self.tax_rate.percent),
            "lines": [line.to_dict() for line in self.lines],
            "subtotal": _text(self.subtotal.amount),
            "discount": _text(self.discount.amount),
            "tax": _text(self.tax.amount),
            "total": _text(self.total.amount),
            "usage_exact_total": _text(self.usage_exact_total),
            **stamps,
        }

    def lines_csv(self) -> str:
        """Every line (discount and tax included) as CSV with a header row."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for line in self.lines:
            writer.writerow(line.to_dict())
        return buffer.getvalue()
