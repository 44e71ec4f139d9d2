"""How dashboard routes answer: HTML errors, login redirects and security headers.

Every dashboard route uses ``DashboardRoute``: an error becomes an HTML page with
the error's status (the rest of the gateway answers JSON in OpenAI's shape), a
missing session becomes a redirect to the login page, and every response carries
headers that keep pages out of caches and frames and scripts to this origin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from modelmint.dashboard.auth import LoginRequired, dashboard_auth
from modelmint.dashboard.rendering import BASE, render
from modelmint.dashboard.sessions import DashboardSession
from modelmint.errors import ModelMintError, RateLimited
from modelmint.web.errors import invalid_request

__all__ = ["SECURITY_HEADERS", "DashboardRoute", "page", "redirect"]

log = logging.getLogger(__name__)

SECURITY_HEADERS: dict[str, str] = {
    # Pages show secrets (a new key) and customer data: never cache them anywhere.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Scripts only from this origin (plotly.js is served from here, nothing inline runs);
    # plotly sets style attributes on the SVG it draws, hence inline styles.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def redirect(path: str) -> RedirectResponse:
    """A 303: after a POST the browser follows with a GET, so a reload never re-posts."""
    return RedirectResponse(path, status_code=303)


def page(
    request: Request,
    session: DashboardSession,
    name: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
) -> Response:
    """A logged-in page: the template with the session's CSRF token for its forms."""
    token = dashboard_auth(request).signer.csrf_token(session)
    return render(
        request, name, context, status_code=status_code, session=session, csrf_token=token
    )


def _error_page(request: Request, error: ModelMintError) -> Response:
    session: DashboardSession | None = getattr(request.state, "dashboard_session", None)
    context = {"title": "Error", "status": error.status_code, "message": error.message}
    if session is not None:
        response = page(request, session, "error.html", context, status_code=error.status_code)
    else:
        response = render(request, "error.html", context, status_code=error.status_code)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, RateLimited) and retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


def _login_redirect(request: Request) -> Response:
    target = request.url.path if request.method == "GET" else BASE
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    return redirect(f"{BASE}/login?next={quote(target, safe='/')}")


def _http_error(exc: HTTPException) -> ModelMintError:
    error = ModelMintError(str(exc.detail))
    error.status_code = exc.status_code
    return error


class DashboardRoute(APIRoute):
    """An APIRoute whose errors are HTML pages and whose responses carry security headers."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = _login_redirect(request)
            except ModelMintError as error:
                response = _error_page(request, error)
            except RequestValidationError as exc:
                response = _error_page(request, invalid_request(exc.errors()))
            except HTTPException as exc:
                response = _error_page(request, _http_error(exc))
            except Exception:
                log.exception("dashboard page failed")
                response = _error_page(
                    request, ModelMintError("internal error; the request id is in the logs")
                )
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return guarded
