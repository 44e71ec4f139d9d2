"""The usage explorer: single metered requests, filtered by organisation, model, status and
time, a page at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.analytics import UsageFilter, explore_usage
from modelmint.analytics.explorer import STATUS_CLASSES
from modelmint.dashboard.auth import CurrentSession
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.errors import InvalidRequest
from modelmint.platform import PlatformDep

__all__ = ["PAGE_SIZES", "parse_instant", "router", "usage_data"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)
PAGE_SIZES = (25, 50, 100, 200)


def parse_instant(value: str | None, name: str) -> datetime | None:
    """A date or date-time from a filter field; without a zone it is UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"{name} must be a date or time such as 2026-11-03 or 2026-11-03T14:00", param=name
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def usage_data(
    session: Session, filters: UsageFilter, page_number: int, page_size: int
) -> dict[str, Any]:
    """One page of usage rows and the organisations to filter by."""
    found = explore_usage(session, filters, page=page_number, page_size=page_size)
    return {"result": found, "organizations": [o.name for o in accounts.list_orgs(session)]}


@router.get("/usage")
async def usage_page(
    request: Request,
    session: CurrentSession,
    platform: PlatformDep,
    organization: str | None = Query(default=None, max_length=200),
    model: str | None = Query(default=None, max_length=200),
    status: str | None = Query(default=None, max_length=10),
    since: str | None = Query(default=None, max_length=40),
    until: str | None = Query(default=None, max_length=40),
    page_number: int = Query(default=1, ge=1, le=1_000_000, alias="page"),
    page_size: int = Query(default=50, ge=1, le=500),
) -> Response:
    fields = {
        "organization": organization or "",
        "model": model or "",
        "status": status or "",
        "since": since or "",
        "until": until or "",
    }
    filters = UsageFilter(
        organization=organization or None,
        model=model or None,
        status=status or None,
        since=parse_instant(since, "since"),
        until=parse_instant(until, "until"),
    )
    data = await platform.in_session(lambda s: usage_data(s, filters, page_number, page_size))
    kept = {name: value for name, value in fields.items() if value}
    kept["page_size"] = str(page_size)

    def page_link(number: int) -> str:
        return f"{BASE}/usage?{urlencode({**kept, 'page': str(number)})}"

    context = {
        "title": "Usage",
        "active": "usage",
        **data,
        "fields": fields,
        "page_size": page_size,
        "page_sizes": PAGE_SIZES,
        "status_classes": STATUS_CLASSES,
        "models": sorted(platform.router.routes),
        "previous_link": page_link(page_number - 1) if page_number > 1 else None,
        "next_link": page_link(page_number + 1) if data["result"].has_more else None,
    }
    return page(request, session, "usage.html", context)
