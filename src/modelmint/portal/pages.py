"""The portal's pages. Every query is scoped to the signed-in organisation: an id from the
URL (an invoice, a key) that belongs to another organisation is a 404, as if absent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from modelmint import accounts, billing_admin
from modelmint.billing.periods import Period
from modelmint.billing.store.reporting import find_invoice
from modelmint.clock import utcnow
from modelmint.customer.balance import balance
from modelmint.customer.usage import usage_report
from modelmint.dashboard.auth import clear_cookie, client_address, read_form, set_cookie
from modelmint.dashboard.sessions import LOGIN_FORM_LIFETIME_S
from modelmint.errors import InvalidRequest, ModelMintError, NotFound
from modelmint.payments import status as payment_status
from modelmint.payments.collection import Payments
from modelmint.platform import PlatformDep
from modelmint.portal.auth import (
    CurrentCustomer,
    PortalCustomer,
    SignInRequired,
    portal_auth,
    require_csrf,
    require_customer,
)
from modelmint.portal.charts import usage_charts
from modelmint.portal.links import use_link
from modelmint.portal.rendering import BASE, render
from modelmint.portal.routing import PortalRoute, customer_page
from modelmint.storage.tables import ApiKey, Organization
from modelmint.web.responses import attachment

__all__ = ["router"]

LOGIN_COOKIE = "mm_portal_login"
# A key a customer makes for itself lives at most a year, and 90 days unless it says.
MAX_KEY_DAYS = 365
DEFAULT_KEY_DAYS = 90

public = APIRouter(prefix=BASE, route_class=PortalRoute)
signed_in = APIRouter(
    prefix=BASE,
    route_class=PortalRoute,
    dependencies=[Depends(require_customer), Depends(require_csrf)],
)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


# -- signing in and out ---------------------------------------------------------------------


@public.get("/login")
async def sign_in_form(request: Request, token: str = Query(default="")) -> Response:
    """The page a link opens: one button that spends the link (a GET never does)."""
    auth = portal_auth(request)
    cookie, form_token = auth.signer.login_nonce()
    response = render(
        request, "signin.html", {"title": "Sign in", "token": token}, csrf_token=form_token
    )
    set_cookie(request, response, LOGIN_COOKIE, cookie, int(LOGIN_FORM_LIFETIME_S), path=BASE)
    return response


@public.post("/login")
async def sign_in(request: Request, platform: PlatformDep) -> Response:
    auth = portal_auth(request)
    address = client_address(request)
    auth.throttle.refuse_if_blocked(address, "sign-ins")
    form = await read_form(request)
    if not auth.signer.login_nonce_valid(request.cookies.get(LOGIN_COOKIE), form.get("csrf_token")):
        raise SignInRequired("the sign-in page expired; open your link again")
    now = utcnow()
    try:
        organization_id = await platform.in_session(lambda s: use_link(s, form.text("token"), now))
    except ModelMintError:
        auth.throttle.failed(address)
        raise
    auth.throttle.succeeded(address)
    cookie, _ = auth.signer.issue(organization_id)
    response = _redirect(BASE)
    auth.set_session_cookie(request, response, cookie)
    clear_cookie(request, response, LOGIN_COOKIE, path=BASE)
    return response


@signed_in.post("/logout")
async def sign_out(request: Request, customer: CurrentCustomer) -> Response:
    auth = portal_auth(request)
    auth.signer.revoke(customer.session)
    response = render(request, "signed_out.html", {"message": "You are signed out."})
    auth.clear_session_cookie(request, response)
    return response


# -- usage, credit, budgets, limits ----------------------------------------------------------


def _organization(session: Session, customer: PortalCustomer) -> Organization:
    organization = session.get(Organization, customer.organization_id)
    if organization is None or organization.deleted_at is not None:
        raise SignInRequired("this account no longer exists")
    return organization


def _overview(session: Session, customer: PortalCustomer) -> dict[str, Any]:
    organization = _organization(session, customer)
    now = utcnow()
    start = Period.containing(now).start
    by_day = usage_report(session, organization.id, start, now, ("day",))
    by_model = usage_report(session, organization.id, start, now, ("model",))
    by_key = usage_report(session, organization.id, start, now, ("key",))
    key_names = {k.id: k.name or k.prefix for k in accounts.list_keys(session, organization)}
    return {
        "organization": organization.name,
        "balance": balance(session, organization, None),
        "by_day": by_day,
        "by_model": by_model,
        "by_key": by_key,
        "key_names": key_names,
        "month": f"{start:%Y-%m}",
        "charts": usage_charts(by_day, by_model, by_key, key_names),
    }


@signed_in.get("")
async def overview(request: Request, customer: CurrentCustomer, platform: PlatformDep) -> Response:
    data = await platform.in_session(lambda s: _overview(s, customer))
    return customer_page(request, customer, "overview.html", {"active": "overview", **data})


# -- invoices -------------------------------------------------------------------------------


def _invoices(session: Session, customer: PortalCustomer) -> dict[str, Any]:
    organization = _organization(session, customer)
    rows = [
        row
        for row in reversed(billing_admin.list_invoices(session, organization.id))
        if row["status"] != "draft"  # a draft is the operator's work in progress
    ]
    return {
        "organization": organization.name,
        "invoices": rows,
        "payments": payment_status.invoice_payments(session, [r["id"] for r in rows]),
    }


def _own_invoice(session: Session, customer: PortalCustomer, invoice_id: str) -> None:
    row = find_invoice(session, invoice_id)
    if row is None or row.organization_id != customer.organization_id or row.status == "draft":
        raise NotFound(f"no invoice {invoice_id!r}")


@signed_in.get("/invoices")
async def invoices(request: Request, customer: CurrentCustomer, platform: PlatformDep) -> Response:
    data = await platform.in_session(lambda s: _invoices(s, customer))
    return customer_page(request, customer, "invoices.html", {"active": "invoices", **data})


# Each download: how the invoice is rendered, and the type it is served as.
_DOWNLOADS: dict[str, tuple[Callable[[Session, str], bytes | str], str]] = {
    "csv": (billing_admin.invoice_csv, "text/csv; charset=utf-8"),
    "pdf": (billing_admin.invoice_pdf, "application/pdf"),
}


@signed_in.get("/invoices/{invoice_id}.{kind}")
async def invoice_download(
    customer: CurrentCustomer, platform: PlatformDep, invoice_id: str, kind: str
) -> Response:
    """The signed-in organisation's invoice as CSV or PDF; anyone else's is a 404."""
    if kind not in _DOWNLOADS:
        raise NotFound(f"no download {kind!r}: choose csv or pdf")
    render, media_type = _DOWNLOADS[kind]

    def work(session: Session) -> bytes | str:
        _own_invoice(session, customer, invoice_id)
        return render(session, invoice_id)

    body = await platform.in_session(work)
    return attachment(body, media_type, f"{invoice_id}.{kind}")


# -- API keys -------------------------------------------------------------------------------


def _keys(session: Session, customer: PortalCustomer) -> dict[str, Any]:
    organization = _organization(session, customer)
    now = utcnow()
    return {
        "organization": organization.name,
        "keys": [
            {
                "id": row.id,
                "name": row.name,
                "prefix": row.prefix,
                "models": ", ".join(row.models) if row.models is not None else "all",
                "expires_at": row.expires_at,
                "created_at": row.created_at,
                "active": row.revoked_at is None
                and (row.expires_at is None or row.expires_at > now),
            }
            for row in reversed(accounts.list_keys(session, organization))
        ],
        "max_days": MAX_KEY_DAYS,
        "default_days": DEFAULT_KEY_DAYS,
    }


@signed_in.get("/keys")
async def keys(request: Request, customer: CurrentCustomer, platform: PlatformDep) -> Response:
    data = await platform.in_session(lambda s: _keys(s, customer))
    return customer_page(
        request, customer, "keys.html", {"active": "keys", "secret": None, "models": [], **data}
    )


@signed_in.post("/keys")
async def create_key(
    request: Request, customer: CurrentCustomer, platform: PlatformDep
) -> Response:
    """A new key, its secret shown on this answer only (never stored, never shown again)."""
    form = await read_form(request)
    name = form.text("name").strip()[:100]
    days = form.integer("days") or DEFAULT_KEY_DAYS
    if days > MAX_KEY_DAYS:
        raise InvalidRequest(f"a key lives at most {MAX_KEY_DAYS} days", param="days")
    served = set(platform.router.routes)
    models = [m.strip() for m in form.text("models").split(",") if m.strip()] or None
    if models is not None and not set(models) <= served:
        unknown = ", ".join(sorted(set(models) - served))
        raise InvalidRequest(f"no model named {unknown}", param="models")

    def work(session: Session) -> dict[str, Any]:
        organization = _organization(session, customer)
        _, secret = accounts.create_key(
            session,
            organization,
            name=name,
            models=models,
            expires_at=utcnow() + timedelta(days=days),
        )
        return {**_keys(session, customer), "secret": secret}

    data = await platform.in_session(work)
    return customer_page(request, customer, "keys.html", {"active": "keys", "models": [], **data})


@signed_in.post("/keys/{key_id}/revoke")
async def revoke_key(customer: CurrentCustomer, platform: PlatformDep, key_id: str) -> Response:
    def work(session: Session) -> None:
        row = session.get(ApiKey, key_id)
        if row is None or row.organization_id != customer.organization_id:
            raise NotFound(f"no API key {key_id!r}")
        accounts.revoke_key(session, row.id)

    await platform.in_session(work)
    # Every process stops accepting it within cache_ttl_s; this one at once.
    platform.keys.forget(key_id)
    return _redirect(f"{BASE}/keys")


# -- payment method, top-up, auto top-up --------------------------------------------------------


def _payments_of(platform: PlatformDep) -> Payments:
    if platform.payments is None:
        raise NotFound("payments are not enabled by your provider", code="payments_disabled")
    return platform.payments


def _billing(session: Session, customer: PortalCustomer) -> dict[str, Any]:
    organization = _organization(session, customer)
    account = payment_status.account(session, organization.id)
    return {
        "organization": organization.name,
        "account": account,
        "credit": balance(session, organization, None)["credit"],
    }


@signed_in.get("/billing")
async def billing(request: Request, customer: CurrentCustomer, platform: PlatformDep) -> Response:
    data = await platform.in_session(lambda s: _billing(s, customer))
    context: dict[str, Any] = {
        "active": "billing",
        "enabled": platform.payments is not None,
        "stripe_js": platform.settings.stripe_js_url,
        "setup": None,
        "message": request.query_params.get("done", ""),
        **data,
    }
    if platform.payments is not None and request.query_params.get("add") == "card":
        payments = platform.payments
        context["setup"] = await asyncio.to_thread(payments.start_setup, customer.organization_id)
    return customer_page(request, customer, "billing.html", context)


@signed_in.post("/billing/payment-method")
async def save_card(request: Request, customer: CurrentCustomer, platform: PlatformDep) -> Response:
    payments = _payments_of(platform)
    form = await read_form(request)
    setup_intent = form.text("setup_intent")
    await asyncio.to_thread(
        lambda: payments.save_method(customer.organization_id, setup_intent=setup_intent)
    )
    return _redirect(f"{BASE}/billing?done=card")


@signed_in.post("/billing/top-up")
async def top_up(request: Request, customer: CurrentCustomer, platform: PlatformDep) -> Response:
    payments = _payments_of(platform)
    form = await read_form(request)
    result = await asyncio.to_thread(
        payments.top_up, customer.organization_id, form.text("amount"), form.text("currency", "USD")
    )
    return _redirect(f"{BASE}/billing?done=top-up-{result['status']}")


@signed_in.post("/billing/auto-top-up")
async def auto_top_up(
    request: Request, customer: CurrentCustomer, platform: PlatformDep
) -> Response:
    payments = _payments_of(platform)
    form = await read_form(request)
    off = form.text("off") == "on"
    below = None if off else form.text("below")
    amount = None if off else form.text("amount")
    await asyncio.to_thread(
        lambda: payments.set_auto_top_up(
            customer.organization_id,
            below=below,
            amount=amount,
            currency=form.text("currency", "USD"),
        )
    )
    return _redirect(f"{BASE}/billing?done=auto-top-up")


router = APIRouter(include_in_schema=False)
router.include_router(public)
router.include_router(signed_in)
