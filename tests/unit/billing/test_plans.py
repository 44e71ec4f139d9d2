"""Plans: four kinds, immutable versions, a catalog that only ever adds versions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelmint.billing import (
    CurrencyMismatch,
    EnterprisePlan,
    FlatRate,
    FreeTierPlan,
    InvalidPlan,
    Metric,
    Money,
    PlanCatalog,
    PlanKind,
    PlanNotFound,
    PlanRef,
    PlanVersionConflict,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
    VolumeTiers,
    tiers_up_to,
)

D = Decimal
BOOK = PriceBook("USD", {("*", Metric.INPUT_TOKENS): FlatRate(D("0.15"), 1_000_000)})


def pro(version: int = 1, fee: str = "20") -> SubscriptionPlan:
    return SubscriptionPlan(
        "pro", version, Money.parse(fee, "USD"), BOOK, {Metric.INPUT_TOKENS: 1_000_000}
    )


def test_each_kind_states_its_terms() -> None:
    free = FreeTierPlan("free", 1, "USD", {Metric.INPUT_TOKENS: 10_000, Metric.REQUESTS: None})
    assert (free.kind, free.hard_cap, free.fixed_fee) == (PlanKind.FREE, True, Money.zero("USD"))
    assert free.allowance(Metric.INPUT_TOKENS) == 10_000
    assert free.allowance(Metric.REQUESTS) is None  # listed as unlimited
    assert free.allowance(Metric.OUTPUT_TOKENS) == 0  # unlisted: nothing free
    assert free.overage_charge("m", Metric.INPUT_TOKENS) is None

    plan = pro()
    assert (plan.kind, plan.hard_cap, plan.fixed_fee) == (
        PlanKind.SUBSCRIPTION,
        False,
        Money.parse("20", "USD"),
    )
    assert plan.allowance(Metric.INPUT_TOKENS) == 1_000_000
    assert plan.allowance(Metric.OUTPUT_TOKENS) == 0
    assert plan.overage_charge("m", Metric.INPUT_TOKENS) == FlatRate(D("0.15"), 1_000_000)

    prepaid = PrepaidPlan("payg", 1, BOOK)
    assert (prepaid.kind, prepaid.currency, prepaid.fixed_fee) == (
        PlanKind.PREPAID,
        "USD",
        Money.zero("USD"),
    )
    assert prepaid.allowance(Metric.INPUT_TOKENS) == 0

    licence = EnterprisePlan("acme", 1, Money.parse("5000", "EUR"))
    assert (licence.kind, licence.currency) == (PlanKind.ENTERPRISE, "EUR")
    assert licence.allowance(Metric.OUTPUT_TOKENS) is None
    assert licence.overage_charge("m", Metric.OUTPUT_TOKENS) is None


def test_a_revision_is_a_new_version_and_leaves_the_old_one_alone() -> None:
    v1 = pro()
    v2 = v1.revised(fee=Money.parse("25", "USD"))
    assert (v2.ref, v2.fee) == (PlanRef("pro", 2), Money.parse("25", "USD"))
    assert (v1.ref, v1.fee) == (PlanRef("pro", 1), Money.parse("20", "USD"))
    with pytest.raises(InvalidPlan, match="keeps the plan code"):
        v1.revised(code="other")


def test_the_catalog_only_accepts_the_next_version() -> None:
    catalog = PlanCatalog()
    catalog.publish(pro(1))
    revised = catalog.revise("pro", fee=Money.parse("30", "USD"))
    assert revised.ref == PlanRef("pro", 2)
    assert catalog.latest("pro") is revised
    assert catalog.get(PlanRef("pro", 1)).fixed_fee == Money.parse("20", "USD")
    assert [p.version for p in catalog.versions("pro")] == [1, 2]
    with pytest.raises(PlanVersionConflict, match="next version is 3"):
        catalog.publish(pro(2, fee="99"))  # rewriting a published version
    with pytest.raises(PlanVersionConflict, match="next version is 3"):
        catalog.publish(pro(4))
    with pytest.raises(PlanNotFound):
        catalog.get(PlanRef("pro", 3))
    with pytest.raises(PlanNotFound):
        catalog.latest("nope")


def test_invalid_plans_say_why() -> None:
    with pytest.raises(InvalidPlan, match="starts at 1"):
        pro(version=0)
    with pytest.raises(InvalidPlan, match="must not be negative"):
        pro(fee="-1")
    with pytest.raises(CurrencyMismatch, match="fee in EUR, prices in USD"):
        SubscriptionPlan("pro", 1, Money.parse("20", "EUR"), BOOK)
    with pytest.raises(InvalidPlan, match="allowance"):
        SubscriptionPlan("pro", 1, Money.parse("20", "USD"), BOOK, {Metric.INPUT_TOKENS: -5})
    with pytest.raises(InvalidPlan, match="whole number"):
        FreeTierPlan("free", 1, "USD", {Metric.INPUT_TOKENS: D("0.5")})


def test_a_prepaid_plan_refuses_prices_that_get_cheaper_with_usage() -> None:
    cheaper = VolumeTiers(tiers_up_to((100, D("1")), (None, D("0.5"))))
    book = PriceBook("USD", {("*", Metric.INPUT_TOKENS): cheaper})
    with pytest.raises(InvalidPlan, match="cheaper as usage grows"):
        PrepaidPlan("payg", 1, book)
    assert SubscriptionPlan("vol", 1, Money.zero("USD"), book).price_book is book
