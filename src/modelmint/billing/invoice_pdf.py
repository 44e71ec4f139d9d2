"""The invoice as a PDF document a customer can read, print and file.

Every figure on the page is a string taken from ``Invoice.to_dict()`` (plain
decimal notation, never a float), so the PDF, the JSON and the CSV of one invoice
agree to the last minor unit. The document is A4: a header (id, organisation,
period, status, dates), a table of every line (the derived discount and tax lines
included), then subtotal, discount, tax and total. The lines table breaks across
pages and repeats its heading row; each page is numbered in its footer.

This is the one module of ``billing`` that imports a third-party package
(reportlab, for layout and font embedding); it renders, it decides nothing, and
the package does not import it, so the domain stays loadable without reportlab.

Text is set in DejaVu Sans, found by reportlab among the system's fonts (Debian's
``fonts-dejavu-core``): descriptions are the user's text, so they may hold any
script. Without it, reportlab's own Vera (a Latin-only ancestor of DejaVu) is
used; a character the font lacks is drawn as an empty box rather than failing the
whole invoice. Output is invariant (no creation time, fixed ids): the same
invoice always gives the same bytes.

    Path("inv_1.pdf").write_bytes(invoice_pdf(invoice, organization_name="acme"))
"""

from __future__ import annotations

import io
import logging
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple
from xml.sax.saxutils import escape

import reportlab  # type: ignore[import-untyped]
from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib.enums import TA_RIGHT  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
from reportlab.lib.styles import ParagraphStyle  # type: ignore[import-untyped]
from reportlab.lib.units import mm  # type: ignore[import-untyped]
from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
from reportlab.pdfbase.ttfonts import TTFError, TTFont  # type: ignore[import-untyped]
from reportlab.platypus import (  # type: ignore[import-untyped]
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from modelmint.billing.coupons import AmountOff, Coupon
from modelmint.billing.invoices import Invoice

__all__ = ["invoice_pdf"]

log = logging.getLogger(__name__)

_MARGIN = 18 * mm
_HAIRLINE = mm / 10  # a rule between lines, thin enough not to compete with the text
_GRID = colors.HexColor("#c8c8c8")
_SHADE = colors.HexColor("#f2f2f2")


class _Fonts(NamedTuple):
    regular: str
    bold: str


@cache
def _fonts() -> _Fonts:
    """Register the text font once per process: DejaVu Sans, else reportlab's Vera."""
    try:
        # A bare file name: reportlab looks for it in the system's font folders.
        regular, bold = (
            TTFont("DejaVuSans", "DejaVuSans.ttf"),
            TTFont("DejaVuSans-Bold", "DejaVuSans-Bold.ttf"),
        )
    except TTFError:
        log.warning(
            "DejaVu Sans is not installed (Debian: fonts-dejavu-core); invoice PDFs use "
            "Vera, which draws non-Latin text as empty boxes"
        )
        shipped = Path(reportlab.__file__).parent / "fonts"
        regular = TTFont("Vera", str(shipped / "Vera.ttf"))
        bold = TTFont("Vera-Bold", str(shipped / "VeraBd.ttf"))
    pdfmetrics.registerFont(regular)
    pdfmetrics.registerFont(bold)
    return _Fonts(regular.fontName, bold.fontName)


class _Styles(NamedTuple):
    title: Any
    text: Any
    strong: Any
    number: Any
    strong_number: Any


def _styles(fonts: _Fonts) -> _Styles:
    text = ParagraphStyle("text", fontName=fonts.regular, fontSize=9, leading=11)
    strong = ParagraphStyle("strong", parent=text, fontName=fonts.bold)
    return _Styles(
        title=ParagraphStyle("title", parent=strong, fontSize=16, leading=20, spaceAfter=4 * mm),
        text=text,
        strong=strong,
        number=ParagraphStyle("number", parent=text, alignment=TA_RIGHT),
        strong_number=ParagraphStyle("strong_number", parent=strong, alignment=TA_RIGHT),
    )


def _cell(text: str, style: Any) -> Any:
    # Paragraph reads a small XML markup: user text is escaped so "<b>" stays text.
    return Paragraph(escape(text), style)


def _coupon_terms(coupon: Coupon) -> str:
    off = coupon.discount
    if isinstance(off, AmountOff):
        return f"{off.amount.amount:f} {off.amount.currency} off"
    return f"{off.percent:f}% off"


def _header(data: dict[str, Any], organization: str | None, st: _Styles) -> Any:
    rows = [] if organization is None else [("Organisation", organization)]
    rows += [
        ("Organisation id", data["organization_id"]),
        ("Period", f"{data['period_start']} to {data['period_end']} (end excluded)"),
        ("Status", data["status"]),
        ("Currency", data["currency"]),
    ]
    if data["plans"]:
        rows.append(("Plans", ", ".join(data["plans"])))
    for key, label in (("finalized_at", "Finalized"), ("paid_at", "Paid"), ("void_at", "Void")):
        if data.get(key) is not None:
            rows.append((label, data[key]))
    table = Table(
        [[_cell(label, st.strong), _cell(value, st.text)] for label, value in rows],
        colWidths=[35 * mm, None],
        hAlign="LEFT",
    )
    # No left padding: the labels line up with the title above them.
    table.setStyle(
        TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (0, -1), 0)])
    )
    return table


