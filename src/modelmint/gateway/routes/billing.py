"""Admin API for billing under /admin/billing: thin adapters around ``billing_admin``.

Every route runs one operation in one transaction (``platform.in_session``) and
returns its JSON-ready result; billing errors leave as the OpenAI error shape like
every other error. Money travels as decimal strings: a JSON number for an amount
is refused with a 400, because a JSON parser hands it over as a float.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy.orm import Session

from modelmint import billing_admin
from modelmint.billing.periods import Period
from modelmint.billing_admin import close_period
from modelmint.clock import utcnow
from modelmint.gateway.deps import AdminDep
from modelmint.platform import PlatformDep
from modelmint.web.responses import attachment

router = APIRouter(prefix="/admin/billing", tags=["billing"], dependencies=[AdminDep])


def _decimal_string(value: object) -> object:
    # Pydantic would say "should be a valid string"; say why a number is refused.
    if not isinstance(value, str):
        raise ValueError(
            f'send decimals as strings such as "5.00", not {type(value).__name__} '
            "(JSON numbers are read as inexact floats)"
        )
    return value


DecimalString = Annotated[str, BeforeValidator(_decimal_string), Field(min_length=1, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscriptionCreate(_Body):
    plan: str = Field(min_length=1, max_length=100, description="plan code")
    version: int | None = Field(default=None, ge=1, description="default: the latest")
    at: datetime | None = Field(default=None, description="default: now (with a UTC offset)")


class SubscriptionCancel(_Body):
    at: datetime | None = None


class WalletCreate(_Body):
    currency: str = Field(min_length=3, max_length=3)


class GrantCreate(_Body):
    amount: DecimalString
    currency: str = Field(min_length=3, max_length=3)
    kind: Literal["promotional", "paid"] = "promotional"
    priority: int | None = None
    expires_at: datetime | None = None
    reference: str | None = Field(default=None, max_length=200)


class CouponRedeem(_Body):
    code: str = Field(min_length=1, max_length=100)
    period: str = Field(description="first month it applies to, e.g. 2026-11")


class TaxRateSet(_Body):
    name: str = Field(default="Tax", min_length=1, max_length=100)
    percent: DecimalString


class InvoiceTransition(_Body):
    at: datetime | None = None


class BudgetSet(_Body):
    amount: DecimalString = Field(description="the monthly limit")
    currency: str = Field(min_length=3, max_length=3)
    hard: bool | None = Field(
        default=None,
        description="refuse requests (402) instead of alerting; "
        "default: the budget's current kind (hard for a new budget)",
    )
    thresholds: list[int] | None = Field(
        default=None,
        description="alert at these percents of the limit (1-100); "
        "default: the budget's current ones (50, 80, 100 for a new budget)",
    )
    key: str | None = Field(default=None, description="a key id: that key's own budget")


class WebhookSet(_Body):
    url: str | None = Field(description="http(s) URL alerts are POSTed to; null to stop")


Document = Annotated[dict[str, Any], Body(description="the document, as in the CLI's JSON file")]


# -- plans ----------------------------------------------------------------------------------


@router.get("/plans")
async def list_plans(platform: PlatformDep) -> list[dict[str, Any]]:
    return await platform.in_session(billing_admin.list_plans)


@router.post("/plans", status_code=201)
async def publish_plan(document: Document, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.publish_plan(s, document))


@router.get("/plans/{code}")
async def show_plan(
    code: str, platform: PlatformDep, version: int | None = Query(default=None, ge=1)
) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.show_plan(s, code, version))


# -- subscriptions --------------------------------------------------------------------------


@router.get("/organizations/{org}/subscriptions")
async def list_subscriptions(org: str, platform: PlatformDep) -> list[dict[str, Any]]:
    return await platform.in_session(lambda s: billing_admin.list_subscriptions(s, org))


@router.post("/organizations/{org}/subscriptions", status_code=201)
async def subscribe(org: str, body: SubscriptionCreate, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(
        lambda s: billing_admin.subscribe(s, org, body.plan, body.version, body.at)
    )


@router.post("/organizations/{org}/subscription/change")
async def change_plan(org: str, body: SubscriptionCreate, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(
        lambda s: billing_admin.change_plan(s, org, body.plan, body.version, body.at)
    )


@router.post("/organizations/{org}/subscription/cancel")
async def cancel_subscription(
    org: str, platform: PlatformDep, body: SubscriptionCancel | None = None
) -> dict[str, Any]:
    at = body.at if body is not None else None
    return await platform.in_session(lambda s: billing_admin.cancel(s, org, at))


# -- wallets --------------------------------------------------------------------------------


@router.post("/organizations/{org}/wallet", status_code=201)
async def open_wallet(org: str, body: WalletCreate, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.open_wallet(s, org, body.currency))


@router.get("/organizations/{org}/wallet")
async def wallet_balance(
    org: str, platform: PlatformDep, currency: str | None = Query(default=None)
) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.wallet_balance(s, org, currency))


@router.post("/organizations/{org}/wallet/grants", status_code=201)
async def grant_credit(org: str, body: GrantCreate, platform: PlatformDep) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        return billing_admin.grant_credit(
            session,
            org,
            body.amount,
            body.currency,
            kind=body.kind,
            priority=body.priority,
            expires_at=body.expires_at,
            reference=body.reference,
        )

    return await platform.in_session(work)


@router.get("/organizations/{org}/wallet/ledger")
async def wallet_ledger(
    org: str,
    platform: PlatformDep,
    currency: str | None = Query(default=None),
    limit: int = Query(default=100, ge=1, le=billing_admin.MAX_LEDGER_LIMIT),
) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.wallet_ledger(s, org, currency, limit))


# -- coupons and tax ------------------------------------------------------------------------


@router.get("/coupons")
async def list_coupons(platform: PlatformDep) -> list[dict[str, Any]]:
    return await platform.in_session(billing_admin.list_coupons)


@router.post("/coupons", status_code=201)
async def create_coupon(document: Document, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.create_coupon(s, document))


@router.post("/organizations/{org}/coupons", status_code=201)
async def redeem_coupon(org: str, body: CouponRedeem, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(
        lambda s: billing_admin.redeem_coupon(s, org, body.code, body.period)
    )


@router.put("/organizations/{org}/tax")
async def set_tax_rate(org: str, body: TaxRateSet, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(
        lambda s: billing_admin.set_tax_rate(s, org, body.name, body.percent)
    )


# -- invoices -------------------------------------------------------------------------------


# -- budgets and alerts ---------------------------------------------------------------------


@router.put("/organizations/{org}/budget")
async def set_budget(org: str, body: BudgetSet, platform: PlatformDep) -> dict[str, Any]:
    """Set the monthly budget of the organisation, or of one of its keys."""
    return await platform.in_session(
        lambda s: billing_admin.set_budget(
            s, org, body.amount, body.currency, hard=body.hard, thresholds=body.thresholds,
            key=body.key,
        )
    )  # fmt: skip


@router.delete("/organizations/{org}/budget", status_code=204)
async def remove_budget(
    org: str, platform: PlatformDep, key: str | None = Query(default=None)
) -> Response:
    await platform.in_session(lambda s: billing_admin.remove_budget(s, org, key))
    return Response(status_code=204)


@router.get("/organizations/{org}/budgets")
async def list_budgets(org: str, platform: PlatformDep) -> list[dict[str, Any]]:
    return await platform.in_session(lambda s: billing_admin.list_budgets(s, org))


@router.put("/organizations/{org}/alert-webhook")
async def set_alert_webhook(org: str, body: WebhookSet, platform: PlatformDep) -> dict[str, Any]:
    return await platform.in_session(lambda s: billing_admin.set_alert_webhook(s, org, body.url))


@router.get("/alerts")
async def list_alerts(
    platform: PlatformDep,
    organization: str | None = Query(default=None, description="name or id"),
    status: str | None = Query(default=None, description="pending, delivered, failed, unrouted"),
    limit: int = Query(default=100, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    return await platform.in_session(
        lambda s: billing_admin.list_alerts(s, organization, status, limit)
    )


class PeriodClose(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: str = Field(description="the month to close, e.g. 2026-11")
    organization: str | None = Field(default=None, description="only this one (name or id)")
    allow_open: bool = Field(default=False, description="close a month that has not ended")


@router.post("/invoices/close")
async def close_invoices(body: PeriodClose, platform: PlatformDep) -> list[dict[str, Any]]:
    """Draft and finalise the month's invoices; calling it again changes nothing."""
    closed = await asyncio.to_thread(
        close_period,
        platform.database,
        Period.parse(body.period),
        organization=body.organization,
        now=utcnow(),
        allow_open=body.allow_open,
    )
    return [{**c.invoice.to_dict(), "created": c.created} for c in closed]


