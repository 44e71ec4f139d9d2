"""The API's part of the app: its routers and docs pages, and its OpenAPI document.

The paid model routes are not among the routers: ``fastpath.ModelRoutes`` answers them
before FastAPI, as middleware the app adds (``modelmint.app``); the document describes
them all the same.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from modelmint.gateway.api_docs import mount_api_docs
from modelmint.gateway.fastpath import openapi_paths
from modelmint.gateway.routes import admin, billing, health, openai, payments, self_service
from modelmint.gateway.routes import feedback as feedback_routes

__all__ = ["ERROR_SCHEMA", "mount_api", "openapi_document"]


def mount_api(app: FastAPI) -> None:
    """Add the API's docs pages (``/docs``, ``/redoc``) and its routers to ``app``."""
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


def openapi_document(app: FastAPI) -> dict[str, Any]:
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
