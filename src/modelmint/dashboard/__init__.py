"""The web dashboard at ``/dashboard``: server-rendered pages over billing and analytics.

Admins log in with the admin token (``auth``); pages are Jinja2 templates
(``templates/``) with plotly.js charts served from the installed ``plotly`` package
(``assets``), so the dashboard works offline. The app (``modelmint.app``) adds it
with ``mount_dashboard(app)``; the pages get the running platform from
``modelmint.platform``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["mount_dashboard"]


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard's pages and its static files (CSS, JS, plotly.js) to ``app``."""
    # Imported when mounted: the portal imports this package for its chart helpers,
    # and need not load every page with them.
    from modelmint.dashboard.assets import static_files
    from modelmint.dashboard.rendering import STATIC
    from modelmint.dashboard.router import router

    app.include_router(router)
    app.mount(STATIC, static_files(), name="dashboard-static")