def _lines(data: dict[str, Any], st: _Styles, width: float) -> Any:
    heading = [_cell(h, st.strong) for h in ("Kind", "Description", "Quantity")]
    rows = [[*heading, _cell("Amount", st.strong_number)]]
    for line in data["lines"]:
        quantity = line["quantity"] or ""
        if quantity and line["metric"]:
            quantity = f"{quantity} {line['metric']}"
        rows.append(
            [
                _cell(line["kind"], st.text),
                _cell(line["description"], st.text),
                _cell(quantity, st.text),
                _cell(f"{line['amount']} {line['currency']}", st.number),
            ]
        )
    fixed = 30 * mm + 38 * mm + 32 * mm
    table = Table(rows, colWidths=[30 * mm, width - fixed, 38 * mm, 32 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, 0), 1, colors.black),
                ("LINEBELOW", (0, 1), (-1, -1), _HAIRLINE, _GRID),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, _SHADE]),
            ]
        )
    )
    return table


def _totals(invoice: Invoice, data: dict[str, Any], st: _Styles) -> Any:
    currency = data["currency"]
    discount_label = "Discount"
    if invoice.coupon is not None:
        discount_label += f": coupon {invoice.coupon.code} ({_coupon_terms(invoice.coupon)})"
    # The discount is never negative; it is printed as what it does to the total.
    discount = data["discount"] if invoice.discount.is_zero else f"-{data['discount']}"
    rows = [
        (_cell("Subtotal", st.text), _cell(f"{data['subtotal']} {currency}", st.number)),
        (_cell(discount_label, st.text), _cell(f"{discount} {currency}", st.number)),
        (
            _cell(f"Tax: {invoice.tax_rate.name} {data['tax_rate']}%", st.text),
            _cell(f"{data['tax']} {currency}", st.number),
        ),
        (_cell("Total", st.strong), _cell(f"{data['total']} {currency}", st.strong_number)),
    ]
    table = Table(rows, colWidths=[90 * mm, 40 * mm], hAlign="RIGHT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEABOVE", (0, -1), (-1, -1), 1, colors.black),
            ]
        )
    )
    return KeepTogether([Spacer(1, 4 * mm), table])


def invoice_pdf(invoice: Invoice, *, organization_name: str | None = None) -> bytes:
    """The invoice as an A4 PDF whose figures are exactly those of ``invoice.to_dict()``."""
    fonts = _fonts()
    st = _styles(fonts)
    data = invoice.to_dict()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN,
        title=f"Invoice {invoice.id}",
        author="ModelMint",
        creator="ModelMint",
        invariant=True,
    )

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(fonts.regular, 8)
        canvas.drawRightString(
            A4[0] - _MARGIN, _MARGIN / 2, f"Invoice {invoice.id} · page {doc.page}"
        )
        canvas.restoreState()

    story = [
        _cell(f"Invoice {invoice.id}", st.title),
        _header(data, organization_name, st),
        Spacer(1, 6 * mm),
        _lines(data, st, document.width),
        _totals(invoice, data, st),
    ]
    document.build(story, onFirstPage=footer, onLaterPages=footer)
    pdf: bytes = buffer.getvalue()
    return pdf
