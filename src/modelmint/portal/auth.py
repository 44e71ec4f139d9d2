"""Who may see the portal: a session for one organisation, CSRF, throttled sign-in.

A customer signs in by spending a link (``links``) in a POST from the page the link
opens, which sets a session cookie (HttpOnly, SameSite=Strict, Secure over https, path
``/portal``) whose signed id names the organisation. A GET never spends a link, so a
mail scanner that fetches it leaves it usable. Every POST of a signed-in page carries
the session's CSRF token and must come from this origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response

from modelmint.dashboard.auth import clear_cookie, read_form, same_origin, set_cookie
from modelmint.dashboard.sessions import DashboardSession, SessionSigner
from modelmint.errors import AuthenticationError, PermissionDenied, ServiceUnavailable
from modelmint.web.throttle import LoginThrottle

__all__ = [
    "COOKIE_PATH",
    "SESSION_COOKIE",
    "CurrentCustomer",
    "PortalAuth",
    "PortalCustomer",
    "SignInRequired",
    "portal_auth",
    "require_csrf",
]

SESSION_COOKIE = "mm_portal"
COOKIE_PATH = "/portal"
# A customer's working session: shorter than the operator's, it guards payment pages.
LIFETIME_S = 2 * 3600.0


class SignInRequired(AuthenticationError):
    code = "portal_sign_in_required"


@dataclass(frozen=True, slots=True)
class PortalCustomer:
    """A signed-in browser: the organisation it speaks for, and its session."""

    organization_id: str
    session: DashboardSession


@dataclass
class PortalAuth:
    signer: SessionSigner
    throttle: LoginThrottle

    def set_session_cookie(self, request: Request, response: Response, value: str) -> None:
        age = int(self.signer.lifetime_s)
        set_cookie(request, response, SESSION_COOKIE, value, age, path=COOKIE_PATH)

    def clear_session_cookie(self, request: Request, response: Response) -> None:
        clear_cookie(request, response, SESSION_COOKIE, path=COOKIE_PATH)


def portal_auth(request: Request) -> PortalAuth:
    """This app's ``PortalAuth``; the portal is closed when no admin token is set."""
    auth: PortalAuth | None = getattr(request.app.state, "portal_auth", None)
    if auth is not None:
        return auth
    token = request.app.state.platform.settings.admin_token
    if token is None or not token.get_secret_value():
        raise ServiceUnavailable(
            "the customer portal is disabled: no admin token is configured",
            code="portal_disabled",
        )
    secret = token.get_secret_value()
    auth = PortalAuth(
        SessionSigner(secret, lifetime_s=LIFETIME_S, key_label="modelmint portal session key"),
        LoginThrottle(),
    )
    request.app.state.portal_auth = auth
    return auth


async def require_customer(request: Request) -> PortalCustomer:
    session = portal_auth(request).signer.verify(request.cookies.get(SESSION_COOKIE))
    if session is None or not session.subject:
        raise SignInRequired("sign in with the link your provider sent you")
    customer = PortalCustomer(session.subject, session)
    request.state.portal_customer = customer
    return customer


CurrentCustomer = Annotated[PortalCustomer, Depends(require_customer)]


async def require_csrf(request: Request, customer: CurrentCustomer) -> None:
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    form = await read_form(request)
    valid = portal_auth(request).signer.csrf_valid(customer.session, form.get("csrf_token"))
    if not valid or not same_origin(request):
        raise PermissionDenied(
            "the form is stale or came from another site; reload the page and try again",
            code="csrf_failed",
        )
