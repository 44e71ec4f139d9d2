"""Plotly figures (plain JSON-ready dicts) for the dashboard's charts.

Figures are built here, in Python, and drawn in the browser by plotly.js
(``static/dashboard.js``). Amounts become floats only here, for plotting: every
number a page prints in a table stays the exact decimal analytics computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

__all__ = [
    "Figure",
    "bar_comparison",
    "money_over_time",
    "requests_over_time",
    "simulation_changes",
]

Figure = dict[str, Any]

REVENUE = "#0f6e5c"
COST = "#c0392b"
MARGIN = "#2e86c1"
NEUTRAL = "#7f8c8d"


def _float(value: Decimal | int | None) -> float | None:
    return None if value is None else float(value)


def _layout(title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "yaxis": {"title": {"text": y_title}, "automargin": True, "zeroline": True},
        "xaxis": {"automargin": True},
        "hovermode": "x unified",
        **extra,
    }


def money_over_time(
    days: Sequence[str],
    revenue: Sequence[Decimal],
    cost: Sequence[Decimal],
    margin: Sequence[Decimal],
    currency: str,
) -> Figure:
    """Revenue and cost as bars per day, margin as a line over them."""
    return {
        "data": [
            {
                "type": "bar",
                "name": "Revenue",
                "x": list(days),
                "y": [_float(v) for v in revenue],
                "marker": {"color": REVENUE},
            },
            {
                "type": "bar",
                "name": "Cost",
                "x": list(days),
                "y": [_float(v) for v in cost],
                "marker": {"color": COST},
            },
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "Margin",
                "x": list(days),
                "y": [_float(v) for v in margin],
                "line": {"color": MARGIN, "width": 2},
            },
        ],
        "layout": _layout(
            f"Revenue, cost and margin per day ({currency})", currency, barmode="group"
        ),
    }


def requests_over_time(
    days: Sequence[str], answered: Sequence[int], errors: Sequence[int]
) -> Figure:
    """Answered and failed requests per day, stacked."""
    return {
        "data": [
            {
                "type": "bar",
                "name": "Answered",
                "x": list(days),
                "y": list(answered),
                "marker": {"color": MARGIN},
            },
            {
                "type": "bar",
                "name": "Errors",
                "x": list(days),
                "y": list(errors),
                "marker": {"color": COST},
            },
        ],
        "layout": _layout(
            "Requests per day",
            "requests",
            barmode="stack",
            legend={"orientation": "h", "y": -0.2, "traceorder": "normal"},
        ),
    }


def bar_comparison(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[Decimal | int | None], str]],
    y_title: str,
    *,
    horizontal: bool = False,
) -> Figure:
    """Grouped bars: one series per ``(name, values, colour)`` over ``labels``."""
    data = []
    for name, values, colour in series:
        points = [_float(v) for v in values]
        trace: dict[str, Any] = {"type": "bar", "name": name, "marker": {"color": colour}}
        if horizontal:
            trace.update(orientation="h", y=list(labels), x=points)
        else:
            trace.update(x=list(labels), y=points)
        data.append(trace)
    layout = _layout(title, y_title, barmode="group", hovermode="closest")
    if horizontal:
        layout["xaxis"], layout["yaxis"] = layout["yaxis"], {"automargin": True}
        layout["height"] = max(300, 28 * len(labels) + 120)
    return {"data": data, "layout": layout}


def simulation_changes(
    organizations: Sequence[str], changes: Sequence[Decimal], currency: str
) -> Figure:
    """Revenue change per organisation under a candidate price book (more: green)."""
    colours = [REVENUE if change >= 0 else COST for change in changes]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": list(organizations),
                "x": [_float(c) for c in changes],
                "marker": {"color": colours},
                "name": "Change",
            },
        ],
        "layout": {
            **_layout(f"Revenue change per organisation ({currency})", "", hovermode="closest"),
            "xaxis": {"title": {"text": currency}, "zeroline": True, "automargin": True},
            "yaxis": {"automargin": True},
            "height": max(300, 28 * len(organizations) + 120),
            "showlegend": False,
        },
    }
