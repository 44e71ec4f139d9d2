"""Invoicing: usage lines are the exact request charges, rounded once per line."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import (
    ChargeMismatch,
    Coupon,
    CouponDuration,
    CurrencyMismatch,
    EnterprisePlan,
    FlatRate,
    GraduatedTiers,
    LineKind,
    Metric,
    Money,
    PercentOff,
    Period,
    PeriodUsage,
    PlanCatalog,
    PlanRef,
    PrepaidPlan,
    PriceBook,
    Redemption,
    SubscriptionConflict,
    SubscriptionPlan,
    SubscriptionTimeline,
    TaxRate,
    UsageKey,
    draft_invoice,
    tiers_up_to,
)
from modelmint.billing.plans import Plan

D = Decimal
IN, OUT = Metric.INPUT_TOKENS, Metric.OUTPUT_TOKENS
NOV = Period.month(2026, 11)
BOOK = PriceBook(
    "USD",
    {
        ("*", IN): FlatRate(D("0.15"), 1_000_000),
        ("*", OUT): FlatRate(D("0.60"), 1_000_000),
        ("large", OUT): GraduatedTiers(
            tiers_up_to((10_000, D("2.00")), (None, D("1.50")), per_units=1_000_000)
        ),
    },
    model_groups={"llama-70b": "large"},
)
PRO = SubscriptionPlan("pro", 1, Money.parse("20", "USD"), BOOK, {IN: 1_000_000})


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, tzinfo=UTC)


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


class Org:
    """An organisation's period: its timeline, rated usage and collected request charges."""

    def __init__(self, plan: Plan, since: datetime = at(3, month=10)) -> None:
        self.timeline = SubscriptionTimeline("org")
        self.timeline.subscribe(plan, since)
        self.usage = PeriodUsage()
        self.charges: dict[UsageKey, list[Decimal]] = {}

    def request(self, plan: Plan, model: str, metric: Metric, quantity: int) -> None:
        rated = self.usage.rate(plan, model, metric, quantity)
        self.charges.setdefault(rated.key, []).append(rated.amount)

    def invoice(self, **extra: object) -> object:
        return draft_invoice(
            invoice_id="inv_1",
            period=NOV,
            timeline=self.timeline,
            usage=self.usage.totals(),
            request_charges=self.charges,
            **extra,  # type: ignore[arg-type]
        )


def test_a_subscription_invoice_end_to_end() -> None:
    org = Org(PRO)
    org.request(PRO, "smollm2", IN, 800_000)
    org.request(PRO, "smollm2", IN, 500_000)
    org.request(PRO, "smollm2", OUT, 100_000)
    bill = draft_invoice(
        invoice_id="inv_1",
        period=NOV,
        timeline=org.timeline,
        usage=org.usage.totals(),
        request_charges=org.charges,
        tax_rate=TaxRate(D("10")),
    )
    assert [(line.kind, line.amount) for line in bill.lines] == [
        (LineKind.FIXED_FEE, usd("20.00")),
        (LineKind.USAGE, usd("0.04")),  # 300,000 overage tokens: 0.045, ties to even
        (LineKind.USAGE, usd("0.06")),
        (LineKind.TAX, usd("2.01")),
    ]
    usage_in = bill.lines[1]
    assert (usage_in.quantity, usage_in.included, usage_in.overage, usage_in.charges) == (
        1_300_000,
        1_000_000,
        300_000,
        2,
    )
    assert usage_in.exact_amount == D("0.045")
    assert usage_in.description == (
        "smollm2 input_tokens: 1300000 tokens (1000000 included, 300000 charged)"
    )
    assert (bill.subtotal, bill.total) == (usd("20.10"), usd("22.11"))
    assert bill.rounding_difference == D("-0.005")
    assert bill.plans == (PlanRef("pro", 1),)


def test_a_plan_change_bills_both_versions_and_a_later_revision_changes_nothing() -> None:
    catalog = PlanCatalog()
    basic = catalog.publish(SubscriptionPlan("basic", 1, usd("10"), BOOK, {IN: 100_000}))
    org = Org(basic)
    org.request(basic, "smollm2", IN, 150_000)  # 50,000 overage under basic
    org.timeline.change_plan(PRO, at(16))
    org.request(PRO, "smollm2", IN, 150_000)  # pro's own allowance covers it
    bill = draft_invoice(
        invoice_id="inv_1",
        period=NOV,
        timeline=org.timeline,
        usage=org.usage.totals(),
        request_charges=org.charges,
    )
    assert [(line.kind, str(line.plan), line.amount) for line in bill.lines] == [
        (LineKind.FIXED_FEE, "basic@v1", usd("10.00")),
        (LineKind.PRORATION_CREDIT, "basic@v1", usd("-5.00")),
        (LineKind.PRORATION_CHARGE, "pro@v1", usd("10.00")),
        (LineKind.USAGE, "basic@v1", usd("0.01")),  # 0.0075
        (LineKind.USAGE, "pro@v1", usd("0.00")),
    ]
    bill.finalize(at(1, month=12))
    total = bill.total
    catalog.revise("basic", fee=usd("99"))  # a price change after the fact
    assert bill.total == total == usd("15.01")
    assert bill.plans == (PlanRef("basic", 1), PlanRef("pro", 1))


