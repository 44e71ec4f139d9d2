"""Rating: the exact charge of each request; the free tier's hard cap."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import (
    EnterprisePlan,
    FlatRate,
    FreeTierPlan,
    GraduatedTiers,
    LinearRates,
    Metric,
    Money,
    PeriodUsage,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
    UsageCapExceeded,
    tiers_up_to,
)
from modelmint.billing.exact import exact_sum

D = Decimal
IN, OUT = Metric.INPUT_TOKENS, Metric.OUTPUT_TOKENS
BOOK = PriceBook(
    "USD",
    {
        ("*", IN): FlatRate(D("0.15"), 1_000_000),
        ("*", OUT): FlatRate(D("0.60"), 1_000_000),
        ("big", OUT): GraduatedTiers(
            tiers_up_to((1000, D("0.002")), (None, D("0.001"), D("0.50")))
        ),
    },
)
FREE = FreeTierPlan("free", 1, "USD", {IN: 1000, OUT: 500, Metric.REQUESTS: None})


def test_the_free_tier_refuses_usage_past_its_cap_and_says_why() -> None:
    usage = PeriodUsage()
    usage.rate(FREE, "m", IN, 900)
    usage.admit(FREE, IN, 100)  # exactly up to the cap is fine
    with pytest.raises(UsageCapExceeded) as caught:
        usage.admit(FREE, IN, 101)
    refusal = caught.value
    assert (refusal.metric, refusal.limit, refusal.used, refusal.requested) == (
        "input_tokens",
        D(1000),
        D(900),
        D(101),
    )
    assert refusal.status_code == 402
    assert "includes 1000 input_tokens" in refusal.message
    assert "900 used, 101 more requested" in refusal.message


def test_the_free_cap_is_shared_by_all_models() -> None:
    usage = PeriodUsage()
    usage.rate(FREE, "a", OUT, 300)
    usage.rate(FREE, "b", OUT, 200)
    with pytest.raises(UsageCapExceeded):
        usage.admit(FREE, OUT, 1)


def test_unlisted_metrics_are_refused_and_unlimited_ones_are_not() -> None:
    usage = PeriodUsage()
    with pytest.raises(UsageCapExceeded, match="compute_seconds"):
        usage.admit(FREE, Metric.COMPUTE_SECONDS, 1)
    usage.admit(FREE, Metric.REQUESTS, 10**9)


def test_the_free_tier_never_charges_even_past_the_cap() -> None:
    usage = PeriodUsage()
    usage.rate(FREE, "m", IN, 800)
    rated = usage.rate(FREE, "m", IN, 300)  # served on an estimate that was too low
    assert (rated.included, rated.overage, rated.amount) == (200, 100, D(0))


def test_other_plans_admit_anything() -> None:
    PeriodUsage().admit(PrepaidPlan("payg", 1, BOOK), IN, 10**12)


def test_included_units_are_one_pool_across_models_in_request_order() -> None:
    plan = SubscriptionPlan("pro", 1, Money.parse("20", "USD"), BOOK, {IN: 1000})
    usage = PeriodUsage()
    first = usage.rate(plan, "a", IN, 800)
    second = usage.rate(plan, "b", IN, 500)
    third = usage.rate(plan, "b", IN, 100)
    assert (first.included, first.overage, first.amount) == (800, 0, D(0))
    assert (second.included, second.overage, second.amount) == (200, 300, D("0.000045"))
    assert (third.included, third.overage, third.amount) == (0, 100, D("0.000015"))
    total_b = usage.total(second.key)
    assert (total_b.quantity, total_b.included, total_b.overage) == (600, 200, 400)


def test_tiers_run_on_the_line_total_and_fees_fall_on_the_request_that_crosses() -> None:
    plan = PrepaidPlan("payg", 1, BOOK)
    usage = PeriodUsage()
    assert usage.rate(plan, "big", OUT, 999).amount == D("1.998")
    assert usage.rate(plan, "big", OUT, 2).amount == D("0.503")  # 0.002 + 0.001 + 0.50 fee
    assert usage.rate(plan, "big", OUT, 10).amount == D("0.010")


def test_enterprise_usage_is_reported_not_charged() -> None:
    plan = EnterprisePlan("acme", 1, Money.parse("5000", "USD"))
    rated = PeriodUsage().rate(plan, "m", OUT, 123_456)
    assert (rated.quantity, rated.included, rated.overage, rated.amount) == (
        123_456,
        123_456,
        0,
        D(0),
    )


def test_fractional_metrics_rate_exactly() -> None:
    book = PriceBook("USD", {("*", Metric.COMPUTE_SECONDS): FlatRate(D("0.0001"))})
    plan = SubscriptionPlan("gpu", 1, Money.zero("USD"), book, {Metric.COMPUTE_SECONDS: D("1.5")})
    usage = PeriodUsage()
    rated = usage.rate(plan, "m", Metric.COMPUTE_SECONDS, D("2.25"))
    assert (rated.included, rated.overage, rated.amount) == (D("1.5"), D("0.75"), D("0.000075"))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 3000),
    st.lists(st.tuples(st.sampled_from(["a", "big"]), st.integers(0, 700)), max_size=25),
)
def test_request_charges_sum_to_the_plan_price_of_the_overage(
    included: int, requests: list[tuple[str, int]]
) -> None:
    plan = SubscriptionPlan("pro", 1, Money.zero("USD"), BOOK, {OUT: included})
    usage = PeriodUsage()
    charged: dict[str, Decimal] = {}
    for model, tokens in requests:
        rated = usage.rate(plan, model, OUT, tokens)
        assert rated.amount >= 0
        charged[model] = charged.get(model, D(0)) + rated.amount
    for total in usage.totals():
        price = BOOK.lookup(total.key.model, OUT).charge.price(total.overage)
        assert charged[total.key.model] == price
    assert usage.included_used(plan.ref, OUT) == min(included, sum(n for _, n in requests))


# -- linear rates: rating without the running totals ---------------------------------------

LINEAR = PrepaidPlan("payg", 1, BOOK)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**7),
            st.integers(0, 10**7),
            st.decimals(min_value=0, max_value=10**4, places=6),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(["m", "other"]),
)
def test_linear_rates_charge_what_rating_in_order_charges(
    requests: list[tuple[int, int, Decimal]], model: str
) -> None:
    book = PriceBook(
        "USD",
        {
            ("*", IN): FlatRate(D("0.15"), 1_000_000),
            ("*", OUT): FlatRate(D("0.6"), 1024),
            ("*", Metric.COMPUTE_SECONDS): FlatRate(D("0.0001")),
        },
    )
    plans = [
        PrepaidPlan("payg", 1, book),
        SubscriptionPlan("pro", 1, Money(D("10"), "USD"), book),  # nothing included
        EnterprisePlan("ent", 1, Money(D("100"), "USD")),  # everything included
    ]
    for plan in plans:
        metrics = (IN, OUT, Metric.COMPUTE_SECONDS)
        rates = LinearRates.of(plan, model, metrics)
        assert rates is not None
        usage = PeriodUsage()  # rating in order, against the running totals
        for tokens_in, tokens_out, seconds in requests:
            for metric, quantity in zip(metrics, (tokens_in, tokens_out, seconds), strict=True):
                expected = usage.rate(plan, model, metric, quantity)
                assert rates.rated(metric, quantity) == expected
                assert rates.amount(metric, quantity) == expected.amount
            # A request's charge: the sum of its amounts, in integer arithmetic when
            # every quantity is whole, with the Decimal sum's very digits either way.
            for used in (
                dict(zip(metrics, (tokens_in, tokens_out, seconds), strict=True)),
                dict(zip(metrics, (tokens_in, tokens_out, int(seconds)), strict=True)),
            ):
                amounts = [rates.amount(metric, quantity) for metric, quantity in used.items()]
                charge = rates.charge(used)
                assert charge == exact_sum(amounts)
                assert str(charge) == str(rates._decimal_charge(used))


def test_rates_that_depend_on_the_period_are_not_linear() -> None:
    included = SubscriptionPlan("pro", 1, Money(D("10"), "USD"), BOOK, included={IN: 1000})
    assert LinearRates.of(included, "m", [IN]) is None  # included units run out
    assert LinearRates.of(included, "m", [OUT]) is not None  # this line has none
    assert LinearRates.of(LINEAR, "big", [OUT]) is None  # tiers
    assert LinearRates.of(LINEAR, "m", [OUT]) is not None
    assert LinearRates.of(FREE, "m", [IN]) is None  # a free tier's allowance runs out
