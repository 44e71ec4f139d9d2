"""The FastAPI application: routers composed in one place, errors mapped once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelmint import __version__
from modelmint.config import Settings
from modelmint.gateway.errors import install_error_handlers
from modelmint.gateway.middleware import GatewayMiddleware
from modelmint.gateway.platform import Platform
from modelmint.gateway.responses import OrjsonResponse
from modelmint.gateway.routes import admin, health, openai

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
    )
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
