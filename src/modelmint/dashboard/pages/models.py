"""Models and versions: revenue, cost, margin, latency and errors; unit economics per deployment."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from modelmint.analytics import Dimension, breakdown, deployment_economics, model_quality
from modelmint.dashboard import charts
from modelmint.dashboard.auth import CurrentSession
from modelmint.dashboard.pages.reports import ReportQuery, WindowDep
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.platform import PlatformDep

__all__ = ["models_data", "router"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)


def models_data(session: Session, query: ReportQuery) -> dict[str, Any]:
    """Per model and per version breakdowns, quality of service and deployment economics."""
    window = query.window.period
    by_model = breakdown(session, window, Dimension.MODEL, currency=query.currency)
    currency = by_model.currency
    by_version = breakdown(session, window, Dimension.VERSION, currency=currency)
    quality = {q.model: q for q in model_quality(session, window)}
    economics = deployment_economics(session, window, currency=currency)
    rows = by_model.rows
    figure = charts.bar_comparison(
        f"Revenue and cost per model ({currency})",
        [row.label for row in rows],
        [
            ("Revenue", [row.revenue for row in rows], charts.REVENUE),
            ("Cost", [row.cost for row in rows], charts.COST),
            ("Margin", [row.margin for row in rows], charts.MARGIN),
        ],
        currency,
    )
    return {
        "currency": currency,
        "models": rows,
        "models_total": by_model.total,
        "versions": by_version.rows,
        "quality": quality,
        "deployments": economics,
        "charts": [("chart-models", figure, "Revenue, cost and margin per model")],
    }


@router.get("/models")
async def models_page(
    request: Request, session: CurrentSession, platform: PlatformDep, query: WindowDep
) -> Response:
    data = await platform.in_session(lambda s: models_data(s, query))
    context = {"title": "Models", "active": "models", **query.context(), **data}
    return page(request, session, "models.html", context)
