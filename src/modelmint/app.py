"""The whole web application: the API, the dashboard and the portal, mounted side by side.

The one place that knows all three faces. Each builds on the composition root
(``modelmint.platform``) and none imports another, so they meet only here; the
lifespan builds and starts the platform they share.
"""

from __future__ import annotations

import gc
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


def create_app(
    settings: Settings, platform: Platform | None = None, *, freeze_heap: bool = False
) -> FastAPI:
    """An app whose lifespan builds and starts the platform (or uses the one given).
    ``freeze_heap``: a worker process's own app (``server``) takes what startup built out
    of the garbage collector's sight (``freeze_startup_heap``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = platform or Platform.build(settings)
        app.state.platform = running
        await running.start()
        if freeze_heap:
            freeze_startup_heap()
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


def freeze_startup_heap() -> None:
    """Exempt what startup built from the garbage collector's full passes.

    A started worker holds ~190,000 long-lived objects (modules, the ORM's mappers,
    models, caches), and every full collection walked all of them to free nothing:
    130-160 ms on a 2-vCPU machine, about every 2 s per worker at c64, as in-flight
    requests' objects promoted. That pause was the gateway's p99 (~150 ms; ~45 ms
    frozen, when a full pass takes 2-7 ms). Frozen objects are never collected, so this
    is for a process's one app, not for tests that build many (hence the flag)."""
    gc.collect()
    gc.freeze()