@router.get("/invoices")
async def list_invoices(
    platform: PlatformDep,
    organization: str | None = Query(default=None, description="name or id"),
    period: str | None = Query(default=None, description="month, e.g. 2026-11"),
    status: str | None = Query(default=None, description="draft, finalized, paid or void"),
) -> list[dict[str, Any]]:
    return await platform.in_session(
        lambda s: billing_admin.list_invoices(s, organization, period, status)
    )


@router.get("/invoices/{invoice_id}", response_model=None)
async def show_invoice(
    invoice_id: str,
    platform: PlatformDep,
    format: Literal["json", "csv", "pdf"] = Query(default="json"),
) -> dict[str, Any] | Response:
    """The invoice as JSON, its lines as CSV with ``?format=csv``, or a PDF with ``?format=pdf``."""
    if format == "pdf":
        pdf = await platform.in_session(lambda s: billing_admin.invoice_pdf(s, invoice_id))
        return attachment(pdf, "application/pdf", f"{invoice_id}.pdf")
    if format == "csv":
        text = await platform.in_session(lambda s: billing_admin.invoice_csv(s, invoice_id))
        return attachment(text, "text/csv; charset=utf-8", f"{invoice_id}.csv")
    return await platform.in_session(lambda s: billing_admin.show_invoice(s, invoice_id))


@router.post("/invoices/{invoice_id}/pay")
async def pay_invoice(
    invoice_id: str, platform: PlatformDep, body: InvoiceTransition | None = None
) -> dict[str, Any]:
    at = body.at if body is not None else None
    return await platform.in_session(lambda s: billing_admin.pay_invoice(s, invoice_id, at))


@router.post("/invoices/{invoice_id}/void")
async def void_invoice(
    invoice_id: str, platform: PlatformDep, body: InvoiceTransition | None = None
) -> dict[str, Any]:
    at = body.at if body is not None else None
    return await platform.in_session(lambda s: billing_admin.void_invoice(s, invoice_id, at))
