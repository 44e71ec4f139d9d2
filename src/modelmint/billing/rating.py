"""Rating: what one request costs under a plan, given the period's usage so far.

The gateway rates every request when its usage is known, and the amount is the
*exact* (unrounded) Decimal it reserves and settles against a wallet and that the
invoice later sums. For one line of usage (plan version, model, metric) with
``before`` units of overage already used this period, a request adding ``n``
overage units costs

    charge.price(before + n) - charge.price(before)

so tiers, packages and flat fees are applied to the running total and the charges
of a period telescope: their exact sum is ``charge.price(total overage)``, the
amount the invoice can recompute from the totals alone (it checks it does).

Included units come from one pool per (plan version, metric), shared by every
model and consumed in request order: the first requests of the period are free,
the later ones pay. Tiers run per (plan version, model, metric) line.

A free tier's hard cap is enforced *before* a request runs (``admit``), with the
worst-case quantity; rating afterwards never refuses (the answer was served) and
never charges on a free tier. On a priced plan, a model without a price raises
``PriceNotFound`` on its first request, even inside the allowance, so a pricing
gap shows up at once rather than at the first overage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from modelmint.billing.charges import FlatRate
from modelmint.billing.errors import PriceNotFound, UsageCapExceeded
from modelmint.billing.exact import EXACT, Quantity, exact_sum, minus, plus
from modelmint.billing.metrics import Metric, check_quantity
from modelmint.billing.plans import FreeTierPlan, Plan, PlanRef

__all__ = [
    "ChargedTotal",
    "LinearRates",
    "PeriodUsage",
    "RatedUsage",
    "UsageKey",
    "UsageTotal",
    "admit",
    "billed_quantities",
    "rate",
    "worst_case",
]

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True, order=True)
class UsageKey:
    """One line of usage: a metric of a model under one plan version."""

    plan: PlanRef
    model: str
    metric: Metric


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Period-to-date usage of one key: ``included`` of ``quantity`` came from the allowance."""

    key: UsageKey
    quantity: Quantity = 0
    included: Quantity = 0

    @property
    def overage(self) -> Quantity:
        return minus(self.quantity, self.included)


@dataclass(frozen=True, slots=True)
class ChargedTotal:
    """A usage total and the exact sum (and count) of the request charges that built it."""

    total: UsageTotal
    amount: Decimal = _ZERO
    charges: int = 0

    def add(self, rated: RatedUsage) -> ChargedTotal:
        total = UsageTotal(
            self.total.key,
            plus(self.total.quantity, rated.quantity),
            plus(self.total.included, rated.included),
        )
        return ChargedTotal(total, EXACT.add(self.amount, rated.amount), self.charges + 1)


@dataclass(frozen=True, slots=True)
class RatedUsage:
    """One request's usage of one key, split into included and overage, and its exact cost."""

    key: UsageKey
    quantity: Quantity
    included: Quantity
    overage: Quantity
    amount: Decimal


def billed_quantities(
    plan: Plan, model: str, quantities: Mapping[Metric, Quantity]
) -> dict[Metric, Quantity]:
    """The part of a request's measured ``quantities`` that ``plan`` bills or caps.

    A free tier caps every metric it lists, and tokens and requests even when it does
    not (an unlisted metric has an allowance of 0); compute time only if listed. A
    priced plan bills the metrics its price book prices for ``model``, and raises
    ``PriceNotFound`` when it prices none of them: serving a model nobody priced
    would give it away. An enterprise plan reports everything.
    """
    if isinstance(plan, FreeTierPlan):
        return {
            m: q
            for m, q in quantities.items()
            if m in plan.allowances or m is not Metric.COMPUTE_SECONDS
        }
    book = getattr(plan, "price_book", None)
    if book is None:
        return dict(quantities)
    billed = {m: q for m, q in quantities.items() if book.find(model, m) is not None}
    if not billed:
        metrics = ", ".join(m.value for m in quantities)
        raise PriceNotFound(
            f"the {plan.code} plan has no price for the model {model!r} ({metrics})",
            param="model",
        )
    return billed


