"""The customer portal at ``/portal``: a customer's own usage, credit, invoices, keys and
payment method, behind a single-use sign-in link the operator hands out. Separate from
the operator's dashboard: its sessions are signed under another key and scoped to one
organisation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["mount_portal"]


def mount_portal(app: FastAPI) -> None:
    """Add the portal's pages and its one script to ``app``."""
    # Imported when mounted: the CLI and the API import this package for its sign-in
    # links (``links``), and need not load the pages with them.
    from starlette.staticfiles import StaticFiles

    from modelmint.portal.pages import router
    from modelmint.portal.rendering import STATIC

    app.include_router(router)
    app.mount(STATIC, StaticFiles(packages=[("modelmint.portal", "static")]), name="portal-static")
