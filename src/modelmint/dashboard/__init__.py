"""The web dashboard at ``/dashboard``: server-rendered pages over billing and analytics.

Admins log in with the admin token (``auth``); pages are Jinja2 templates
(``templates/``) with plotly.js charts served from the installed ``plotly`` package
(``assets``), so the dashboard works offline. The gateway adds it with
``mount_dashboard(app)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["mount_dashboard"]


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard's pages and its static files (CSS, JS, plotly.js) to ``app``."""
    # Imported here, not at the top: the pages use the gateway's platform, and the
    # gateway imports this package while it is itself being imported.
    from modelmint.dashboard.assets import static_files
    from modelmint.dashboard.rendering import STATIC
    from modelmint.dashboard.router import router

    app.include_router(router)
    app.mount(STATIC, static_files(), name="dashboard-static")