def worst_case(plan: Plan, model: str, quantities: Mapping[Metric, Quantity]) -> Decimal:
    """The most ``quantities`` more units of ``model`` can cost, whatever the period's usage.

    Included units are assumed used up and every tier at its dearest
    (``ChargeModel.max_increase``): what the gateway reserves before a request runs.
    """
    parts: list[Decimal] = []
    for metric, quantity in quantities.items():
        charge = plan.overage_charge(model, metric)
        if charge is not None:
            parts.append(charge.max_increase(check_quantity(quantity, metric)))
    return exact_sum(parts)


def admit(plan: Plan, metric: Metric, included_used: Quantity, requested: Quantity) -> None:
    """Refuse ``requested`` units when a hard-capped plan's allowance cannot take them."""
    if not plan.hard_cap:
        return
    limit = plan.allowance(metric)
    quantity = check_quantity(requested, metric)
    if limit is None or plus(included_used, quantity) <= limit:
        return
    raise UsageCapExceeded(
        f"the {plan.code} plan includes {limit} {metric.value} per month; "
        f"{included_used} used, {quantity} more requested. Upgrade the plan to continue.",
        metric=metric.value,
        limit=Decimal(limit),
        used=Decimal(included_used),
        requested=Decimal(quantity),
    )


def rate(plan: Plan, before: UsageTotal, included_used: Quantity, quantity: Quantity) -> RatedUsage:
    """Rate ``quantity`` more units of ``before.key`` (pure: records nothing).

    ``included_used`` is how much of the plan's allowance for the metric the whole
    organisation has used this period, across models.
    """
    key = before.key
    quantity = check_quantity(quantity, key.metric)
    allowance = plan.allowance(key.metric)
    if allowance is None:
        included: Quantity = quantity
    else:
        left = minus(allowance, included_used)
        included = min(quantity, max(left, 0))
    overage = minus(quantity, included)
    charge = plan.overage_charge(key.model, key.metric)
    if charge is None or overage == 0:
        amount = _ZERO
    else:
        start = before.overage
        amount = EXACT.subtract(charge.price(plus(start, overage)), charge.price(start))
    return RatedUsage(key, quantity, included, overage, amount)


