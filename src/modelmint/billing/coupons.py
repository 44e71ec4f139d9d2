"""Coupons: a percentage or a fixed amount off an invoice's subtotal, for some periods.

Where a coupon sits in an invoice (see ``invoices``): charge lines -> subtotal ->
coupon discount -> tax on the discounted subtotal -> total. The discount is rounded
half-even to minor units once, and is never more than the subtotal: a coupon can
bring an invoice to zero, never below (a subtotal that is already negative, from
proration credits, gets no discount at all).

Duration: ``once`` (the first period), ``repeating(n)`` (n consecutive periods from
the first) or ``forever``. A ``Redemption`` ties a coupon to the period an
organisation first used it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from modelmint.billing.errors import CurrencyMismatch, InvalidCoupon
from modelmint.billing.exact import EXACT, to_decimal
from modelmint.billing.money import Money
from modelmint.billing.periods import Period

__all__ = ["AmountOff", "Coupon", "CouponDuration", "DurationKind", "PercentOff", "Redemption"]

_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class PercentOff:
    """``percent`` of the subtotal off, 0 < percent <= 100."""

    percent: Decimal

    def __post_init__(self) -> None:
        value = to_decimal(self.percent, what="percent off", error=InvalidCoupon)
        if not 0 < value <= _HUNDRED:
            raise InvalidCoupon(f"percent off must be in (0, 100], got {value}")
        object.__setattr__(self, "percent", value)

    def off(self, subtotal: Money) -> Money:
        exact = EXACT.divide(EXACT.multiply(subtotal.amount, self.percent), _HUNDRED)
        return Money.rounded(exact, subtotal.currency)


@dataclass(frozen=True, slots=True)
class AmountOff:
    """A fixed ``amount`` off the subtotal."""

    amount: Money

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Money) or self.amount.is_negative or self.amount.is_zero:
            raise InvalidCoupon(f"amount off must be positive Money, got {self.amount!r}")

    def off(self, subtotal: Money) -> Money:
        if subtotal.currency != self.amount.currency:
            raise CurrencyMismatch(
                f"a {self.amount.currency} coupon on a {subtotal.currency} invoice"
            )
        return self.amount.quantize()


class DurationKind(StrEnum):
    ONCE = "once"
    REPEATING = "repeating"
    FOREVER = "forever"


@dataclass(frozen=True, slots=True)
class CouponDuration:
    kind: DurationKind
    periods: int | None = None  # only for REPEATING

    def __post_init__(self) -> None:
        if self.kind is DurationKind.REPEATING:
            if isinstance(self.periods, bool) or not isinstance(self.periods, int):
                raise InvalidCoupon("a repeating coupon needs a number of periods")
            if self.periods < 1:
                raise InvalidCoupon(
                    f"a repeating coupon lasts at least 1 period, not {self.periods}"
                )
        elif self.periods is not None:
            raise InvalidCoupon(f"a {self.kind.value} coupon takes no number of periods")

    @classmethod
    def once(cls) -> CouponDuration:
        return cls(DurationKind.ONCE)

    @classmethod
    def repeating(cls, periods: int) -> CouponDuration:
        return cls(DurationKind.REPEATING, periods)

    @classmethod
    def forever(cls) -> CouponDuration:
        return cls(DurationKind.FOREVER)

    def covers(self, first: Period, period: Period) -> bool:
        """Whether a coupon first used in ``first`` still applies in ``period``."""
        index = _month_index(period) - _month_index(first)
        if index < 0:
            return False
        if self.kind is DurationKind.ONCE:
            return index == 0
        if self.kind is DurationKind.REPEATING:
            assert self.periods is not None
            return index < self.periods
        return True


def _month_index(period: Period) -> int:
    return period.start.year * 12 + period.start.month - 1


@dataclass(frozen=True, slots=True)
class Coupon:
    code: str
    discount: PercentOff | AmountOff
    duration: CouponDuration

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not self.code.strip():
            raise InvalidCoupon("a coupon needs a code")

    def discount_on(self, subtotal: Money) -> Money:
        """The discount on ``subtotal``, rounded, between zero and the subtotal."""
        off = self.discount.off(subtotal)
        if subtotal.is_negative or subtotal.is_zero:
            return Money.zero(subtotal.currency)
        return min(off, subtotal)


@dataclass(frozen=True, slots=True)
class Redemption:
    """``coupon`` applied to an organisation from ``first_period`` on."""

    coupon: Coupon
    first_period: Period

    def applies_to(self, period: Period) -> bool:
        return self.coupon.duration.covers(self.first_period, period)
