"""Entry point for worker processes: `uvicorn --factory modelmint.server:app_from_env`.

Each worker reads its settings from the environment, which `modelmint up` prepares
before it starts them (the admin token it generated included).
"""

from __future__ import annotations

from fastapi import FastAPI

from modelmint.app import create_app
from modelmint.config import Settings
from modelmint.observability.logs import configure_logging

__all__ = ["app_from_env"]


def app_from_env() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    return create_app(settings, freeze_heap=True)
