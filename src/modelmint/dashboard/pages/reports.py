"""What report pages share: the window and currency they are asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query

from modelmint.clock import utcnow
from modelmint.dashboard.window import DAY_CHOICES, ReportWindow, report_window

__all__ = ["ReportQuery", "WindowDep"]


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """The window and currency a report page was asked for."""

    window: ReportWindow
    currency: str | None

    def context(self) -> dict[str, Any]:
        """What the shared filter form (``window_filters.html``) needs."""
        return {
            "window": self.window,
            "currency_filter": self.currency or "",
            "day_choices": DAY_CHOICES,
        }


async def _report_query(
    period: str | None = Query(default=None, description="a month, e.g. 2026-11"),
    days: int | None = Query(default=None, ge=1, le=1098),
    start: str | None = Query(default=None),
    end: str | None = Query(default=None),
    currency: str | None = Query(default=None, max_length=3),
) -> ReportQuery:
    window = report_window(
        utcnow(), period=period or None, days=days, start=start or None, end=end or None
    )
    return ReportQuery(window, currency or None)


WindowDep = Annotated[ReportQuery, Depends(_report_query)]
