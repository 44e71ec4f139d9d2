"""Invoices: the list with filters, a printable HTML view, its CSV, and closing a month."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from modelmint import accounts, billing_admin
from modelmint.billing.periods import Period
from modelmint.billing_admin import close_period
from modelmint.clock import utcnow
from modelmint.dashboard.auth import CheckedForm, CurrentSession
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page, redirect
from modelmint.payments import status as payment_status
from modelmint.platform import PlatformDep
from modelmint.web.responses import attachment

__all__ = ["invoice_document", "invoice_list", "router"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)
STATUSES = ("draft", "finalized", "paid", "void")


def invoice_list(
    session: Session, organization: str | None, period: str | None, status: str | None
) -> dict[str, Any]:
    """Invoice headers, newest period first, and the organisations to filter by."""
    rows = billing_admin.list_invoices(session, organization, period, status)
    return {
        "invoices": list(reversed(rows)),
        # How each invoice's collection stands, for those collected through the provider.
        "payments": payment_status.invoice_payments(session, [row["id"] for row in rows]),
        "organizations": [org.name for org in accounts.list_orgs(session)],
    }


def invoice_document(session: Session, invoice_id: str) -> dict[str, Any]:
    """The invoice with its lines, and the organisation's name for the header."""
    invoice = billing_admin.show_invoice(session, invoice_id)
    org = accounts.get_org(session, str(invoice["organization_id"]))
    payment = payment_status.invoice_payments(session, [invoice_id]).get(invoice_id)
    return {**invoice, "organization": org.name, "payment": payment}


@router.get("/invoices")
async def invoices_page(
    request: Request,
    session: CurrentSession,
    platform: PlatformDep,
    organization: str | None = Query(default=None),
    period: str | None = Query(default=None),
    status: str | None = Query(default=None),
    closed: int | None = Query(default=None, ge=0),
) -> Response:
    filters = {"organization": organization or None, "period": period or None}
    filters["status"] = status or None
    data = await platform.in_session(lambda s: invoice_list(s, **filters))
    context = {
        "title": "Invoices",
        "active": "invoices",
        **data,
        "filters": {k: v or "" for k, v in filters.items()},
        "statuses": STATUSES,
        "closed": closed,
        "default_period": f"{utcnow():%Y-%m}",
    }
    return page(request, session, "invoices.html", context)


@router.post("/invoices/close")
async def close_invoices(platform: PlatformDep, form: CheckedForm) -> Response:
    period = Period.parse(form.text("period"))
    closed = await asyncio.to_thread(
        close_period,
        platform.database,
        period,
        organization=form.optional("organization"),
        now=utcnow(),
        allow_open=form.text("allow_open") == "on",
    )
    created = sum(1 for c in closed if c.created)
    return redirect(f"{BASE}/invoices?period={period.start:%Y-%m}&closed={created}")


@router.get("/invoices/{invoice_id}")
async def invoice_page(
    request: Request, session: CurrentSession, platform: PlatformDep, invoice_id: str
) -> Response:
    invoice = await platform.in_session(lambda s: invoice_document(s, invoice_id))
    context = {"title": f"Invoice {invoice_id}", "active": "invoices", "invoice": invoice}
    return page(request, session, "invoice.html", context)


@router.get("/invoices/{invoice_id}/csv")
async def invoice_csv(platform: PlatformDep, invoice_id: str) -> Response:
    text = await platform.in_session(lambda s: billing_admin.invoice_csv(s, invoice_id))
    return attachment(text, "text/csv; charset=utf-8", f"{invoice_id}.csv")


@router.get("/invoices/{invoice_id}/pdf")
async def invoice_pdf(platform: PlatformDep, invoice_id: str) -> Response:
    pdf = await platform.in_session(lambda s: billing_admin.invoice_pdf(s, invoice_id))
    return attachment(pdf, "application/pdf", f"{invoice_id}.pdf")
