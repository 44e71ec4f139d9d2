"""How portal routes answer: HTML errors, a sign-in page instead of a 401, and the
dashboard's security headers with Stripe.js allowed (the payment page needs it)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from modelmint.dashboard.routing import SECURITY_HEADERS
from modelmint.errors import ModelMintError
from modelmint.portal.auth import PortalCustomer, SignInRequired, portal_auth
from modelmint.portal.rendering import render
from modelmint.web.errors import invalid_request

__all__ = ["PortalRoute", "customer_page", "security_headers"]

log = logging.getLogger(__name__)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def security_headers(stripe_js_url: str) -> dict[str, str]:
    """The dashboard's headers, with Stripe.js's origin allowed to run and to frame its
    card fields, and nothing else from outside."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(stripe_js_url))
    policy = (
        f"default-src 'self'; script-src 'self' {origin}; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data: blob:; connect-src 'self' {origin}; frame-src {origin}; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {**SECURITY_HEADERS, "Content-Security-Policy": policy}


def customer_page(
    request: Request,
    customer: PortalCustomer,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
) -> Response:
    token = portal_auth(request).signer.csrf_token(customer.session)
    return render(request, name, context, status_code=status_code, csrf_token=token, signed_in=True)


def _error(request: Request, error: ModelMintError) -> Response:
    customer: PortalCustomer | None = getattr(request.state, "portal_customer", None)
    context = {"title": "Error", "status": error.status_code, "message": error.message}
    if customer is not None:
        return customer_page(
            request, customer, "error.html", context, status_code=error.status_code
        )
    return render(request, "error.html", context, status_code=error.status_code)


class PortalRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired as error:
                response = render(
                    request, "signed_out.html", {"message": error.message}, status_code=401
                )
            except ModelMintError as error:
                response = _error(request, error)
            except RequestValidationError as exc:
                response = _error(request, invalid_request(exc.errors()))
            except Exception:
                log.exception("portal page failed")
                response = _error(
                    request, ModelMintError("internal error; the request id is in the logs")
                )
            settings = request.app.state.platform.settings
            for name, value in security_headers(settings.stripe_js_url).items():
                response.headers.setdefault(name, value)
            return response

        return guarded
