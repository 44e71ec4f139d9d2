"""The overview: revenue, cost and margin over time, the window's totals and MRR."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from modelmint.analytics import Dimension, breakdown, overview
from modelmint.dashboard import charts
from modelmint.dashboard.auth import CurrentSession
from modelmint.dashboard.pages.reports import ReportQuery, WindowDep
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.gateway.deps import PlatformDep

__all__ = ["overview_data", "router"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)
TOP = 5


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
