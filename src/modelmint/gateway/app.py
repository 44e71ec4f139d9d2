"""The FastAPI application: routers composed in one place, errors mapped once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from modelmint import __version__
from modelmint.config import Settings
from modelmint.dashboard import mount_dashboard
from modelmint.gateway.api_docs import mount_api_docs
from modelmint.gateway.errors import install_error_handlers
from modelmint.gateway.fastpath import ModelRoutes, openapi_paths
from modelmint.gateway.middleware import GatewayMiddleware
from modelmint.gateway.platform import Platform
from modelmint.gateway.responses import OrjsonResponse
from modelmint.gateway.routes import admin, billing, health, openai, payments, self_service
from modelmint.gateway.routes import feedback as feedback_routes
from modelmint.portal import mount_portal

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
    install_error_handlers(app)
    mount_api_docs(app)
    app.include_router(openai.router)
    app.include_router(self_service.router)
    app.include_router(admin.router)
    app.include_router(billing.router)
    app.include_router(payments.router)
    app.include_router(payments.admin)
    app.include_router(payments.portal_admin)
    app.include_router(health.router)
    app.include_router(feedback_routes.router)
    mount_dashboard(app)
    mount_portal(app)
    # Added last runs first: the gateway middleware wraps the model routes, which wrap
    # FastAPI's router.
    app.add_middleware(ModelRoutes)
    app.add_middleware(GatewayMiddleware, max_body_bytes=settings.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the model routes, which are served outside its router."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    paths, schemas = openapi_paths()
    document["paths"] = {**paths, **document.get("paths", {})}
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas)
    components["securitySchemes"] = {"APIKey": {"type": "http", "scheme": "bearer"}}
    components["responses"] = {
        "Error": {
            "description": "An error in OpenAI's shape",
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
    }
    app.openapi_schema = document
    return document


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
