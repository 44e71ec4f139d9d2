"""Pricing period totals: the allowance shared among models, and demand elasticity."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelmint.analytics.repricing import (
    checked_elasticity,
    demand_factor,
    fits,
    price_usage,
    scale,
    share_pool,
)
from modelmint.billing import (
    FlatRate,
    FreeTierPlan,
    Metric,
    Money,
    PriceBook,
    PriceNotFound,
    SubscriptionPlan,
)
from modelmint.errors import InvalidRequest

D = Decimal


def starter(included: int) -> SubscriptionPlan:
    book = PriceBook(
        "USD",
        {
            ("a", Metric.INPUT_TOKENS): FlatRate(D("1"), 1000),
            ("b", Metric.INPUT_TOKENS): FlatRate(D("3"), 1000),
        },
    )
    return SubscriptionPlan("s", 1, Money(D("10"), "USD"), book, {Metric.INPUT_TOKENS: included})


@given(
    allowance=st.integers(0, 10**6),
    used=st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 10**6), min_size=1),
)
def test_the_pool_is_shared_in_whole_units_and_never_overspent(
    allowance: int, used: dict[str, int]
) -> None:
    shares = share_pool(allowance, used)
    assert set(shares) == set(used)
    assert all(isinstance(s, int) and 0 <= s <= used[m] for m, s in shares.items())
    assert sum(shares.values()) == min(allowance, sum(used.values()))


def test_fractional_quantities_share_by_the_microsecond() -> None:
    shares = share_pool(D("1.5"), {"a": D("1"), "b": D("2")})
    assert shares == {"a": D("0.5"), "b": D("1")}
    assert share_pool(None, {"a": D("3")}) == {"a": D("3")}


def test_usage_is_priced_by_the_plans_own_charges() -> None:
    usage = {("a", Metric.INPUT_TOKENS): 3000, ("b", Metric.INPUT_TOKENS): 1000}
    # The actual split: model a used the 2000 included tokens.
    reused = price_usage(
        starter(2000), usage, {("a", Metric.INPUT_TOKENS): 2000}, frozenset({Metric.INPUT_TOKENS})
    )
    assert reused == {"a": D("1"), "b": D("3")}
    # Shared in proportion (1500 / 500): a pays 1500 tokens, b 500.
    assert price_usage(starter(2000), usage) == {"a": D("1.5"), "b": D("1.5")}
    with pytest.raises(PriceNotFound):
        price_usage(starter(0), {("c", Metric.INPUT_TOKENS): 1})


def test_a_free_tier_takes_only_usage_within_its_caps() -> None:
    free = FreeTierPlan("free", 1, "USD", {Metric.INPUT_TOKENS: 100})
    assert fits(free, {("a", Metric.INPUT_TOKENS): 100})
    assert not fits(free, {("a", Metric.INPUT_TOKENS): 60, ("b", Metric.INPUT_TOKENS): 41})
    assert fits(starter(0), {("a", Metric.INPUT_TOKENS): 10**9})


def test_demand_moves_against_the_price() -> None:
    e = D("-0.5")
    assert demand_factor(D(1), D(4), e) == D("0.5")
    assert demand_factor(D(4), D(1), e) == D(2)
    assert demand_factor(D(1), D(1), e) == 1  # no change
    assert demand_factor(D(0), D(3), e) == 1  # no price signal
    assert demand_factor(D(1), D(4), None) == 1
    assert scale(1001, D("0.5")) == 500  # half-even
    assert scale(D("1.0000015"), D(1)) == D("1.000002")


@pytest.mark.parametrize("text", ["-0.3", "0", "-10", " -1.5 "])
def test_an_elasticity_is_zero_or_negative(text: str) -> None:
    assert checked_elasticity(text) == D(text.strip())


@pytest.mark.parametrize("value", ["2", "0.1", "-10.5", "NaN", "-Infinity", D(1)])
def test_an_elasticity_that_would_grow_demand_with_the_price_is_refused(
    value: str | Decimal,
) -> None:
    with pytest.raises(InvalidRequest, match=r"between -10 and 0 \(demand falls"):
        checked_elasticity(value)
