"""Jinja2 templates of the dashboard and the small filters they share.

Autoescaping is on for every template (customer names, key names and pasted price
books are user input), and an undefined variable is an error rather than an empty
string, so a template typo fails its test instead of rendering a blank.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from modelmint.dashboard.sessions import DashboardSession

__all__ = ["BASE", "FILTERS", "STATIC", "render", "templates"]

BASE = "/dashboard"
STATIC = "/dashboard/static"

_CENT = Decimal("0.01")

NAV: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("models", "Models"),
    ("compare", "Compare"),
    ("customers", "Customers"),
    ("keys", "Keys"),
    ("invoices", "Invoices"),
    ("usage", "Usage"),
    ("simulator", "Simulator"),
)


def _when(value: object) -> str:
    """An instant as ``2026-11-03 14:05 UTC``; ISO strings are accepted too."""
    if value is None or value == "":
        return "—"
    instant = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(instant, datetime):
        return str(value)
    return instant.strftime("%Y-%m-%d %H:%M UTC")


def _day(value: object) -> str:
    if value is None or value == "":
        return "—"
    instant = datetime.fromisoformat(value) if isinstance(value, str) else value
    return instant.strftime("%Y-%m-%d") if isinstance(instant, datetime) else str(value)


def _number(value: object, places: int | None = None) -> str:
    """Thousands separated; ``places`` fixes the decimals (exact decimals stay exact)."""
    if value is None or value == "":
        return "—"
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if places is not None:
        return f"{number:,.{places}f}"
    if number == number.to_integral_value():
        return f"{number:,.0f}"
    return f"{number:,}"


def _money(value: object, currency: str | None = None) -> Markup | str:
    """An amount to the cent (``1,234.50 USD``), its exact value in a tooltip.

    A nonzero amount below a cent (one request's charge) is shown exactly instead of
    as a misleading ``0.00``.
    """
    if value is None or value == "":
        return "—"
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if amount != 0 and abs(amount) < _CENT:
        shown = f"{amount.normalize():f}"
    else:
        shown = f"{amount.quantize(_CENT, rounding=ROUND_HALF_EVEN):,}"
    suffix = f" {currency}" if currency else ""
    return Markup('<span class="amount" title="{exact}{suffix}">{shown}</span>{suffix}').format(
        exact=f"{amount:f}", shown=shown, suffix=suffix
    )


def _percent(value: object) -> str:
    if value is None or value == "":
        return "—"
    try:
        return f"{Decimal(str(value)):.1f} %"
    except InvalidOperation:
        return str(value)


def _nonzero(value: object) -> bool:
    try:
        return Decimal(str(value)) != 0
    except InvalidOperation:
        return False


# The filters every server-rendered page of ModelMint shares (the customer portal too).
FILTERS = {
    "when": _when,
    "day": _day,
    "number": _number,
    "money": _money,
    "percent": _percent,
    "nonzero": _nonzero,
}


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("modelmint.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(base=BASE, static=STATIC, nav=NAV)
    return env


templates = _environment()


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    session: DashboardSession | None = None,
    csrf_token: str | None = None,
) -> HTMLResponse:
    """The template ``name`` rendered with ``context``; ``csrf_token`` feeds every form."""
    values: dict[str, Any] = {
        "request_path": request.url.path,
        "logged_in": session is not None,
        "csrf_token": csrf_token or "",
        "active": "",
        "title": "",
        **(context or {}),
    }
    html = templates.get_template(name).render(values)
    return HTMLResponse(html, status_code=status_code)
