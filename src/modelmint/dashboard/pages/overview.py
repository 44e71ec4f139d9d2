"""The overview: revenue, cost and margin over time, the window's totals and MRR."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from modelmint.analytics import Dimension, breakdown, overview
from modelmint.analytics.costs import deployment_economics
from modelmint.analytics.ratios import percent
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.dashboard import charts
from modelmint.dashboard.auth import CurrentSession
from modelmint.dashboard.pages.reports import ReportQuery, WindowDep
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.platform import PlatformDep

__all__ = ["all_in_cost", "overview_data", "router"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)
TOP = 5


def all_in_cost(
    session: Session, window: Period, currency: str, measured: Decimal
) -> Decimal | None:
    """The window's serving cost with idle machine hours included: a deployment priced by
    the hour costs its hours whether busy or not, so its share of the measured cost (engine
    time x rate) is replaced by hours x rate. None when no deployment is priced by the hour."""
    hourly = [
        d
        for d in deployment_economics(session, window, currency=currency)
        if d.hardware_cost is not None
    ]
    if not hourly:
        return None
    total = measured
    for deployment in hourly:
        assert deployment.hardware_cost is not None
        total = EXACT.add(EXACT.subtract(total, deployment.cost), deployment.hardware_cost)
    return total


def _all_in(
    session: Session, window: Period, currency: str, revenue: Decimal, measured: Decimal
) -> dict[str, Any] | None:
    cost = all_in_cost(session, window, currency, measured)
    if cost is None:
        return None
    margin = EXACT.subtract(revenue, cost)
    return {"cost": cost, "margin": margin, "margin_pct": percent(margin, revenue)}


def overview_data(session: Session, query: ReportQuery) -> dict[str, Any]:
    """Totals, MRR, the daily charts and the top customers and models of the window."""
    window = query.window.period
    summary = overview(session, window, currency=query.currency)
    currency = summary.currency
    days = [row.key for row in summary.days]
    figures = [
        (
            "chart-money",
            charts.money_over_time(
                days,
                [row.revenue for row in summary.days],
                [row.cost for row in summary.days],
                [row.margin for row in summary.days],
                currency,
            ),
            "Revenue, cost and margin per day",
        ),
        (
            "chart-requests",
            charts.requests_over_time(
                days, [row.requests for row in summary.days], [row.errors for row in summary.days]
            ),
            "Requests per day",
        ),
    ]
    customers = breakdown(session, window, Dimension.ORGANIZATION, currency=currency)
    models = breakdown(session, window, Dimension.MODEL, currency=currency)
    return {
        "currency": currency,
        "total": summary.total,
        "all_in": _all_in(session, window, currency, summary.total.revenue, summary.total.cost),
        "recurring": summary.recurring,
        "charts": figures,
        "top_customers": customers.rows[:TOP],
        "top_models": models.rows[:TOP],
    }


@router.get("")
async def overview_page(
    request: Request, session: CurrentSession, platform: PlatformDep, query: WindowDep
) -> Response:
    data = await platform.in_session(lambda s: overview_data(s, query))
    context = {"title": "Overview", "active": "overview", **query.context(), **data}
    return page(request, session, "overview.html", context)
