"""Customers: each organisation's plan, wallet, keys and invoices (and usage, from analytics)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from modelmint import accounts, billing_admin
from modelmint.analytics import Breakdown, Dimension, breakdown, cohorts
from modelmint.billing.serialization import Json
from modelmint.dashboard import charts
from modelmint.dashboard.auth import CurrentSession
from modelmint.dashboard.pages.reports import ReportQuery, WindowDep
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.payments import status as payment_status
from modelmint.platform import PlatformDep
from modelmint.storage.tables import Organization, PaymentAccount

__all__ = ["customer_detail", "customer_rows", "router"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)
_LEDGER_ENTRIES = 20
# Growth, churn and retention are shown over the last half year of calendar months.
COHORT_MONTHS = 6


def _current_plan(session: Session, org: Organization) -> Json | None:
    subscriptions = billing_admin.list_subscriptions(session, org.id)
    active = [s for s in subscriptions if s["status"] == "active"]
    return active[-1] if active else None


def _wallets(session: Session, org: Organization) -> list[Json]:
    return [
        billing_admin.wallet_balance(session, org.id, currency)
        for currency in billing_admin.wallet_currencies(session, org.id)
    ]


def _summary(
    session: Session, org: Organization, payment_accounts: dict[str, PaymentAccount] | None = None
) -> dict[str, Any]:
    keys = accounts.list_keys(session, org)
    account = (
        payment_accounts.get(org.id)
        if payment_accounts is not None
        else session.get(PaymentAccount, org.id)
    )
    invoices = billing_admin.list_invoices(session, org.id)
    open_invoices = [i for i in invoices if i["status"] == "finalized"]
    return {
        "id": org.id,
        "name": org.name,
        "created_at": org.created_at,
        "plan": _current_plan(session, org),
        "wallets": _wallets(session, org),
        "active_keys": sum(1 for k in keys if k.revoked_at is None),
        "invoices": len(invoices),
        "unpaid": [(i["total"], i["currency"]) for i in open_invoices],
        # Payment method, dunning block and auto top-up (all None without payments).
        "payment": payment_status.account_json(org, account),
    }


def customer_rows(session: Session, query: ReportQuery) -> dict[str, Any]:
    """One summary per organisation (plan, wallets, keys, unpaid invoices), each one's
    usage, revenue and margin in the window (keyed by organisation id), and growth and
    churn by monthly cohort."""
    usage = breakdown(session, query.window.period, Dimension.ORGANIZATION, currency=query.currency)
    payment_accounts = payment_status.accounts_by_organization(session)
    return {
        "customers": [
            _summary(session, org, payment_accounts) for org in accounts.list_orgs(session)
        ],
        "usage": {row.key: row for row in usage.rows},
        "currency": usage.currency,
        "cohorts": cohorts(session, months=COHORT_MONTHS, currency=usage.currency),
    }


def _usage_charts(by_day: Breakdown) -> list[tuple[str, charts.Figure, str]]:
    days = [row.key for row in by_day.rows]
    money = charts.money_over_time(
        days,
        [row.revenue for row in by_day.rows],
        [row.cost for row in by_day.rows],
        [row.margin for row in by_day.rows],
        by_day.currency,
    )
    requests = charts.requests_over_time(
        days, [row.requests for row in by_day.rows], [row.errors for row in by_day.rows]
    )
    return [
        ("chart-customer-money", money, "Revenue, cost and margin per day"),
        ("chart-customer-requests", requests, "Requests per day"),
    ]


def customer_detail(session: Session, organization: str, query: ReportQuery) -> dict[str, Any]:
    """Everything about one organisation: billing state, and usage in the window."""
    org = accounts.get_org(session, organization)
    window = query.window.period
    by_model = breakdown(
        session, window, Dimension.MODEL, currency=query.currency, organization=org.id
    )
    by_day = breakdown(
        session, window, Dimension.DAY, currency=by_model.currency, organization=org.id
    )
    wallets = _wallets(session, org)
    invoices = billing_admin.list_invoices(session, org.id)
    ledgers = {
        w["currency"]: billing_admin.wallet_ledger(session, org.id, w["currency"], _LEDGER_ENTRIES)
        for w in wallets
    }
    return {
        **_summary(session, org),
        "wallets": wallets,
        "ledgers": ledgers,
        "subscriptions": billing_admin.list_subscriptions(session, org.id),
        "keys": accounts.list_keys(session, org),
        "invoice_rows": list(reversed(invoices)),
        "invoice_payments": payment_status.invoice_payments(
            session, [row["id"] for row in invoices]
        ),
        "budgets": billing_admin.list_budgets(session, org.id),
        "limits": {"rpm": org.rpm_limit, "tpm": org.tpm_limit, "concurrent": org.max_concurrent},
        "usage": by_model,
        "charts": _usage_charts(by_day),
    }


@router.get("/customers")
async def customers_page(
    request: Request, session: CurrentSession, platform: PlatformDep, query: WindowDep
) -> Response:
    data = await platform.in_session(lambda s: customer_rows(s, query))
    context = {"title": "Customers", "active": "customers", **query.context(), **data}
    return page(request, session, "customers.html", context)


@router.get("/customers/{organization}")
async def customer_page(
    request: Request,
    session: CurrentSession,
    platform: PlatformDep,
    query: WindowDep,
    organization: str,
) -> Response:
    detail = await platform.in_session(lambda s: customer_detail(s, organization, query))
    context = {
        "title": detail["name"],
        "active": "customers",
        **query.context(),
        "currency": detail["usage"].currency,
        "customer": detail,
    }
    return page(request, session, "customer.html", context)
