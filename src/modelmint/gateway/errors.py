"""Every error leaves the gateway in the OpenAI shape, mapped here and nowhere else."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelmint.errors import InvalidRequest, ModelMintError, RateLimited, ServiceUnavailable
from modelmint.gateway.responses import OrjsonResponse

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


def error_response(error: ModelMintError, headers: dict[str, str] | None = None) -> OrjsonResponse:
    out = dict(headers or {})
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, RateLimited | ServiceUnavailable) and retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if error.status_code == 401:
        out["WWW-Authenticate"] = "Bearer"
    return OrjsonResponse(error.to_body(), status_code=error.status_code, headers=out)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first: dict[str, Any] = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not loc:
        return "the request body must be a JSON object (Content-Type: application/json)", None
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return f"missing required parameter: {param}", param
    message = str(first.get("msg", "invalid value"))
    return (f"invalid value for {param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelMintError)
    async def _modelmint(_: Request, exc: ModelMintError) -> OrjsonResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> OrjsonResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        error = ModelMintError(str(exc.detail), code=kinds.get(exc.status_code))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error"
        return error_response(error, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> OrjsonResponse:
        log.exception("unhandled error")
        return error_response(
            ModelMintError("internal error; the request id identifies it in the logs")
        )
