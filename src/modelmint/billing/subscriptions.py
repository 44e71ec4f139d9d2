"""Subscriptions: which plan version an organisation is on, when, and the fees it owes.

An organisation's ``SubscriptionTimeline`` is a sequence of ``Subscription`` spans
``[start, end)`` that never overlap. A plan change at instant t ends the current
span at t and starts one on the new plan version at t.

Fixed fees are billed for the whole period in advance, so a change inside a period
produces, for that period:

* ``FIXED_FEE``: the full fee of the plan in force when the period began;
* ``PRORATION_CREDIT`` (negative): the unused part of a fee, from the span's end to
  the period's end;
* ``PRORATION_CHARGE``: the remaining part of a fee for a span that starts inside
  the period (a plan change or a new subscription), up to the period's end.

Amounts come from ``proration.prorate``, whose cumulative rounding makes the fee
lines of one span add up to exactly its share of the fee (the full fee, then minus
the credit, is the fee up to the change, to the last minor unit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from modelmint.billing.errors import CurrencyMismatch, InvalidPeriod, SubscriptionConflict
from modelmint.billing.money import Money
from modelmint.billing.periods import Period, utc
from modelmint.billing.plans import Plan, PlanRef
from modelmint.billing.proration import prorate

__all__ = ["FeeCharge", "FeeKind", "Subscription", "SubscriptionTimeline"]


@dataclass(frozen=True, slots=True)
class Subscription:
    """``organization_id`` on ``plan`` (one version) from ``start`` until ``end`` (open)."""

    organization_id: str
    plan: Plan
    start: datetime
    end: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", utc(self.start, "subscription start"))
        if self.end is not None:
            object.__setattr__(self, "end", utc(self.end, "subscription end"))
            if self.end <= self.start:
                raise InvalidPeriod(
                    f"subscription ends ({self.end.isoformat()}) "
                    f"before it starts ({self.start.isoformat()})"
                )

    def active_at(self, instant: datetime) -> bool:
        moment = utc(instant)
        return self.start <= moment and (self.end is None or moment < self.end)


class FeeKind(StrEnum):
    FIXED_FEE = "fixed_fee"
    PRORATION_CHARGE = "proration_charge"
    PRORATION_CREDIT = "proration_credit"


@dataclass(frozen=True, slots=True)
class FeeCharge:
    """One fixed-fee amount for a period: ``amount`` is rounded, negative for a credit."""

    kind: FeeKind
    plan: PlanRef
    span: Period
    amount: Money


class SubscriptionTimeline:
    """One organisation's subscriptions in time order, never overlapping."""

    def __init__(self, organization_id: str, subscriptions: Iterable[Subscription] = ()) -> None:
        self.organization_id = organization_id
        self._spans: list[Subscription] = []
        for subscription in sorted(subscriptions, key=lambda s: s.start):
            self._append(subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._spans)

    def _append(self, subscription: Subscription) -> None:
        if subscription.organization_id != self.organization_id:
            raise SubscriptionConflict(
                f"subscription of {subscription.organization_id!r} "
                f"in the timeline of {self.organization_id!r}"
            )
        if self._spans:
            last = self._spans[-1]
            if last.end is None or last.end > subscription.start:
                raise SubscriptionConflict(
                    f"subscription to {subscription.plan.ref} from "
                    f"{subscription.start.isoformat()} overlaps the one to {last.plan.ref}"
                )
        self._spans.append(subscription)

    def active_at(self, instant: datetime) -> Subscription | None:
        for subscription in self._spans:
            if subscription.active_at(instant):
                return subscription
        return None

    def subscribe(self, plan: Plan, at: datetime) -> Subscription:
        """Start ``plan`` at ``at``; refused while another subscription runs then."""
        subscription = Subscription(self.organization_id, plan, at)
        self._append(subscription)
        return subscription

    def change_plan(self, plan: Plan, at: datetime) -> Subscription:
        """End the current subscription at ``at`` and continue on ``plan`` from ``at``."""
        moment = utc(at, "plan change")
        current = self.active_at(moment)
        if current is None:
            raise SubscriptionConflict(f"no subscription is active at {moment.isoformat()}")
        if current is not self._spans[-1]:
            raise SubscriptionConflict("only the latest subscription can change plan")
        if current.start == moment:
            raise SubscriptionConflict("a plan change must come after the subscription starts")
        if plan.currency != current.plan.currency:
            raise CurrencyMismatch(
                f"cannot change from a {current.plan.currency} plan to a {plan.currency} plan"
            )
        successor = Subscription(self.organization_id, plan, moment, current.end)
        self._spans[-1] = replace(current, end=moment)
        self._spans.append(successor)
        return successor

    def cancel(self, at: datetime) -> Subscription:
        """End the current subscription at ``at``; the unused fee is credited."""
        moment = utc(at, "cancellation")
        current = self.active_at(moment)
        if current is None or current is not self._spans[-1]:
            raise SubscriptionConflict(f"no current subscription at {moment.isoformat()}")
        if current.start == moment:
            self._spans.pop()  # cancelled the instant it began: it never ran
            return current
        ended = replace(current, end=moment)
        self._spans[-1] = ended
        return ended

    def in_period(self, period: Period) -> tuple[Subscription, ...]:
        """The subscriptions that run for some of ``period``, in time order."""
        return tuple(s for s in self._spans if period.clip(s.start, s.end) is not None)

    def fee_charges(self, period: Period) -> list[FeeCharge]:
        """The fixed-fee, proration-charge and proration-credit amounts for ``period``."""
        charges: list[FeeCharge] = []
        for subscription in self.in_period(period):
            fee = subscription.plan.fixed_fee
            span = period.clip(subscription.start, subscription.end)
            if fee.is_zero or span is None:
                continue
            ref = subscription.plan.ref
            if span.start == period.start:
                charges.append(
                    FeeCharge(FeeKind.FIXED_FEE, ref, period, _share(fee, period, period))
                )
            else:
                rest = Period(span.start, period.end)
                charges.append(
                    FeeCharge(FeeKind.PRORATION_CHARGE, ref, rest, _share(fee, period, rest))
                )
            if span.end < period.end:
                unused = Period(span.end, period.end)
                charges.append(
                    FeeCharge(FeeKind.PRORATION_CREDIT, ref, unused, -_share(fee, period, unused))
                )
        return charges


def _share(fee: Money, period: Period, span: Period) -> Money:
    return prorate(fee, period, span.start, span.end)
