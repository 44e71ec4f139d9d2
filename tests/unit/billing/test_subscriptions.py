"""Subscriptions: plan changes mid-period credit the old fee and charge the new one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import (
    CurrencyMismatch,
    EnterprisePlan,
    FeeKind,
    FlatRate,
    Metric,
    Money,
    Period,
    PlanRef,
    PrepaidPlan,
    PriceBook,
    Subscription,
    SubscriptionConflict,
    SubscriptionPlan,
    SubscriptionTimeline,
)
from modelmint.billing.errors import InvalidPeriod

BOOK = PriceBook("USD", {("*", Metric.INPUT_TOKENS): FlatRate(Decimal(1))})
BASIC = SubscriptionPlan("basic", 1, Money.parse("10.00", "USD"), BOOK)
PRO = SubscriptionPlan("pro", 1, Money.parse("30.00", "USD"), BOOK)
NOV = Period.month(2026, 11)


def at(day: int, hour: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def summary(timeline: SubscriptionTimeline) -> list[tuple[FeeKind, str, Money]]:
    return [(c.kind, str(c.plan), c.amount) for c in timeline.fee_charges(NOV)]


def test_a_whole_period_owes_the_fixed_fee() -> None:
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(BASIC, at(3, month=10))
    assert summary(timeline) == [(FeeKind.FIXED_FEE, "basic@v1", usd("10.00"))]


def test_an_upgrade_credits_the_unused_old_fee_and_charges_the_rest_of_the_new() -> None:
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(BASIC, at(3, month=10))
    timeline.change_plan(PRO, at(16))  # exactly half of November is left
    assert summary(timeline) == [
        (FeeKind.FIXED_FEE, "basic@v1", usd("10.00")),
        (FeeKind.PRORATION_CREDIT, "basic@v1", usd("-5.00")),
        (FeeKind.PRORATION_CHARGE, "pro@v1", usd("15.00")),
    ]
    charges = timeline.fee_charges(NOV)
    assert charges[1].span == Period(at(16), NOV.end)
    assert timeline.active_at(at(20)) is not None
    assert timeline.active_at(at(20)).plan is PRO  # type: ignore[union-attr]
    # December bills the new plan only.
    assert [(c.kind, c.plan) for c in timeline.fee_charges(NOV.next())] == [
        (FeeKind.FIXED_FEE, PlanRef("pro", 1))
    ]


def test_a_subscription_starting_mid_period_pays_the_remaining_share() -> None:
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(PRO, at(21))  # 10 of 30 days left
    assert summary(timeline) == [(FeeKind.PRORATION_CHARGE, "pro@v1", usd("10.00"))]


def test_a_cancellation_credits_the_unused_part() -> None:
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(PRO, at(1, month=10))
    timeline.cancel(at(11))
    assert summary(timeline) == [
        (FeeKind.FIXED_FEE, "pro@v1", usd("30.00")),
        (FeeKind.PRORATION_CREDIT, "pro@v1", usd("-20.00")),
    ]
    assert timeline.fee_charges(NOV.next()) == []


def test_plans_without_a_fee_produce_no_fee_lines() -> None:
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(PrepaidPlan("payg", 1, BOOK), at(5))
    assert timeline.fee_charges(NOV) == []


def test_overlapping_subscriptions_are_refused() -> None:
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(BASIC, at(1))
    with pytest.raises(SubscriptionConflict, match="overlaps"):
        timeline.subscribe(PRO, at(10))
    with pytest.raises(SubscriptionConflict, match="overlaps"):
        SubscriptionTimeline(
            "org",
            [Subscription("org", BASIC, at(1), at(20)), Subscription("org", PRO, at(10))],
        )


def test_plan_changes_must_make_sense() -> None:
    timeline = SubscriptionTimeline("org")
    with pytest.raises(SubscriptionConflict, match="no subscription is active"):
        timeline.change_plan(PRO, at(5))
    timeline.subscribe(BASIC, at(5))
    with pytest.raises(SubscriptionConflict, match="after the subscription starts"):
        timeline.change_plan(PRO, at(5))
    with pytest.raises(CurrencyMismatch, match="USD plan to a EUR plan"):
        timeline.change_plan(EnterprisePlan("acme", 1, Money.parse("1", "EUR")), at(6))
    with pytest.raises(InvalidPeriod, match="before it starts"):
        Subscription("org", BASIC, at(5), at(4))
    with pytest.raises(SubscriptionConflict, match="timeline of 'org'"):
        SubscriptionTimeline("org", [Subscription("other", BASIC, at(5))])


# Offsets put the change strictly inside November (after its first microsecond).
microseconds = st.integers(0, NOV.duration // timedelta(microseconds=1) - 2)
fees = st.decimals(min_value=Decimal("0.01"), max_value=10000, places=2)


@settings(max_examples=200, deadline=None)
@given(fees, microseconds)
def test_credit_plus_remaining_charge_of_the_same_fee_is_the_full_fee(
    amount: Decimal, offset: int
) -> None:
    plan = SubscriptionPlan("p", 1, Money(amount, "USD"), BOOK)
    change = NOV.start + timedelta(microseconds=offset + 1)
    timeline = SubscriptionTimeline("org")
    timeline.subscribe(plan, at(1, month=10))
    timeline.change_plan(plan.revised(), change)  # same fee, new version
    charges = timeline.fee_charges(NOV)
    assert [c.kind for c in charges] == [
        FeeKind.FIXED_FEE,
        FeeKind.PRORATION_CREDIT,
        FeeKind.PRORATION_CHARGE,
    ]
    assert charges[1].amount == -charges[2].amount
    assert Money.total((c.amount for c in charges), "USD") == plan.fee
