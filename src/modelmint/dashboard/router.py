"""The dashboard's routes composed in one place: the login form open, everything else
behind the admin session and, for every POST, the CSRF check."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from modelmint.dashboard.auth import require_csrf, require_session
from modelmint.dashboard.pages import (
    compare,
    customers,
    invoices,
    keys,
    login,
    models,
    overview,
    simulator,
    usage,
)
from modelmint.dashboard.routing import DashboardRoute

__all__ = ["router"]

_logged_in = APIRouter(
    route_class=DashboardRoute,
    # Router-level, so no page can forget them: every route needs the session, and every
    # POST the session's CSRF token.
    dependencies=[Depends(require_session), Depends(require_csrf)],
)
for _part in (
    overview.router,
    models.router,
    usage.router,
    login.session_router,
    keys.router,
    customers.router,
    invoices.router,
    simulator.router,
    compare.router,
):
    _logged_in.include_router(_part)

router = APIRouter(include_in_schema=False)
router.include_router(login.public)
router.include_router(_logged_in)
