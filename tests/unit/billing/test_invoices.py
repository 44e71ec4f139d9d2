"""Invoices: totals in a fixed order, a strict life cycle, JSON and CSV export."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from modelmint.billing import (
    AmountOff,
    Coupon,
    CouponDuration,
    CurrencyMismatch,
    InvalidInvoiceTransition,
    Invoice,
    InvoiceImmutable,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Metric,
    Money,
    PercentOff,
    Period,
    PlanRef,
    TaxRate,
)
from modelmint.billing.invoices import CSV_COLUMNS

D = Decimal
NOV = Period.month(2026, 11)
WHEN = datetime(2026, 12, 1, 1, tzinfo=UTC)


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def invoice(*amounts: str, coupon: Coupon | None = None, tax: TaxRate | None = None) -> Invoice:
    lines = [InvoiceLine(LineKind.FIXED_FEE, f"line {i}", usd(a)) for i, a in enumerate(amounts)]
    return Invoice(
        invoice_id="inv_1",
        organization_id="org",
        period=NOV,
        currency="USD",
        plans=[PlanRef("pro", 1)],
        lines=lines,
        coupon=coupon,
        tax_rate=tax,
    )


def test_subtotal_then_discount_then_tax_on_the_discounted_subtotal() -> None:
    ten_percent = Coupon("TEN", PercentOff(D("10")), CouponDuration.once())
    bill = invoice("60.00", "40.00", coupon=ten_percent, tax=TaxRate(D("20"), "VAT"))
    assert (bill.subtotal, bill.discount, bill.tax, bill.total) == (
        usd("100.00"),
        usd("10.00"),
        usd("18.00"),
        usd("108.00"),
    )
    assert [(line.kind, line.amount) for line in bill.lines[-2:]] == [
        (LineKind.DISCOUNT, usd("-10.00")),
        (LineKind.TAX, usd("18.00")),
    ]
    assert Money.total((line.amount for line in bill.lines), "USD") == bill.total


def test_a_coupon_larger_than_the_subtotal_stops_at_zero() -> None:
    big = Coupon("BIG", AmountOff(usd("500")), CouponDuration.forever())
    bill = invoice("30.00", coupon=big, tax=TaxRate(D("20")))
    assert (bill.discount, bill.tax, bill.total) == (usd("30.00"), usd("0.00"), usd("0.00"))


def test_the_happy_life_cycle() -> None:
    bill = invoice("10")
    assert bill.status.value == "draft"
    bill.add_adjustment("goodwill", usd("-1.005"))  # rounded half-even to -1.00
    bill.finalize(WHEN)
    bill.mark_paid(WHEN)
    assert bill.status is InvoiceStatus.PAID
    assert bill.total == usd("9.00")
    assert bill.stamp(InvoiceStatus.FINALIZED) == WHEN


@pytest.mark.parametrize(
    ("steps", "illegal"),
    [
        (["finalize"], "finalize"),  # finalizing twice
        (["void"], "mark_paid"),  # paying a void draft
        (["finalize", "void"], "mark_paid"),  # paying a void invoice
        (["finalize", "mark_paid"], "void"),  # voiding a paid invoice
        ([], "mark_paid"),  # paying a draft
        (["void"], "finalize"),
        (["finalize"], "void_refunded"),  # refunding what was never paid
        (["finalize", "mark_paid", "void_refunded"], "void_refunded"),  # twice
    ],
)
def test_illegal_transitions_are_refused(steps: list[str], illegal: str) -> None:
    bill = invoice("10")
    for step in steps:
        getattr(bill, step)(WHEN)
    status = bill.status
    with pytest.raises(InvalidInvoiceTransition) as caught:
        getattr(bill, illegal)(WHEN)
    assert caught.value.status_code == 409
    assert bill.status is status


def test_a_refunded_paid_invoice_is_void_with_both_stamps_and_its_totals() -> None:
    bill = invoice("10")
    bill.finalize(WHEN)
    bill.mark_paid(WHEN)
    later = WHEN + timedelta(days=3)
    bill.void_refunded(later)
    assert bill.status is InvoiceStatus.VOID
    assert (bill.stamp(InvoiceStatus.PAID), bill.stamp(InvoiceStatus.VOID)) == (WHEN, later)
    assert bill.total == usd("10.00")


def test_a_finalized_invoice_is_immutable() -> None:
    bill = invoice("10", tax=TaxRate(D("10")))
    bill.finalize(WHEN)
    total = bill.total
    with pytest.raises(InvoiceImmutable, match="only drafts change"):
        bill.add_adjustment("late fee", usd("5"))
    assert bill.total == total == usd("11.00")
    assert isinstance(bill.charge_lines, tuple)


def test_lines_must_share_the_currency_and_be_in_minor_units() -> None:
    bill = invoice("10")
    with pytest.raises(CurrencyMismatch):
        bill.add_adjustment("x", Money.parse("1", "EUR"))
    with pytest.raises(ValueError, match="minor units"):
        InvoiceLine(LineKind.USAGE, "x", Money.of("0.001", "USD"))


def test_to_dict_is_json_ready_with_exact_decimal_strings() -> None:
    line = InvoiceLine(
        LineKind.USAGE,
        "m input_tokens",
        usd("0.00"),
        exact_amount=D("1.5E-7"),
        plan=PlanRef("pro", 1),
        model="m",
        metric=Metric.INPUT_TOKENS,
        quantity=1,
        included=0,
        overage=1,
        charges=1,
    )
    bill = invoice("12.50", tax=TaxRate(D("8")))
    bill.add_adjustment("credit", usd("-0.50"))
    bill = Invoice(
        invoice_id="inv_2",
        organization_id="org",
        period=NOV,
        currency="USD",
        plans=[PlanRef("pro", 1)],
        lines=[*bill.charge_lines, line],
        tax_rate=TaxRate(D("8")),
    )
    bill.finalize(WHEN)
    data = json.loads(json.dumps(bill.to_dict()))
    assert data["status"] == "finalized"
    assert data["plans"] == ["pro@v1"]
    assert (data["subtotal"], data["tax"], data["total"]) == ("12.00", "0.96", "12.96")
    assert data["finalized_at"] == WHEN.isoformat()
    assert data["paid_at"] is None
    usage = data["lines"][2]
    assert (usage["exact_amount"], usage["metric"], usage["plan"]) == (
        "0.00000015",
        "input_tokens",
        "pro@v1",
    )
    assert data["usage_exact_total"] == "0.00000015"


def test_csv_export_has_every_line_and_adds_up() -> None:
    bill = invoice("60.00", "40.00", tax=TaxRate(D("20")))
    rows = list(csv.DictReader(io.StringIO(bill.lines_csv())))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [row["kind"] for row in rows] == ["fixed_fee", "fixed_fee", "tax"]
    assert sum(D(row["amount"]) for row in rows) == bill.total.amount == D("120.00")
