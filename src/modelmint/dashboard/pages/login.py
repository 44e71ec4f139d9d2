"""Logging in with the admin token, and out again."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response

from modelmint.dashboard.auth import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    CurrentSession,
    DashboardAuth,
    clear_cookie,
    client_address,
    dashboard_auth,
    read_form,
)
from modelmint.dashboard.rendering import BASE, render
from modelmint.dashboard.routing import DashboardRoute, redirect
from modelmint.platform import Platform

__all__ = ["public", "safe_next", "session_router"]

# Routes anyone may reach: the login form itself.
public = APIRouter(prefix=BASE, route_class=DashboardRoute, include_in_schema=False)
# Routes of a logged-in session (mounted behind the session and CSRF checks).
session_router = APIRouter(prefix=BASE, route_class=DashboardRoute)


def safe_next(target: str | None) -> str:
    """Where to go after login: a dashboard path on this site, never another site."""
    if not target:
        return BASE
    parts = urlsplit(target)
    path_ok = parts.path == BASE or parts.path.startswith(BASE + "/")
    if parts.scheme or parts.netloc or not path_ok or "\\" in target or "//" in parts.path:
        return BASE
    return target


def _login_page(
    request: Request, auth: DashboardAuth, target: str, *, message: str = "", status: int = 200
) -> Response:
    cookie, form_token = auth.signer.login_nonce()
    response = render(
        request,
        "login.html",
        {"title": "Log in", "next": safe_next(target), "message": message},
        status_code=status,
        csrf_token=form_token,
    )
    auth.set_login_cookie(request, response, cookie)
    return response


@public.get("/login")
async def login_form(request: Request, next: str | None = Query(default=None)) -> Response:
    auth = dashboard_auth(request)
    if auth.signer.verify(request.cookies.get(SESSION_COOKIE)) is not None:
        return redirect(safe_next(next))
    return _login_page(request, auth, safe_next(next))


@public.post("/login")
async def login(request: Request) -> Response:
    auth = dashboard_auth(request)
    address = client_address(request)
    # Checked before anything else: while blocked, even the right token is refused.
    auth.throttle.refuse_if_blocked(address)
    form = await read_form(request)
    target = safe_next(form.get("next"))
    if not auth.signer.login_nonce_valid(request.cookies.get(LOGIN_COOKIE), form.get(CSRF_FIELD)):
        return _login_page(
            request, auth, target, message="The login form expired; try again.", status=403
        )
    platform: Platform = request.app.state.platform
    expected = platform.settings.admin_token
    given = form.text("token")
    if (
        expected is None
        or not given
        or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        auth.throttle.failed(address)
        return _login_page(
            request, auth, target, message="That is not the admin token.", status=401
        )
    auth.throttle.succeeded(address)
    cookie, _ = auth.signer.issue()
    response = redirect(target)
    auth.set_session_cookie(request, response, cookie)
    clear_cookie(request, response, LOGIN_COOKIE)
    return response


@session_router.post("/logout")
async def logout(request: Request, session: CurrentSession) -> Response:
    dashboard_auth(request).signer.revoke(session)
    response = redirect(f"{BASE}/login")
    clear_cookie(request, response, SESSION_COOKIE)
    return response
