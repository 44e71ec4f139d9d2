"""Coupons for people: creating one, listing them, redeeming one for an organisation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.coupons import AmountOff
from modelmint.billing.errors import CurrencyMismatch, InvalidCoupon
from modelmint.billing.periods import Period
from modelmint.billing.serialization import Json, coupon_from_dict, coupon_to_dict
from modelmint.billing.store import BillingStore
from modelmint.billing_admin.fields import CODE_CHARS, iso, month, org_fields

__all__ = ["create_coupon", "list_coupons", "redeem_coupon"]


def create_coupon(session: Session, document: Mapping[str, Any]) -> Json:
    """Create a coupon (the format of ``serialization.coupon_from_dict``)."""
    coupon = coupon_from_dict(document)
    if len(coupon.code) > CODE_CHARS:
        raise InvalidCoupon(f"coupon code is longer than {CODE_CHARS} characters", param="code")
    BillingStore(session).coupons.create_coupon(coupon)
    return coupon_to_dict(coupon)


def list_coupons(session: Session) -> list[Json]:
    """Every coupon with how many organisations redeemed it."""
    return [
        {**coupon_to_dict(coupon), "redemptions": redemptions, "created_at": iso(created_at)}
        for coupon, redemptions, created_at in BillingStore(session).coupons.catalog()
    ]


def redeem_coupon(session: Session, org: str, code: str, period: str) -> Json:
    """Apply coupon ``code`` to the organisation from ``period`` (``"2026-11"``) on."""
    organization = accounts.get_org(session, org)
    first = Period.parse(period)
    store = BillingStore(session)
    coupon = store.coupons.load_coupon(code)
    if isinstance(coupon.discount, AmountOff):
        # Caught now rather than when the period closes and the invoice cannot be drafted.
        wanted = coupon.discount.amount.currency
        for subscription in store.subscriptions.timeline(organization.id).in_period(first):
            if subscription.plan.currency != wanted:
                raise CurrencyMismatch(
                    f"coupon {code!r} takes {wanted} off, but {organization.name!r} is billed "
                    f"in {subscription.plan.currency} in {month(first)}",
                    param="coupon",
                )
    redemption = store.coupons.redeem_coupon(organization.id, code, first)
    return {
        **org_fields(organization),
        "coupon": coupon_to_dict(redemption.coupon),
        "first_period": month(redemption.first_period),
    }
