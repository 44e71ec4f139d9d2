"""Serialization: every billing document survives JSON exactly, and bad input is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from modelmint.billing import (
    AmountOff,
    Coupon,
    CouponDuration,
    CreditGrant,
    EnterprisePlan,
    FlatRate,
    FreeTierPlan,
    GraduatedTiers,
    GrantKind,
    InvalidCoupon,
    InvalidPlan,
    InvalidPriceBook,
    InvalidTaxRate,
    Metric,
    Money,
    PackagePrice,
    PercentOff,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
    TaxRate,
    Tier,
    VolumeTiers,
    tiers_up_to,
)
from modelmint.billing.serialization import (
    charge_from_dict,
    charge_to_dict,
    coupon_from_dict,
    coupon_to_dict,
    grant_from_dict,
    grant_to_dict,
    plan_from_dict,
    plan_to_dict,
    price_book_from_dict,
    price_book_to_dict,
    tax_rate_from_dict,
    tax_rate_to_dict,
)
from modelmint.errors import InvalidRequest

TINY = Decimal("0.000000150000000001")


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


def book() -> PriceBook:
    return PriceBook(
        "USD",
        {
            ("*", Metric.INPUT_TOKENS): FlatRate(Decimal("0.15"), 1_000_000),
            ("small-chat", Metric.OUTPUT_TOKENS): GraduatedTiers(
                tiers_up_to((1000, Decimal("0.10"), Decimal("1.5")), (None, TINY))
            ),
            ("smollm2", Metric.REQUESTS): VolumeTiers(
                tiers_up_to((10, Decimal("2")), (None, Decimal("1")), per_units=1024)
            ),
            ("*", Metric.COMPUTE_SECONDS): GraduatedTiers(
                (
                    Tier(0, Decimal("0.5"), Decimal("0.01")),
                    Tier(Decimal("0.5"), None, Decimal("0.02")),
                )
            ),
            ("smollm2", Metric.EMBEDDING_TOKENS): PackagePrice(Decimal("0.30"), 1000),
        },
        {"smollm2": "small-chat"},
    )


@pytest.mark.parametrize(
    "charge",
    [
        FlatRate(TINY),
        FlatRate(Decimal("0.15"), 1_000_000),
        GraduatedTiers(tiers_up_to((1000, Decimal("0.10"), Decimal("3")), (None, TINY))),
        VolumeTiers(tiers_up_to((5, Decimal("1")), (None, Decimal("0.5")), per_units=1024)),
        PackagePrice(Decimal("12.50"), 1000),
    ],
)
def test_charge_models_round_trip_exactly_through_json(charge: Any) -> None:
    assert charge_from_dict(through_json(charge_to_dict(charge))) == charge


def test_decimals_are_plain_strings_never_floats_or_exponents() -> None:
    data = charge_to_dict(FlatRate(Decimal("1.5E-7")))
    assert data == {"type": "flat", "amount": "0.00000015", "per_units": 1}
    tiers = charge_to_dict(GraduatedTiers(tiers_up_to((1000, TINY), (None, Decimal(0)))))
    assert tiers["tiers"][0] == {
        "start": 0,
        "up_to": 1000,
        "price": "0.000000150000000001",
        "flat_fee": "0",
        "per_units": 1,
    }


def test_price_book_round_trips_with_groups_and_decimal_bounds() -> None:
    original = book()
    loaded = price_book_from_dict(through_json(price_book_to_dict(original)))
    assert loaded.currency == "USD"
    assert dict(loaded.prices) == dict(original.prices)
    assert dict(loaded.model_groups) == {"smollm2": "small-chat"}
    # A Decimal tier bound stays a Decimal, an int bound an int.
    seconds = loaded.prices[("*", Metric.COMPUTE_SECONDS)]
    assert isinstance(seconds, GraduatedTiers)
    assert seconds.tiers[1].start == Decimal("0.5") and isinstance(seconds.tiers[0].start, int)
    assert loaded.price("smollm2", Metric.OUTPUT_TOKENS, 1001) == Decimal("101.500000150000000001")


def test_price_book_text_is_canonical_whatever_the_insertion_order() -> None:
    forward = book()
    backward = PriceBook(
        "USD", dict(reversed(list(forward.prices.items()))), {"smollm2": "small-chat"}
    )
    assert json.dumps(price_book_to_dict(forward)) == json.dumps(price_book_to_dict(backward))


@pytest.mark.parametrize(
    "plan",
    [
        FreeTierPlan("free", 1, "USD", {Metric.INPUT_TOKENS: 10_000, Metric.REQUESTS: None}),
        SubscriptionPlan(
            "pro", 3, Money.parse("49.99", "USD"), book(), {Metric.OUTPUT_TOKENS: 50_000}
        ),
        PrepaidPlan("payg", 1, PriceBook("EUR", {("*", Metric.INPUT_TOKENS): FlatRate(TINY)})),
        EnterprisePlan("acme", 2, Money.parse("10000.00", "JPY")),
    ],
    ids=["free", "subscription", "prepaid", "enterprise"],
)
def test_every_plan_kind_round_trips(plan: Any) -> None:
    loaded = plan_from_dict(through_json(plan_to_dict(plan)))
    assert type(loaded) is type(plan)
    assert loaded.ref == plan.ref
    assert loaded.currency == plan.currency
    assert loaded.fixed_fee == plan.fixed_fee
    for metric in Metric:
        assert loaded.allowance(metric) == plan.allowance(metric)
    if isinstance(plan, SubscriptionPlan | PrepaidPlan):
        assert isinstance(loaded, SubscriptionPlan | PrepaidPlan)
        assert dict(loaded.price_book.prices) == dict(plan.price_book.prices)


def test_grant_coupon_and_tax_rate_round_trip() -> None:
    grant = CreditGrant(
        "grant_3",
        GrantKind.PAID,
        Money(TINY, "USD"),
        10,
        datetime(2026, 11, 1, 12, 30, tzinfo=UTC),
        datetime(2027, 11, 1, tzinfo=UTC),
        3,
    )
    assert grant_from_dict(through_json(grant_to_dict(grant))) == grant
    for coupon in (
        Coupon("HALF", PercentOff(Decimal("50")), CouponDuration.repeating(3)),
        Coupon("TENNER", AmountOff(Money.parse("10.00", "USD")), CouponDuration.forever()),
        Coupon("ONCE", PercentOff(Decimal("12.5")), CouponDuration.once()),
    ):
        assert coupon_from_dict(through_json(coupon_to_dict(coupon))) == coupon
    rate = TaxRate(Decimal("20.000"), "VAT")
    assert tax_rate_from_dict(through_json(tax_rate_to_dict(rate))) == rate


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "flat", "amount": 0.15}, "charge.amount: expected a decimal string"),
        ({"type": "flat", "amount": "abc"}, "not a decimal number"),
        ({"type": "flat"}, "charge: missing field 'amount'"),
        ({"type": "linear", "amount": "1"}, "'linear' is not one of"),
        ({"type": "flat", "amount": "-1"}, "must not be negative"),
        ({"type": "flat", "amount": "1", "per_units": 3}, "per_units=3"),
        ({"type": "package", "amount": "1", "size": "10"}, "charge.size: expected an integer"),
        ({"type": "graduated", "tiers": "none"}, "charge.tiers: expected a list"),
        (
            {
                "type": "graduated",
                "tiers": [
                    {"start": 0, "up_to": 10, "price": "1"},
                    {"start": 20, "up_to": None, "price": "1"},
                ],
            },
            "gap between tier 1",
        ),
        ({"type": "volume", "tiers": [{"start": 0, "price": "1", "up_to": True}]}, "up_to"),
        ([1, 2], "charge: expected an object"),
    ],
)
def test_malformed_charges_raise_invalid_price_book_naming_the_field(
    data: Any, message: str
) -> None:
    with pytest.raises(InvalidPriceBook, match=message.replace("(", r"\(").replace(")", r"\)")):
        charge_from_dict(data)


def test_malformed_price_books_raise_invalid_price_book() -> None:
    good = price_book_to_dict(book())
    with pytest.raises(InvalidPriceBook, match=r"prices\[0\]\.metric: unknown metric 'tokens'"):
        price_book_from_dict({**good, "prices": [{**good["prices"][0], "metric": "tokens"}]})
    with pytest.raises(InvalidPriceBook, match=r"prices\[1\]: a second price"):
        price_book_from_dict({**good, "prices": [good["prices"][0], good["prices"][0]]})
    with pytest.raises(InvalidPriceBook, match="three-letter"):
        price_book_from_dict({**good, "currency": "DOLLARS"})
    with pytest.raises(InvalidPriceBook, match=r"prices\[2\]\.charge\.tiers\[0\]\.price"):
        broken = json.loads(json.dumps(good))
        broken["prices"][2]["charge"]["tiers"][0]["price"] = 1.5
        price_book_from_dict(broken)


def test_malformed_plans_coupons_grants_and_rates_raise_invalid_request() -> None:
    with pytest.raises(InvalidPlan, match="'gold' is not one of"):
        plan_from_dict({"kind": "gold", "code": "x", "version": 1})
    with pytest.raises(InvalidPlan, match="version starts at 1"):
        plan_from_dict(
            plan_to_dict(EnterprisePlan("e", 1, Money.parse("1", "USD"))) | {"version": 0}
        )
    with pytest.raises(InvalidPlan, match=r"plan\.fee\.amount: expected a decimal string"):
        plan_from_dict(
            {
                "kind": "enterprise",
                "code": "e",
                "version": 1,
                "fee": {"amount": 1.0, "currency": "USD"},
            }
        )
    with pytest.raises(InvalidCoupon, match=r"percent off must be in \(0, 100\]"):
        coupon_from_dict(
            {
                "code": "X",
                "discount": {"type": "percent_off", "percent": "150"},
                "duration": {"kind": "once", "periods": None},
            }
        )
    with pytest.raises(InvalidTaxRate, match="between 0 and 100"):
        tax_rate_from_dict({"percent": "101"})
    grant = grant_to_dict(
        CreditGrant(
            "grant_1",
            GrantKind.PROMOTIONAL,
            Money.parse("1", "USD"),
            0,
            datetime(2026, 1, 1, tzinfo=UTC),
            None,
            1,
        )
    )
    with pytest.raises(InvalidRequest, match="has no UTC offset"):
        grant_from_dict(grant | {"granted_at": "2026-01-01T00:00:00"})
