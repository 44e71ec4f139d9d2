"""Coupons and tax: discounts never push a subtotal below zero; one rounding each."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelmint.billing import (
    AmountOff,
    Coupon,
    CouponDuration,
    CurrencyMismatch,
    InvalidCoupon,
    InvalidTaxRate,
    Money,
    PercentOff,
    Period,
    Redemption,
    TaxRate,
)

D = Decimal


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def coupon(discount: PercentOff | AmountOff, duration: CouponDuration | None = None) -> Coupon:
    return Coupon("LAUNCH", discount, duration or CouponDuration.once())


def test_percent_off_rounds_half_even() -> None:
    ten = coupon(PercentOff(D("10")))
    assert ten.discount_on(usd("123.45")) == usd("12.34")  # 12.345 ties to even
    assert ten.discount_on(usd("123.55")) == usd("12.36")  # 12.355 ties to even
    assert coupon(PercentOff(D("100"))).discount_on(usd("42.42")) == usd("42.42")


def test_a_coupon_never_makes_a_subtotal_negative() -> None:
    fifty = coupon(AmountOff(usd("50")))
    assert fifty.discount_on(usd("30.00")) == usd("30.00")
    assert fifty.discount_on(usd("80.00")) == usd("50")
    assert fifty.discount_on(usd("-5.00")) == usd("0")  # credits already exceed charges
    assert coupon(PercentOff(D("20"))).discount_on(usd("-5.00")) == usd("0")


def test_an_amount_off_in_another_currency_is_refused() -> None:
    with pytest.raises(CurrencyMismatch):
        coupon(AmountOff(Money.parse("5", "EUR"))).discount_on(usd("10"))


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: PercentOff(D("0")), r"\(0, 100\]"),
        (lambda: PercentOff(D("100.01")), r"\(0, 100\]"),
        (lambda: AmountOff(usd("0")), "positive"),
        (lambda: CouponDuration.repeating(0), "at least 1 period"),
        (lambda: CouponDuration(CouponDuration.once().kind, 3), "takes no number"),
        (lambda: Coupon(" ", PercentOff(D("5")), CouponDuration.once()), "needs a code"),
    ],
)
def test_invalid_coupons_say_why(build: object, problem: str) -> None:
    with pytest.raises(InvalidCoupon, match=problem):
        build()  # type: ignore[operator]


def test_durations_cover_the_right_periods() -> None:
    first = Period.month(2026, 11)
    months = [first.shifted(n) for n in range(-1, 5)]  # October .. March

    def covered(duration: CouponDuration) -> list[bool]:
        redemption = Redemption(coupon(PercentOff(D("5")), duration), first)
        return [redemption.applies_to(month) for month in months]

    assert covered(CouponDuration.once()) == [False, True, False, False, False, False]
    assert covered(CouponDuration.repeating(3)) == [False, True, True, True, False, False]
    assert covered(CouponDuration.forever()) == [False, True, True, True, True, True]


def test_tax_is_rounded_once_half_even() -> None:
    vat = TaxRate(D("20"), "VAT")
    assert vat.tax_on(usd("99.99")) == usd("20.00")  # 19.998
    assert TaxRate(D("7.5")).tax_on(usd("10.10")) == usd("0.76")  # 0.7575
    assert TaxRate(D("10")).tax_on(usd("0.25")) == usd("0.02")  # 0.025 ties to even
    assert vat.tax_on(usd("-10.00")) == usd("-2.00")  # a credit reverses tax
    assert TaxRate.none().tax_on(usd("10")) == usd("0")
    assert str(vat) == "VAT 20%"


@pytest.mark.parametrize("percent", ["-1", "100.5"])
def test_tax_rates_outside_0_to_100_are_refused(percent: str) -> None:
    with pytest.raises(InvalidTaxRate, match="between 0 and 100"):
        TaxRate(D(percent))
