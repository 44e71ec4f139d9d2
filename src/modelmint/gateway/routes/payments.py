"""Payments over HTTP: the provider's webhook, the admin API under /admin/payments, and
the portal's sign-in links under /admin/portal.

Thin adapters around ``payments.collection.Payments``. Provider calls block (the
official SDK is synchronous), so each runs on a worker thread. With payments off (no
provider key configured) every route answers 404 ``payments_disabled`` saying how to
turn them on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, NotFound
from modelmint.gateway.deps import AdminDep
from modelmint.gateway.routes.billing import DecimalString
from modelmint.payments.collection import Payments
from modelmint.platform import Platform, PlatformDep
from modelmint.portal.links import create_link, parse_ttl

router = APIRouter(tags=["payments"])
admin = APIRouter(prefix="/admin/payments", tags=["payments"], dependencies=[AdminDep])
portal_admin = APIRouter(prefix="/admin/portal", tags=["portal"], dependencies=[AdminDep])

log = logging.getLogger(__name__)
T = TypeVar("T")

# Stripe sends events of up to a few kB; anything far larger is not one.
_MAX_EVENT_BYTES = 512 * 1024


async def _run(platform: Platform, work: Callable[[Payments], T]) -> T:
    """``work`` on the platform's payments, on a worker thread (the SDK blocks)."""
    payments = _payments(platform)
    return await asyncio.to_thread(work, payments)


def _payments(platform: Platform) -> Payments:
    if platform.payments is None:
        raise NotFound(
            "payments are not configured: set STRIPE_SECRET_KEY (and STRIPE_WEBHOOK_SECRET "
            "for webhooks) in the gateway's environment",
            code="payments_disabled",
        )
    return platform.payments


@router.post("/webhooks/stripe")
async def stripe_webhook(request: Request, platform: PlatformDep) -> dict[str, Any]:
    """Apply one Stripe event. A signature that does not verify is a 400 and changes
    nothing; an event seen before is acknowledged and skipped."""
    payments = _payments(platform)
    payload = await request.body()
    if len(payload) > _MAX_EVENT_BYTES:
        raise InvalidRequest("not a Stripe event: the body is too large", code="invalid_event")
    event = payments.provider.event(payload, request.headers.get("stripe-signature"))
    outcome = await asyncio.to_thread(payments.apply_event, event)
    log.info("stripe event %s (%s): %s", event.id, event.type, outcome)
    return {"received": True, "id": event.id, "outcome": outcome}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodSave(_Body):
    setup_intent: str | None = Field(default=None, max_length=100)
    payment_method: str | None = Field(default=None, max_length=100)


class TopUp(_Body):
    amount: DecimalString
    currency: str = Field(min_length=3, max_length=3)


class AutoTopUp(_Body):
    below: DecimalString | None = Field(description="top up when credit falls below this")
    amount: DecimalString | None = Field(description="how much to buy each time")
    currency: str = Field(default="USD", min_length=3, max_length=3)


class PortalLinkCreate(_Body):
    org: str = Field(min_length=1, max_length=200, description="organisation name or id")
    ttl: str = Field(default="1h", max_length=20, description="90s, 30m, 1h, 2d")


@portal_admin.post("/links", status_code=201)
async def portal_link(
    body: PortalLinkCreate, request: Request, platform: PlatformDep
) -> dict[str, Any]:
    """A single-use sign-in link to the organisation's customer portal."""
    lifetime = parse_ttl(body.ttl)
    issued = await platform.in_session(lambda s: create_link(s, body.org, lifetime, utcnow()))
    return {
        "organization": issued.organization,
        "url": issued.url(str(request.base_url)),
        "expires_at": issued.expires_at.isoformat(),
    }


@admin.get("")
async def list_payments(
    platform: PlatformDep,
    org: str | None = Query(default=None),
    status: str | None = Query(default=None),
) -> list[dict[str, Any]]:
    return await _run(platform, lambda p: p.payments(org=org, state=status))


@admin.get("/organizations/{org}")
async def account(org: str, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.account(org))


@admin.post("/organizations/{org}/customer")
async def ensure_customer(org: str, platform: PlatformDep) -> dict[str, Any]:
    def work(payments: Payments) -> dict[str, Any]:
        payments.ensure_customer(org)
        return payments.account(org)

    return await _run(platform, work)


@admin.post("/organizations/{org}/setup-intents", status_code=201)
async def start_setup(org: str, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.start_setup(org))


@admin.put("/organizations/{org}/payment-method")
async def save_method(org: str, body: MethodSave, platform: PlatformDep) -> dict[str, Any]:
    return await _run(
        platform,
        lambda p: p.save_method(
            org, setup_intent=body.setup_intent, payment_method=body.payment_method
        ),
    )


@admin.post("/organizations/{org}/top-ups", status_code=201)
async def top_up(org: str, body: TopUp, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.top_up(org, body.amount, body.currency))


@admin.put("/organizations/{org}/auto-top-up")
async def set_auto_top_up(org: str, body: AutoTopUp, platform: PlatformDep) -> dict[str, Any]:
    """Both ``below`` and ``amount`` null turns auto top-up off."""
    return await _run(
        platform,
        lambda p: p.set_auto_top_up(
            org, below=body.below, amount=body.amount, currency=body.currency
        ),
    )


@admin.post("/organizations/{org}/unblock")
async def unblock(org: str, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.unblock(org))


@admin.post("/invoices/{invoice_id}/collect")
async def collect_invoice(invoice_id: str, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.collect_invoice(invoice_id))


@admin.post("/invoices/{invoice_id}/refund")
async def refund_invoice(invoice_id: str, platform: PlatformDep) -> dict[str, Any]:
    """Refund a paid invoice in full and void it."""
    return await _run(platform, lambda p: p.refund_invoice(invoice_id))


@admin.post("/dunning/run")
async def run_dunning(platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.run_dunning())


@admin.get("/{payment_id}")
async def show_payment(payment_id: str, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.payment(payment_id))


@admin.post("/{payment_id}/retry")
async def retry_payment(payment_id: str, platform: PlatformDep) -> dict[str, Any]:
    return await _run(platform, lambda p: p.retry(payment_id))
