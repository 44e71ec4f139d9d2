"""The portal's templates: its own pages, the dashboard's macros and filters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined, select_autoescape

from modelmint.dashboard.rendering import FILTERS
from modelmint.dashboard.rendering import STATIC as DASHBOARD_STATIC

__all__ = ["BASE", "STATIC", "render"]

BASE = "/portal"
STATIC = "/portal/static"
NAV: tuple[tuple[str, str], ...] = (
    ("overview", "Usage"),
    ("invoices", "Invoices"),
    ("keys", "API keys"),
    ("billing", "Payment"),
)

_templates = Environment(
    loader=ChoiceLoader(
        [
            PackageLoader("modelmint.portal", "templates"),
            PackageLoader("modelmint.dashboard", "templates"),  # macros.html
        ]
    ),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(FILTERS)
_templates.globals.update(base=BASE, static=STATIC, dashboard_static=DASHBOARD_STATIC, nav=NAV)


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    csrf_token: str = "",
    signed_in: bool = False,
) -> HTMLResponse:
    values: dict[str, Any] = {
        "csrf_token": csrf_token,
        "signed_in": signed_in,
        "active": "",
        "title": "",
        "organization": "",
        **(context or {}),
    }
    return HTMLResponse(_templates.get_template(name).render(values), status_code=status_code)
