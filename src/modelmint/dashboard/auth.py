"""Who may see the dashboard: the admin session, CSRF checks and login throttling.

Only the holder of the admin token logs in. The login form trades the token for a
session cookie (``sessions.SessionSigner``: HttpOnly, SameSite=Strict, Secure over
https, path ``/dashboard``); the token itself is never stored in the browser. Every
POST of a logged-in page must carry the session's CSRF token and, when the browser
says where it comes from, come from this origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response

from modelmint.dashboard.forms import Form, parse_form
from modelmint.dashboard.sessions import LOGIN_FORM_LIFETIME_S, DashboardSession, SessionSigner
from modelmint.errors import AuthenticationError, PermissionDenied, ServiceUnavailable
from modelmint.platform import Platform
from modelmint.web.throttle import LoginThrottle

__all__ = [
    "COOKIE_PATH",
    "CSRF_FIELD",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "CheckedForm",
    "CurrentSession",
    "DashboardAuth",
    "LoginRequired",
    "clear_cookie",
    "client_address",
    "dashboard_auth",
    "require_csrf",
    "require_session",
    "set_cookie",
]

SESSION_COOKIE = "mm_dashboard"
LOGIN_COOKIE = "mm_dashboard_login"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf_token"


class LoginRequired(AuthenticationError):
    """No valid session: the dashboard answers with a redirect to its login page."""

    code = "login_required"


@dataclass
class DashboardAuth:
    """The signer and throttle of one app, built from its admin token on first use."""

    signer: SessionSigner
    throttle: LoginThrottle

    def set_session_cookie(self, request: Request, response: Response, value: str) -> None:
        set_cookie(request, response, SESSION_COOKIE, value, int(self.signer.lifetime_s))

    def set_login_cookie(self, request: Request, response: Response, value: str) -> None:
        set_cookie(request, response, LOGIN_COOKIE, value, int(LOGIN_FORM_LIFETIME_S))


def clear_cookie(
    request: Request, response: Response, name: str, *, path: str = COOKIE_PATH
) -> None:
    """Tell the browser to drop a cookie (same attributes it was set with)."""
    response.delete_cookie(
        name,
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def set_cookie(
    request: Request,
    response: Response,
    name: str,
    value: str,
    age: int,
    *,
    path: str = COOKIE_PATH,
) -> None:
    """A cookie scripts cannot read, sent only to ``path`` on this site."""
    response.set_cookie(
        name,
        value,
        max_age=age,
        path=path,
        httponly=True,
        samesite="strict",
        # Behind a TLS-terminating proxy the scheme comes from X-Forwarded-Proto, which
        # uvicorn honours for trusted proxies only.
        secure=request.url.scheme == "https",
    )


def dashboard_auth(request: Request) -> DashboardAuth:
    """This app's ``DashboardAuth``; the dashboard is closed when no admin token is set."""
    auth: DashboardAuth | None = getattr(request.app.state, "dashboard_auth", None)
    if auth is not None:
        return auth
    platform: Platform = request.app.state.platform
    token = platform.settings.admin_token
    if token is None or not token.get_secret_value():
        raise ServiceUnavailable(
            "the dashboard is disabled: no admin token is configured (MODELMINT_ADMIN_TOKEN)",
            code="dashboard_disabled",
        )
    auth = DashboardAuth(SessionSigner(token.get_secret_value()), LoginThrottle())
    request.app.state.dashboard_auth = auth
    return auth


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def require_session(request: Request) -> DashboardSession:
    """The request's admin session, or ``LoginRequired``."""
    session = dashboard_auth(request).signer.verify(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired("log in with the admin token to use the dashboard")
    request.state.dashboard_session = session
    return session


CurrentSession = Annotated[DashboardSession, Depends(require_session)]


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site.

    Browsers send ``Origin`` on POSTs; a missing header (old clients, tests) is left to
    the CSRF token alone. Hosts are compared, not schemes: behind a TLS-terminating
    proxy this process may see http while the browser sent https.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.url.netloc


async def read_form(request: Request) -> Form:
    """The request's form, parsed once and kept for the handler."""
    form: Form | None = getattr(request.state, "dashboard_form", None)
    if form is None:
        form = parse_form(request.headers.get("content-type"), await request.body())
        request.state.dashboard_form = form
    return form


async def require_csrf(request: Request, session: CurrentSession) -> None:
    """Refuse a POST without the session's CSRF token or from another origin."""
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    form = await read_form(request)
    valid = dashboard_auth(request).signer.csrf_valid(session, form.get(CSRF_FIELD))
    if not valid or not same_origin(request):
        raise PermissionDenied(
            "the form is stale or came from another site; reload the page and try again",
            code="csrf_failed",
        )


CheckedForm = Annotated[Form, Depends(read_form)]
"""The posted form of a logged-in page, already CSRF-checked: ``require_csrf`` is a
dependency of the router every such page is on, so it runs before the handler."""