def test_a_coupon_applies_only_in_the_periods_it_covers() -> None:
    org = Org(PRO)
    once = Redemption(Coupon("HALF", PercentOff(D("50")), CouponDuration.once()), NOV)
    november = draft_invoice(
        invoice_id="inv_1",
        period=NOV,
        timeline=org.timeline,
        usage=(),
        request_charges={},
        coupon=once,
    )
    december = draft_invoice(
        invoice_id="inv_2",
        period=NOV.next(),
        timeline=org.timeline,
        usage=(),
        request_charges={},
        coupon=once,
    )
    assert (november.discount, november.total) == (usd("10.00"), usd("10.00"))
    assert (december.discount, december.total) == (usd("0"), usd("20.00"))


def test_enterprise_usage_is_reported_at_zero() -> None:
    licence = EnterprisePlan("acme", 1, usd("5000"))
    org = Org(licence)
    org.request(licence, "llama-70b", OUT, 2_000_000)
    bill = draft_invoice(
        invoice_id="inv_1",
        period=NOV,
        timeline=org.timeline,
        usage=org.usage.totals(),
        request_charges=org.charges,
    )
    assert [(line.kind, line.amount, line.quantity) for line in bill.lines] == [
        (LineKind.FIXED_FEE, usd("5000.00"), None),
        (LineKind.USAGE, usd("0.00"), 2_000_000),
    ]


def _draft(org: Org, charges: dict[UsageKey, list[Decimal]]) -> None:
    draft_invoice(
        invoice_id="inv_1",
        period=NOV,
        timeline=org.timeline,
        usage=org.usage.totals(),
        request_charges=charges,
    )


def test_a_lost_or_duplicated_request_charge_is_caught() -> None:
    payg = PrepaidPlan("payg", 1, BOOK)
    org = Org(payg)
    for tokens in (1000, 2000, 3000):
        org.request(payg, "smollm2", OUT, tokens)
    key = next(iter(org.charges))
    with pytest.raises(
        ChargeMismatch, match=r"sum to 0\.0018, the plan prices 6000 overage units at 0\.0036"
    ):
        _draft(org, {key: org.charges[key][:-1]})
    with pytest.raises(ChargeMismatch, match=r"sum to 0\.0054"):
        _draft(org, {key: [*org.charges[key], org.charges[key][-1]]})
    stray = UsageKey(payg.ref, "ghost", OUT)
    with pytest.raises(ChargeMismatch, match="without metered usage"):
        _draft(org, {**org.charges, stray: [D("0.01")]})
    with pytest.raises(TypeError, match="must be Decimal"):
        _draft(org, {key: [0.001, 0.002, 0.003]})  # type: ignore[list-item]


def test_usage_under_a_plan_the_org_was_not_on_is_refused() -> None:
    org = Org(PRO)
    other = PrepaidPlan("payg", 1, BOOK)
    usage = PeriodUsage()
    usage.rate(other, "m", IN, 10)
    with pytest.raises(SubscriptionConflict, match="payg@v1"):
        draft_invoice(
            invoice_id="inv_1",
            period=NOV,
            timeline=org.timeline,
            usage=usage.totals(),
            request_charges={},
        )


def test_one_invoice_has_one_currency() -> None:
    org = Org(PRO)
    org.timeline.cancel(at(10))
    org.timeline.subscribe(EnterprisePlan("acme", 1, Money.parse("100", "EUR")), at(20))
    with pytest.raises(CurrencyMismatch, match="cannot share one invoice"):
        _draft(org, {})


models = st.sampled_from(["smollm2", "qwen-0.5b", "llama-70b"])
requests = st.lists(
    st.tuples(models, st.sampled_from([IN, OUT]), st.integers(0, 5000)), max_size=60
)


@settings(max_examples=150, deadline=None)
@given(requests, st.sampled_from(["payg", "pro"]))
def test_usage_lines_are_the_request_charges_rounded_once_per_line(
    calls: list[tuple[str, Metric, int]], kind: str
) -> None:
    plan: Plan = (
        PrepaidPlan("payg", 1, BOOK) if kind == "payg" else PRO.revised(included={IN: 20_000})
    )
    org = Org(plan)
    for model, metric, tokens in calls:
        org.request(plan, model, metric, tokens)
    bill = draft_invoice(
        invoice_id="inv_1",
        period=NOV,
        timeline=org.timeline,
        usage=org.usage.totals(),
        request_charges=org.charges,
    )
    usage_lines = [line for line in bill.lines if line.kind is LineKind.USAGE]
    assert len(usage_lines) == len(org.charges)
    rounded_total = Fraction(0)
    for line in usage_lines:
        assert line.plan is not None and line.model is not None and line.metric is not None
        exact = sum(
            (Fraction(c) for c in org.charges[UsageKey(line.plan, line.model, line.metric)]),
            Fraction(0),
        )
        # The invariant: line == round_half_even(exact sum of its request charges).
        assert Fraction(line.exact_amount) == exact  # type: ignore[arg-type]
        assert line.amount == Money.rounded(exact, "USD")
        rounded_total += Fraction(line.amount.amount)
    everything = sum((Fraction(c) for cs in org.charges.values() for c in cs), Fraction(0))
    assert Fraction(bill.usage_exact_total) == everything
    assert Fraction(bill.rounding_difference) == rounded_total - everything
    assert abs(rounded_total - everything) <= Fraction(len(usage_lines), 200)
    fees = sum(
        (Fraction(line.amount.amount) for line in bill.lines if line.kind is LineKind.FIXED_FEE),
        Fraction(0),
    )
    assert Fraction(bill.subtotal.amount) == fees + rounded_total
