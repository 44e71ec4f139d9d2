"""Coupons and their redemptions as stored: a coupon is defined once, and each
organisation redeems it at most once, from a first period on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from modelmint.billing.coupons import Coupon, Redemption
from modelmint.billing.periods import Period
from modelmint.billing.serialization import coupon_from_dict, coupon_to_dict
from modelmint.billing.store.base import StorePart
from modelmint.errors import Conflict, NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import BillingCoupon, BillingCouponRedemption

__all__ = ["CouponStore"]


class CouponStore(StorePart):
    """Coupon definitions and redemptions."""

    def create_coupon(self, coupon: Coupon) -> Coupon:
        if self._session.get(BillingCoupon, coupon.code) is not None:
            raise Conflict(f"coupon {coupon.code!r} already exists", param="code")
        self._session.add(BillingCoupon(code=coupon.code, definition=coupon_to_dict(coupon)))
        self._flush(f"coupon {coupon.code!r} already exists")
        return coupon

    def load_coupon(self, code: str) -> Coupon:
        row = self._session.get(BillingCoupon, code)
        if row is None:
            raise NotFound(f"no coupon {code!r}", param="coupon", code="coupon_not_found")
        return coupon_from_dict(row.definition)

    def catalog(self) -> list[tuple[Coupon, int, datetime]]:
        """Every coupon by code, with how many organisations redeemed it and when it
        was created."""
        redeemed = self._session.execute(
            select(
                BillingCouponRedemption.coupon_code, func.count(BillingCouponRedemption.id)
            ).group_by(BillingCouponRedemption.coupon_code)
        )
        counts: dict[str, int] = {code: n for code, n in redeemed}
        rows = self._session.scalars(select(BillingCoupon).order_by(BillingCoupon.code))
        return [
            (coupon_from_dict(row.definition), counts.get(row.code, 0), row.created_at)
            for row in rows
        ]

    def redeem_coupon(self, organization_id: str, code: str, first_period: Period) -> Redemption:
        """Apply coupon ``code`` to the organisation from ``first_period`` on (once each)."""
        self._require_org(organization_id)
        coupon = self.load_coupon(code)
        duplicate = f"{organization_id!r} already redeemed coupon {code!r}"
        exists = self._session.scalar(
            select(BillingCouponRedemption.id).where(
                BillingCouponRedemption.organization_id == organization_id,
                BillingCouponRedemption.coupon_code == code,
            )
        )
        if exists is not None:
            raise Conflict(duplicate, param="coupon")
        self._session.add(
            BillingCouponRedemption(
                id=new_id("red"),
                organization_id=organization_id,
                coupon_code=code,
                first_period_start=first_period.start,
                first_period_end=first_period.end,
            )
        )
        self._flush(duplicate)
        return Redemption(coupon, first_period)

    def redemptions(self, organization_id: str) -> list[Redemption]:
        """The organisation's coupon redemptions, oldest first period first."""
        self._require_org(organization_id)
        rows = self._session.scalars(
            select(BillingCouponRedemption)
            .where(BillingCouponRedemption.organization_id == organization_id)
            .order_by(BillingCouponRedemption.first_period_start, BillingCouponRedemption.id)
        )
        return [
            Redemption(
                self.load_coupon(row.coupon_code),
                Period(row.first_period_start, row.first_period_end),
            )
            for row in rows
        ]

    def redemption_for(self, organization_id: str, period: Period) -> Redemption | None:
        """The most recent redemption whose duration covers ``period``, if any."""
        applying = [r for r in self.redemptions(organization_id) if r.applies_to(period)]
        return applying[-1] if applying else None
