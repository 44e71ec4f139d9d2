"""Spend control at admission: refuse what the customer cannot pay for, before any model work.

Per plan kind, after the rate limiter admitted the request:

* no subscription: nothing to check, nothing billed;
* subscription / enterprise: the model must be priced (or reported) by the plan;
  usage is billed after the period, so nothing is held;
* prepaid: the request's worst-case cost (``rating.worst_case`` of the
  ``quantities`` bound) is set aside on the wallet; 402 ``insufficient_quota`` if
  the wallet cannot cover it. The metering writer settles the actual cost;
* hard budgets (of the organisation or the key, any priced plan): the worst case
  is set aside on the month's spend; 402 ``budget_exceeded`` if a budget cannot
  take it. The writer replaces it with the actual charge;
* free tier: the worst case must fit in what is left of each allowance (402 if
  not). The allowance used comes from the profile (committed usage, at most
  ``ttl`` old) plus what this process admitted since: exact within one process;
  across N processes a cap can be overrun by the requests the others admitted in
  the last ``ttl`` (never charged: a free tier charges nothing).

Wallets and hard budgets are *pools*: the worst case is taken from this process's
credit lease of each (``charging.leases``: no database round trip), or, when the
pool is too small to lease from or the usage writer cannot commit (then nothing is
admitted from memory that might not be billed), held per request with one
conditional UPDATE (``charging.reservations``).

The result is a ``Hold`` that travels with the request to its usage event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from modelmint.billing import Budget, FreeTierPlan, Metric, Plan, PlanRef, PrepaidPlan
from modelmint.billing.errors import (
    BudgetExceeded,
    InsufficientCredit,
    PriceNotFound,
    UsageCapExceeded,
)
from modelmint.billing.exact import Quantity, minus, plus
from modelmint.billing.periods import Period
from modelmint.billing.rating import LinearRates, billed_quantities, worst_case
from modelmint.billing.rating import admit as admit_units
from modelmint.caching import TtlCache
from modelmint.charging.alerts import ExhaustedAlerts
from modelmint.charging.leases import CreditLeases, Pool
from modelmint.charging.profiles import BillingProfile, load_profile
from modelmint.charging.reservations import hold_budget, release_budget, reserve
from modelmint.clock import utcnow
from modelmint.errors import PermissionDenied
from modelmint.observability.metrics import BILLING_REFUSALS, CREDIT_LEASE_ADMISSIONS
from modelmint.storage.db import Database

__all__ = ["NO_HOLD", "Hold", "SpendGuard"]

log = logging.getLogger(__name__)
HELD = CREDIT_LEASE_ADMISSIONS.labels("hold")
WAITED = CREDIT_LEASE_ADMISSIONS.labels("waited")  # for a lease to open or refill

Bound = Callable[[], Mapping[Metric, Quantity]]


@dataclass(slots=True, eq=False)
class Hold:
    """What admission decided for one request, carried to its usage event.

    Never changed once made (``dataclasses.replace`` makes another): ``NO_HOLD`` and a
    route's plain hold are shared by every request they admit. Not frozen only because
    a frozen dataclass takes three times as long to make, and admission makes one per
    paid request; compared by identity, as nothing compares two."""

    plan: PlanRef | None = None
    currency: str | None = None
    reservation: str | None = None  # the per-request wallet hold the writer settles
    # The worst case held per request on the month's spend against hard budgets, that
    # month, and the scopes ("" for the organisation, else the key id) it was held on.
    spend_hold: Decimal = Decimal(0)
    spend_period: Period | None = None
    spend_scopes: tuple[str, ...] = ()
    # The credit leases the worst case was taken from (the wallet's, the hard budgets'),
    # and that worst case.
    wallet_lease: str | None = None
    spend_leases: tuple[str, ...] = ()
    lease_worst: Decimal = Decimal(0)

    @property
    def leases(self) -> tuple[str, ...]:
        return (
            self.spend_leases
            if self.wallet_lease is None
            else (self.wallet_lease, *self.spend_leases)
        )

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


_MAX_PRICINGS = 10_000  # bounds memory when requests name ever new models


@dataclass(frozen=True, slots=True)
class _Pricing:
    """What a plan bills of a request to one model: the metrics, and their linear rates
    when no price depends on the period (then the worst case is a sum of products)."""

    metrics: tuple[Metric, ...]
    rates: LinearRates | None
    unpriced: str | None = None  # why the plan prices nothing of it

    def worst(self, plan: Plan, model: str, requested: Mapping[Metric, Quantity]) -> Decimal:
        rates = self.rates
        if rates is None:
            return worst_case(plan, model, {m: requested[m] for m in self.metrics})
        return rates.charge(requested)


@dataclass(frozen=True, slots=True)
class _Route:
    """What admission decides once per profile, key, model and bound quantities (the
    hot path then only computes the worst case and takes it from the leases)."""

    profile: BillingProfile  # the route is valid while the cache serves this profile
    pricing: _Pricing
    plain: Hold  # the hold of a request that sets nothing aside
    pools: tuple[Pool, ...]  # where the worst case is set aside: the wallet first
    budgets: Mapping[str, Budget]
    period: Period
    wallet_only: bool  # the one pool is the wallet (prepaid, no hard budget)

    def leased(self, taken: Sequence[str], worst: Decimal) -> Hold:
        """The hold of a request whose worst case was taken from the leases ``taken``
        (one per pool)."""
        wallet: str | None
        spend: tuple[str, ...]
        if self.wallet_only:
            wallet, spend = taken[0], ()
        else:
            wallet, spend = _by_kind(self.pools, taken)
        plain = self.plain
        return Hold(
            plain.plan, plain.currency, organization_id=plain.organization_id,
            wallet_lease=wallet, spend_leases=spend, lease_worst=worst,
        )  # fmt: skip


class SpendGuard:
    def __init__(
        self,
        database: Database,
        *,
        ttl: float,
        leases: CreditLeases | None = None,
        writer_ok: Callable[[], bool] = lambda: True,
    ) -> None:
        self._database = database
        self.profiles: TtlCache[str, BillingProfile] = TtlCache(self._load, ttl=ttl)
        self._free: dict[str, _FreeTierCount] = {}
        self.leases = leases
        self._writer_ok = writer_ok
        self._prices: dict[tuple[PlanRef, str, tuple[Metric, ...]], _Pricing] = {}
        self._routes: dict[tuple[str, str, str, tuple[Metric, ...]], _Route] = {}
        self.exhausted = ExhaustedAlerts(database)

    def _pricing(self, plan: Plan, model: str, requested: Mapping[Metric, Quantity]) -> _Pricing:
        """What ``plan`` bills of a request to ``model`` (cached: plan versions never
        change); 403 ``model_not_priced`` if it bills nothing."""
        key = (plan.ref, model, tuple(requested))
        pricing = self._prices.get(key)
        if pricing is None:
            try:
                metrics = tuple(billed_quantities(plan, model, requested))
            except PriceNotFound as exc:
                pricing = _Pricing((), None, exc.message)
            else:
                pricing = _Pricing(metrics, LinearRates.of(plan, model, metrics))
            if len(self._prices) >= _MAX_PRICINGS:
                self._prices.clear()
            self._prices[key] = pricing
        if pricing.unpriced is not None:
            raise PermissionDenied(
                f"{pricing.unpriced}; this model cannot be used until it is priced",
                param="model",
                code="model_not_priced",
            )
        return pricing

    def _route(
        self,
        profile: BillingProfile,
        plan: Plan,
        api_key_id: str,
        model: str,
        requested: Mapping[Metric, Quantity],
    ) -> _Route:
        key = (profile.organization_id, api_key_id, model, tuple(requested))
        route = self._routes.get(key)
        if route is not None and route.profile is profile:
            return route
        pricing = self._pricing(plan, model, requested)
        budgets = profile.hard_budgets(api_key_id)
        period = profile.period or Period.containing(utcnow())
        plain = Hold(plan.ref, plan.currency, organization_id=profile.organization_id)
        pools = _pools(profile, plan, period, budgets)
        wallet_only = len(pools) == 1 and pools[0].kind == "wallet"
        route = _Route(profile, pricing, plain, tuple(pools), budgets, period, wallet_only)
        if len(self._routes) >= _MAX_PRICINGS:
            self._routes.clear()
        self._routes[key] = route
        return route

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
            if isinstance(exc, InsufficientCredit | BudgetExceeded):
                await self.exhausted.refused(organization_id, exc)
            raise

    async def _admit(
        self, organization_id: str, api_key_id: str, request_id: str, model: str, bound: Bound
    ) -> Hold:
        profile = await self.profiles.get(organization_id)
        plan = profile.plan
        if plan is None:
            return NO_HOLD
        requested = bound()
        if isinstance(plan, FreeTierPlan):
            pricing = self._pricing(plan, model, requested)
            billed = {metric: requested[metric] for metric in pricing.metrics}
            return self._admit_free(profile, plan, billed)
        route = self._route(profile, plan, api_key_id, model, requested)
        if not route.pools:  # nothing to set aside: usage is billed after the period
            return route.plain
        worst = route.pricing.worst(plan, model, requested)
        if worst == 0:
            return route.plain
        if self.leases is not None and self._writer_ok():
            taken = self.leases.take(route.pools, worst)
            if taken is not None:  # the common case: no I/O at all
                return route.leased(taken, worst)
        base, pools = route.plain, route.pools
        period, budgets = route.period, route.budgets
        if self.leases is None or not self._writer_ok():
            HELD.inc()
            return await self._hold(base, pools, api_key_id, request_id, worst, period, budgets)
        leased, fallback = await self.leases.take_or_fall_back(pools, worst)
        (HELD if fallback else WAITED).inc()
        base = _leased(base, leased, worst)
        try:
            return await self._hold(base, fallback, api_key_id, request_id, worst, period, budgets)
        except BaseException:
            self.leases.give_back(base.leases, worst)
            raise

    async def _hold(
        self,
        hold: Hold,
        pools: Sequence[Pool],
        api_key_id: str,
        request_id: str,
        worst: Decimal,
        period: Period,
        budgets: Mapping[str, Budget],
    ) -> Hold:
        """Hold ``worst`` per request on ``pools`` (one transaction each)."""
        organization_id, currency = hold.organization_id, hold.currency
        assert currency is not None
        scoped = {p.scope: budgets[p.scope] for p in pools if p.kind == "budget"}
        if scoped:
            scopes = await asyncio.to_thread(
                hold_budget, self._database, organization_id, api_key_id, period, currency,
                worst, scoped,
            )  # fmt: skip
            hold = replace(hold, spend_hold=worst, spend_period=period, spend_scopes=scopes)
        if any(p.kind == "wallet" for p in pools):
            try:
                reservation = await asyncio.to_thread(
                    reserve, self._database, organization_id, currency, worst, request_id
                )
            except BaseException:
                if hold.spend_scopes:  # give the budget hold back: it will never be metered
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
            hold.spend_scopes,
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


def _pools(
    profile: BillingProfile, plan: Plan, period: Period, budgets: Mapping[str, Budget]
) -> list[Pool]:
    """Where a request's worst case is set aside: the prepaid wallet, and the month of
    each hard budget in the plan's currency (one in another currency is not applied)."""
    organization_id = profile.organization_id
    pools = []
    if isinstance(plan, PrepaidPlan):
        pools.append(Pool.wallet(organization_id, plan.currency))
    for scope, budget in sorted(budgets.items()):
        if budget.limit.currency == plan.currency:
            pools.append(Pool.budget(organization_id, plan.currency, scope, period.start))
        else:
            log.warning(
                "budget of %r is in %s, charges in %s: not applied",
                scope or organization_id,
                budget.limit.currency,
                plan.currency,
            )
    return pools


def _leased(hold: Hold, leases: Mapping[Pool, str], worst: Decimal) -> Hold:
    """``hold`` with the leases ``worst`` was taken from, by pool."""
    if not leases:
        return hold
    wallet, spend = _by_kind(list(leases), list(leases.values()))
    return replace(hold, wallet_lease=wallet, spend_leases=spend, lease_worst=worst)


def _by_kind(pools: Sequence[Pool], leases: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """The wallet's lease and the budgets' leases, of ``leases`` taken from ``pools``."""
    wallet = None
    spend = []
    for pool, lease in zip(pools, leases, strict=True):
        if pool.kind == "wallet":
            wallet = lease
        else:
            spend.append(lease)
    return wallet, tuple(spend)
