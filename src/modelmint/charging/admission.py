"""Spend control at admission: refuse what the customer cannot pay for, before any model work.

Per plan kind, after the rate limiter admitted the request:

* no subscription: nothing to check, nothing billed;
* subscription / enterprise: the model must be priced (or reported) by the plan;
  usage is billed after the period, so nothing is held;
* prepaid: the request's worst-case cost (``rating.worst_case`` of the
  ``quantities`` bound) is reserved on the wallet; 402 ``insufficient_quota`` if
  the wallet cannot cover it. The metering writer settles the actual cost;
* hard budgets (of the organisation or the key, any priced plan): the worst case
  is held on the month's spend rows; 402 ``budget_exceeded`` if a budget cannot
  take it. The writer replaces the hold with the actual charge;
* free tier: the worst case must fit in what is left of each allowance (402 if
  not). The allowance used comes from the profile (committed usage, at most
  ``ttl`` old) plus what this process admitted since: exact within one process;
  across N processes a cap can be overrun by the requests the others admitted in
  the last ``ttl`` (never charged: a free tier charges nothing).

The result is a ``Hold`` that travels with the request to its usage event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal

from modelmint.billing import FreeTierPlan, Metric, PlanRef, PrepaidPlan
from modelmint.billing.errors import (
    BudgetExceeded,
    InsufficientCredit,
    PriceNotFound,
    UsageCapExceeded,
)
from modelmint.billing.exact import Quantity, minus, plus
from modelmint.billing.periods import Period
from modelmint.billing.rating import admit as admit_units
from modelmint.billing.rating import billed_quantities, worst_case
from modelmint.caching import TtlCache
from modelmint.charging.profiles import BillingProfile, load_profile
from modelmint.charging.reservations import hold_budget, release_budget, reserve
from modelmint.errors import PermissionDenied
from modelmint.observability.metrics import BILLING_REFUSALS
from modelmint.storage.db import Database, utcnow

__all__ = ["NO_HOLD", "Hold", "SpendGuard"]

Bound = Callable[[], Mapping[Metric, Quantity]]


@dataclass(frozen=True, slots=True)
class Hold:
    """What admission decided for one request, carried to its usage event."""

    plan: PlanRef | None = None
    currency: str | None = None
    reservation: str | None = None  # the wallet reservation the writer settles
    # The worst case held on the month's spend against hard budgets, and that month.
    spend_hold: Decimal = Decimal(0)
    spend_period: Period | None = None
    # Free tiers: the units admitted against the allowance, returned on completion.
    units: Mapping[Metric, Quantity] = field(default_factory=dict)
    organization_id: str = ""


NO_HOLD = Hold()
_REASONS: dict[type[Exception], str] = {
    InsufficientCredit: "credit",
    BudgetExceeded: "budget",
    UsageCapExceeded: "allowance",
    PermissionDenied: "unpriced",
}


class _FreeTierCount:
    """Units this process admitted or completed since the profile it counts from."""

    __slots__ = ("completed", "in_flight", "profile")

    def __init__(self, profile: BillingProfile) -> None:
        self.profile = profile
        self.in_flight: dict[Metric, Quantity] = {}
        self.completed: dict[Metric, Quantity] = {}


class SpendGuard:
    def __init__(self, database: Database, *, ttl: float) -> None:
        self._database = database
        self.profiles: TtlCache[str, BillingProfile] = TtlCache(self._load, ttl=ttl)
        self._free: dict[str, _FreeTierCount] = {}

    def _load(self, organization_id: str) -> BillingProfile:
        with self._database.session() as session:
            return load_profile(session, organization_id, utcnow())

    async def admit(
        self, organization_id: str, api_key_id: str, request_id: str, model: str, bound: Bound
    ) -> Hold:
        try:
            return await self._admit(organization_id, api_key_id, request_id, model, bound)
        except (InsufficientCredit, BudgetExceeded, UsageCapExceeded, PermissionDenied) as exc:
            BILLING_REFUSALS.labels(_REASONS[type(exc)]).inc()
            raise

    async def _admit(
        self, organization_id: str, api_key_id: str, request_id: str, model: str, bound: Bound
    ) -> Hold:
        profile = await self.profiles.get(organization_id)
        plan = profile.plan
        if plan is None:
            return NO_HOLD
        try:
            quantities = billed_quantities(plan, model, bound())
        except PriceNotFound as exc:
            raise PermissionDenied(
                f"{exc.message}; this model cannot be used until it is priced",
                param="model",
                code="model_not_priced",
            ) from None
        if isinstance(plan, FreeTierPlan):
            return self._admit_free(profile, plan, quantities)
        budgets = profile.hard_budgets(api_key_id)
        if not isinstance(plan, PrepaidPlan) and not budgets:
            return Hold(plan.ref, plan.currency, organization_id=organization_id)
        worst = worst_case(plan, model, quantities)
        if worst == 0:
            return Hold(plan.ref, plan.currency, organization_id=organization_id)
        period = profile.period or Period.containing(utcnow())
        if budgets:
            await asyncio.to_thread(
                hold_budget,
                self._database,
                organization_id,
                api_key_id,
                period,
                plan.currency,
                worst,
                budgets,
            )
        hold = Hold(
            plan.ref,
            plan.currency,
            organization_id=organization_id,
            spend_hold=worst if budgets else Decimal(0),
            spend_period=period if budgets else None,
        )
        if isinstance(plan, PrepaidPlan):
            try:
                reservation = await asyncio.to_thread(
                    reserve, self._database, organization_id, plan.currency, worst, request_id
                )
            except BaseException:
                if budgets:  # give the budget hold back: this request will never be metered
                    await asyncio.to_thread(self._unhold, hold, api_key_id)
                raise
            hold = replace(hold, reservation=reservation)
        return hold

    def _unhold(self, hold: Hold, api_key_id: str) -> None:
        assert hold.spend_period is not None and hold.currency is not None
        release_budget(
            self._database,
            hold.organization_id,
            api_key_id,
            hold.spend_period,
            hold.currency,
            hold.spend_hold,
        )

    def _admit_free(
        self, profile: BillingProfile, plan: FreeTierPlan, quantities: Mapping[Metric, Quantity]
    ) -> Hold:
        count = self._free.get(profile.organization_id)
        if count is None or count.profile is not profile:
            # A fresh read of committed usage replaces what this process counted.
            in_flight = count.in_flight if count is not None else {}
            count = self._free[profile.organization_id] = _FreeTierCount(profile)
            count.in_flight = in_flight
        for metric, quantity in quantities.items():
            used = plus(
                plus(profile.included_used.get(metric, 0), count.completed.get(metric, 0)),
                count.in_flight.get(metric, 0),
            )
            admit_units(plan, metric, used, quantity)  # UsageCapExceeded: 402
        for metric, quantity in quantities.items():
            count.in_flight[metric] = plus(count.in_flight.get(metric, 0), quantity)
        return Hold(
            plan.ref, plan.currency, units=dict(quantities), organization_id=profile.organization_id
        )

    def finish(self, hold: Hold, used: Mapping[Metric, Quantity]) -> None:
        """A request ended: a free tier's worst case gives way to what it used."""
        if not hold.units:
            return
        count = self._free.get(hold.organization_id)
        if count is None:
            return
        for metric, quantity in hold.units.items():
            count.in_flight[metric] = max(minus(count.in_flight.get(metric, 0), quantity), 0)
            if metric in used:
                count.completed[metric] = plus(count.completed.get(metric, 0), used[metric])
