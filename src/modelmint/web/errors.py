"""Every error leaves the app in the OpenAI shape, mapped here and nowhere else.

The API, the dashboard and the portal share this mapping; what is particular to the
API (its callers authenticate before their body is judged) comes in as an argument.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelmint.errors import InvalidRequest, ModelMintError, RateLimited, ServiceUnavailable
from modelmint.web.responses import OrjsonResponse

__all__ = [
    "CredentialCheck",
    "error_response",
    "install_error_handlers",
    "invalid_request",
    "unexpected_error",
]

log = logging.getLogger(__name__)

# Raises the 401/429 of a caller without the right secret; returns if it may pass.
CredentialCheck = Callable[[Request], Awaitable[None]]


def error_response(error: ModelMintError, headers: dict[str, str] | None = None) -> OrjsonResponse:
    out = dict(headers or {})
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, RateLimited | ServiceUnavailable) and retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if error.status_code == 401:
        out["WWW-Authenticate"] = "Bearer"
    return OrjsonResponse(error.to_body(), status_code=error.status_code, headers=out)


def invalid_request(errors: Sequence[Any]) -> InvalidRequest:
    """The 400 for pydantic validation errors, naming the first bad parameter."""
    if not errors:
        return InvalidRequest("invalid request")
    first: dict[str, Any] = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest("the request body is not valid JSON")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if not loc:
        return InvalidRequest(
            "the request body must be a JSON object (Content-Type: application/json)"
        )
    param = ".".join(loc)
    if first.get("type") == "missing":
        return InvalidRequest(f"missing required parameter: {param}", param=param)
    message = str(first.get("msg", "invalid value"))
    return InvalidRequest(f"invalid value for {param}: {message}", param=param)


def install_error_handlers(app: FastAPI, check_credentials: CredentialCheck | None = None) -> None:
    """Map every error ``app`` raises to the OpenAI shape. ``check_credentials`` runs
    before a body FastAPI found invalid is judged, so that a caller without the right
    secret gets its 401, not a verdict on its body."""

    async def refusal(request: Request) -> ModelMintError | None:
        if check_credentials is None:
            return None
        try:
            await check_credentials(request)
        except ModelMintError as refused:
            return refused
        return None

    @app.exception_handler(ModelMintError)
    async def _modelmint(_: Request, exc: ModelMintError) -> OrjsonResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        refused = await refusal(request)
        return error_response(refused or invalid_request(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        if exc.status_code == 400:  # a body FastAPI could not even decode
            refused = await refusal(request)
            if refused is not None:
                return error_response(refused)
        kinds = {404: "not_found", 405: "method_not_allowed"}
        error = ModelMintError(str(exc.detail), code=kinds.get(exc.status_code))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error"
        return error_response(error, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> OrjsonResponse:
        return unexpected_error(exc)


# The database refused or dropped the connection, or its disk is full: not a bug, and
# nothing a retry later cannot fix. Paid requests fail closed on it (nothing is served
# that could not be metered), and the pool reconnects by itself once it is back.
_DATABASE_DOWN = (OperationalError, InterfaceError)


def unexpected_error(exc: BaseException) -> OrjsonResponse:
    """A 500 that tells the client nothing of the bug, and the log everything.

    A database outage is a 503 instead, logged without its SQL parameters."""
    if isinstance(exc, _DATABASE_DOWN):
        log.error("database unavailable: %s", type(exc.orig).__name__)
        return error_response(
            ServiceUnavailable("the database is unavailable; try again shortly", retry_after=1)
        )
    log.error("unhandled error", exc_info=exc)
    return error_response(
        ModelMintError("internal error; the request id identifies it in the logs")
    )
