"""The whole web application: the API, the dashboard and the portal, mounted side by side.

The one place that knows all three faces. Each builds on the composition root
(``modelmint.platform``) and none imports another, so they meet only here; the
lifespan builds and starts the platform they share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelmint import __version__
from modelmint.config import Settings
from modelmint.dashboard import mount_dashboard
from modelmint.gateway.api import mount_api, openapi_document
from modelmint.gateway.deps import check_credentials
from modelmint.gateway.fastpath import ModelRoutes
from modelmint.platform import Platform
from modelmint.portal import mount_portal
from modelmint.web.errors import install_error_handlers
from modelmint.web.middleware import GatewayMiddleware
from modelmint.web.responses import OrjsonResponse

__all__ = ["create_app"]


def create_app(settings: Settings, platform: Platform | None = None) -> FastAPI:
    """An app whose lifespan builds and starts the platform (or uses the one given)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = platform or Platform.build(settings)
        app.state.platform = running
        await running.start()
        try:
            yield
        finally:
            await running.close()

    app = FastAPI(
        title="ModelMint",
        version=__version__,
        default_response_class=OrjsonResponse,
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks look up global providers on every request; our
        # metrics are Prometheus, and the hot path has no microseconds to spare.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # A JSON body without a Content-Type header is read as JSON, as OpenAI's API does.
        strict_content_type=False,
        # FastAPI's docs pages load their scripts from CDNs; ours are served locally.
        docs_url=None,
        redoc_url=None,
    )
    # An API caller without the right secret hears so before any verdict on its body.
    install_error_handlers(app, check_credentials)
    mount_api(app)
    mount_dashboard(app)
    mount_portal(app)
    # Added last runs first: the gateway middleware wraps the model routes, which wrap
    # FastAPI's router.
    app.add_middleware(ModelRoutes)
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_body_bytes)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app