@dataclass(frozen=True, slots=True)
class LinearRates:
    """A plan's prices for one model when none depends on the period's usage so far.

    A line whose allowance is zero (all overage) or unlimited (all included) and whose
    price is linear (a flat rate) costs the same wherever the period stands: the
    request is rated without the running totals, and its totals are then added up
    blindly. ``units`` holds each billed metric's exact price of one unit (0 when
    the plan includes every unit); ``included`` the metrics it includes. What
    ``rate`` would give, at any position (the tests hold it to that).
    """

    plan: PlanRef
    model: str
    units: Mapping[Metric, Decimal]
    included: frozenset[Metric]
    # The metrics that cost anything, with their unit prices: a request's charge is the
    # sum of these products (the hot path's loop, without the zeros).
    priced: tuple[tuple[Metric, Decimal], ...] = field(init=False)
    # The same prices as integers of 10**-places: whole quantities (token and request
    # counts) are then charged in integer arithmetic, a third of Decimal's time.
    scaled: tuple[tuple[Metric, int], ...] = field(init=False)
    places: int = field(init=False)

    def __post_init__(self) -> None:
        priced = tuple((metric, unit) for metric, unit in self.units.items() if unit)
        object.__setattr__(self, "priced", priced)
        # The Decimal sum's exponent is the least of its terms' and of 0's: keep it.
        places = max([0, *(-int(unit.as_tuple().exponent) for _, unit in priced)])
        scaled = tuple((metric, int(unit.scaleb(places, EXACT))) for metric, unit in priced)
        object.__setattr__(self, "scaled", scaled)
        object.__setattr__(self, "places", places)

    @classmethod
    def of(cls, plan: Plan, model: str, metrics: Iterable[Metric]) -> LinearRates | None:
        """The rates of ``metrics`` (the billed ones), or None if one is not linear."""
        if isinstance(plan, FreeTierPlan):
            return None  # its allowances run out
        units: dict[Metric, Decimal] = {}
        included: set[Metric] = set()
        for metric in metrics:
            allowance = plan.allowance(metric)
            charge = plan.overage_charge(model, metric)
            if allowance is None:
                included.add(metric)
                units[metric] = _ZERO
            elif allowance != 0:
                return None
            elif charge is None:
                units[metric] = _ZERO
            elif isinstance(charge, FlatRate):
                units[metric] = charge.unit_price
            else:
                return None
        return cls(plan.ref, model, units, frozenset(included))

    def amount(self, metric: Metric, quantity: Quantity) -> Decimal:
        """What ``quantity`` units of ``metric`` cost."""
        unit = self.units[metric]
        return _ZERO if not unit else EXACT.multiply(unit, quantity)

    def charge(self, quantities: Mapping[Metric, Quantity]) -> Decimal:
        """What a request of ``quantities`` (every billed metric) costs: the sum of its
        metrics' amounts, over the priced ones only (the request path's loop)."""
        whole = 0
        for metric, unit in self.scaled:
            quantity = quantities[metric]
            if type(quantity) is not int:
                return self._decimal_charge(quantities)
            whole += unit * quantity
        return EXACT.scaleb(Decimal(whole), -self.places)

    def _decimal_charge(self, quantities: Mapping[Metric, Quantity]) -> Decimal:
        total = _ZERO
        for metric, unit in self.priced:
            total = EXACT.add(total, EXACT.multiply(unit, quantities[metric]))
        return total

    def rated(self, metric: Metric, quantity: Quantity) -> RatedUsage:
        """``rate``'s answer, without the running totals."""
        key = UsageKey(self.plan, self.model, metric)
        if metric in self.included:
            return RatedUsage(key, quantity, quantity, 0, _ZERO)
        return RatedUsage(key, quantity, 0, quantity, self.amount(metric, quantity))


class PeriodUsage:
    """Running usage totals of one organisation for one period, in memory.

    The gateway's store keeps the same totals durably; this class is the rule set
    and the reference the tests hold the store to.
    """

    def __init__(self, totals: Iterable[UsageTotal] = ()) -> None:
        self._totals: dict[UsageKey, UsageTotal] = {t.key: t for t in totals}

    def total(self, key: UsageKey) -> UsageTotal:
        return self._totals.get(key, UsageTotal(key))

    def totals(self) -> tuple[UsageTotal, ...]:
        return tuple(sorted(self._totals.values(), key=lambda t: t.key))

    def included_used(self, plan: PlanRef, metric: Metric) -> Quantity:
        """Allowance of ``metric`` used this period under ``plan``, across models."""
        used: Quantity = 0
        for key, total in self._totals.items():
            if key.plan == plan and key.metric == metric:
                used = plus(used, total.included)
        return used

    def admit(self, plan: Plan, metric: Metric, requested: Quantity) -> None:
        """Refuse the request if a hard cap cannot take ``requested`` more units."""
        admit(plan, metric, self.included_used(plan.ref, metric), requested)

    def rate(self, plan: Plan, model: str, metric: Metric, quantity: Quantity) -> RatedUsage:
        """Rate one request's usage and add it to the totals."""
        key = UsageKey(plan.ref, model, metric)
        before = self.total(key)
        rated = rate(plan, before, self.included_used(plan.ref, metric), quantity)
        self._totals[key] = UsageTotal(
            key, plus(before.quantity, rated.quantity), plus(before.included, rated.included)
        )
        return rated
