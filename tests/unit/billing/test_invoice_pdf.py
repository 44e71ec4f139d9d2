"""Invoice PDFs: every line and total of the JSON invoice, read back from the PDF's text."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader

from modelmint.billing import (
    AmountOff,
    Coupon,
    CouponDuration,
    Invoice,
    InvoiceLine,
    LineKind,
    Metric,
    Money,
    PercentOff,
    Period,
    PlanRef,
    TaxRate,
)
from modelmint.billing.invoice_pdf import _fonts, invoice_pdf

D = Decimal
NOV = Period.month(2026, 11)
LATE_NOV = Period(datetime(2026, 11, 16, tzinfo=UTC), NOV.end)


def pages_of(pdf: bytes) -> list[str]:
    """Each page's text with runs of whitespace made one space (table cells wrap)."""
    assert pdf.startswith(b"%PDF-")
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


def words(text: str) -> str:
    return " ".join(text.split())


def usd_invoice() -> Invoice:
    """Fees, a proration credit, usage that was rounded, a percent coupon and VAT."""
    usd = "USD"
    bill = Invoice(
        invoice_id="inv_2026_11_acme",
        organization_id="org_acme",
        period=NOV,
        currency=usd,
        plans=[PlanRef("pro", 2)],
        lines=[
            InvoiceLine(LineKind.FIXED_FEE, "pro@v2 fee", Money.parse("1234567.89", usd), span=NOV),
            InvoiceLine(
                LineKind.PRORATION_CREDIT,
                "starter@v1 unused from 2026-11-16",
                Money.parse("-9.67", usd),
                span=LATE_NOV,
            ),
            InvoiceLine(
                LineKind.USAGE,
                "llama input_tokens: 1234567 tokens (1000 included, 1233567 charged)",
                Money.parse("0.19", usd),
                exact_amount=D("0.18503505"),
                model="llama",
                metric=Metric.INPUT_TOKENS,
                quantity=D(1234567),
                included=D(1000),
                overage=D(1233567),
                charges=42,
            ),
        ],
        coupon=Coupon("LAUNCH15", PercentOff(D("15")), CouponDuration.repeating(3)),
        tax_rate=TaxRate(D("20.5"), "VAT"),
    )
    bill.add_adjustment("Goodwill credit", Money.parse("-0.01", usd))
    bill.finalize(datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    return bill


def kwd_invoice() -> Invoice:
    """Three minor units and an amount-off coupon: nothing may be cut to two places."""
    bill = Invoice(
        invoice_id="inv_kwd",
        organization_id="org_gulf",
        period=NOV,
        currency="KWD",
        lines=[InvoiceLine(LineKind.FIXED_FEE, "team@v1 fee", Money.parse("10.125", "KWD"))],
        coupon=Coupon("KWD2", AmountOff(Money.parse("2.001", "KWD")), CouponDuration.once()),
        tax_rate=TaxRate(D("5"), "Sales tax"),
    )
    bill.finalize(datetime(2026, 12, 1, tzinfo=UTC))
    return bill


@pytest.mark.parametrize(
    ("bill", "discount_label"),
    [
        (usd_invoice(), "Discount: coupon LAUNCH15 (15% off)"),
        (kwd_invoice(), "Discount: coupon KWD2 (2.001 KWD off)"),
    ],
    ids=["usd-percent-coupon", "kwd-amount-coupon"],
)
def test_every_line_and_total_of_the_json_invoice_is_printed_exactly(
    bill: Invoice, discount_label: str
) -> None:
    data = bill.to_dict()
    text = " ".join(pages_of(invoice_pdf(bill, organization_name="Acme Corp")))
    currency = data["currency"]
    assert isinstance(currency, str)
    assert not bill.discount.is_zero and not bill.tax.is_zero

    lines = data["lines"]
    assert isinstance(lines, list) and [line["kind"] for line in lines][-2:] == [
        "discount",
        "tax",
    ]
    for line in lines:
        # One table row: kind, description, quantity (if any), amount with its currency.
        quantity = "" if line["quantity"] is None else f" {line['quantity']} {line['metric']}"
        row = f"{line['kind']} {words(line['description'])}{quantity} {line['amount']} {currency}"
        assert row in text
    assert f"Subtotal {data['subtotal']} {currency}" in text
    assert f"{discount_label} -{data['discount']} {currency}" in text
    assert f"Tax: {bill.tax_rate.name} {data['tax_rate']}% {data['tax']} {currency}" in text
    assert f"Total {data['total']} {currency}" in text
    for header in ("Organisation Acme Corp", f"Organisation id {data['organization_id']}"):
        assert header in text
    assert f"Status finalized Currency {currency}" in text
    assert f"Finalized {data['finalized_at']}" in text


def test_the_totals_are_those_of_the_json_to_the_last_unit() -> None:
    # The usd invoice's figures, worked out by hand, so a renderer that re-rounds shows.
    text = " ".join(pages_of(invoice_pdf(usd_invoice())))
    assert "Subtotal 1234558.40 USD" in text
    assert "-185183.76 USD" in text  # 15% of the subtotal, half-even
    assert "Tax: VAT 20.5% 215121.80 USD" in text  # 20.5% of 1049374.64
    assert "Total 1264496.44 USD" in text
    assert "Organisation Acme" not in text  # no name given: only the id is shown


def test_an_invoice_without_coupon_or_tax_says_so() -> None:
    bill = Invoice(
        invoice_id="inv_plain",
        organization_id="org",
        period=NOV,
        currency="JPY",
        lines=[InvoiceLine(LineKind.FIXED_FEE, "fee", Money.parse("1500", "JPY"))],
    )
    text = " ".join(pages_of(invoice_pdf(bill)))
    assert "Subtotal 1500 JPY Discount 0 JPY Tax: No tax 0% 0 JPY Total 1500 JPY" in text
    assert "Status draft" in text


def test_a_hundred_lines_break_across_pages_with_the_heading_on_each() -> None:
    bill = Invoice(invoice_id="inv_long", organization_id="org", period=NOV, currency="EUR")
    for i in range(100):
        bill.add_adjustment(f"Adjustment {i:03d}", Money.parse(f"{i}.{i % 100:02d}", "EUR"))
    pages = pages_of(invoice_pdf(bill))

    assert len(pages) >= 3
    for number, page in enumerate(pages, start=1):
        assert "Kind Description Quantity Amount" in page  # the heading row repeats
        assert f"Invoice inv_long · page {number}" in page
    text = " ".join(pages)
    for i in range(100):
        assert f"adjustment Adjustment {i:03d} {i}.{i % 100:02d} EUR" in text
    assert f"Total {bill.total.amount:f} EUR" in pages[-1]
    assert "Total" not in pages[0]


def test_unicode_and_markup_in_descriptions_are_kept_as_text() -> None:
    assert _fonts().regular == "DejaVuSans", "install Debian's fonts-dejavu-core"
    descriptions = [
        "Перевод текстов — 1 000 запросов",
        "Ελληνικά: μετάφραση",
        "Łódź żółć, Straße, café, 5 € net",
        "<b>bold?</b> & <unclosed",
    ]
    bill = Invoice(invoice_id="inv_utf", organization_id="org", period=NOV, currency="EUR")
    for description in descriptions:
        bill.add_adjustment(description, Money.parse("1.00", "EUR"))
    # No font here draws these: they must cost a box each, never the invoice.
    bill.add_adjustment("東京 🚀 done", Money.parse("2.00", "EUR"))

    text = " ".join(pages_of(invoice_pdf(bill, organization_name="Société Générale ÆØÅ")))
    for description in descriptions:
        assert description in text
    assert "Société Générale ÆØÅ" in text
    assert "done 2.00 EUR" in text


def test_the_same_invoice_gives_the_same_bytes() -> None:
    bill = usd_invoice()
    assert invoice_pdf(bill) == invoice_pdf(bill)


def test_period_and_dates_come_from_the_json() -> None:
    bill = usd_invoice()
    bill.mark_paid(datetime(2026, 12, 3, tzinfo=UTC) + timedelta(hours=2))
    data = bill.to_dict()
    text = " ".join(pages_of(invoice_pdf(bill)))
    assert f"Period {data['period_start']} to {data['period_end']}" in text
    assert "Status paid" in text
    assert f"Paid {data['paid_at']}" in text


def test_invoices_rendered_at_once_on_threads_are_each_whole() -> None:
    # The admin API renders on worker threads; the font is shared by every document.
    bills = [usd_invoice(), kwd_invoice()] * 4
    alone = [invoice_pdf(bill) for bill in bills]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(invoice_pdf, bills))
    assert together == alone
