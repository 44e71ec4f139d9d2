"""Pricing a set of quantities under a plan, as the simulator replays them.

Billing prices requests one by one; the simulator has a period's totals per
(model, metric). This module prices such totals with billing's own rules
(``billed_quantities``, each plan's ``overage_charge`` models, free-tier caps) and
adds the two things totals need: how an allowance is shared among models when the
order of requests is not known (in proportion to use), and how demand reacts to a
price change (constant elasticity).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation

from modelmint.billing.exact import EXACT, Quantity, exact_sum, minus
from modelmint.billing.metrics import Metric
from modelmint.billing.plans import FreeTierPlan, Plan
from modelmint.billing.rating import billed_quantities
from modelmint.errors import InvalidRequest

__all__ = [
    "MAX_ELASTICITY",
    "MICROS",
    "Usage",
    "checked_elasticity",
    "demand_factor",
    "fits",
    "price_usage",
    "scale",
    "share_pool",
]

_ZERO = Decimal(0)
MICROS = 6
# Elasticity arithmetic (a demand model, not money): 28 digits, then quantities round.
_DEMAND = Context(prec=28, rounding=ROUND_HALF_EVEN)

Usage = dict[tuple[str, Metric], Quantity]
"""Quantities per (model, metric)."""


def share_pool(allowance: Quantity | None, used: Mapping[str, Quantity]) -> dict[str, Quantity]:
    """Split an allowance over models in proportion to their use (largest remainder), so
    the shares are whole units and add up to the allowance when it runs out."""
    total = exact_sum(Decimal(q) for q in used.values())
    if allowance is None or total <= allowance:
        return dict(used)
    # Work in whole units of the finest quantity (microseconds for compute time).
    fractional = any(isinstance(q, Decimal) for q in used.values()) or isinstance(
        allowance, Decimal
    )
    scale = 10**MICROS if fractional else 1
    units = {m: int(EXACT.multiply(Decimal(q), scale)) for m, q in used.items()}
    pool = int(
        Decimal(allowance).scaleb(MICROS if fractional else 0).to_integral_value(ROUND_FLOOR)
    )
    whole = sum(units.values())
    shares = {m: u * pool // whole for m, u in units.items()}
    leftover = pool - sum(shares.values())
    by_remainder = sorted(units, key=lambda m: (-(units[m] * pool % whole), m))
    for model in by_remainder[:leftover]:
        shares[model] += 1
    if not fractional:
        return dict(shares)
    return {m: Decimal(s).scaleb(-MICROS) for m, s in shares.items()}


def price_usage(
    plan: Plan,
    usage: Usage,
    included: Mapping[tuple[str, Metric], Quantity] | None = None,
    reuse: frozenset[Metric] = frozenset(),
) -> dict[str, Decimal]:
    """Usage charges per model of ``usage`` under ``plan`` (``PriceNotFound`` if a model is
    unpriced). For the metrics in ``reuse``, the allowance is split as ``included`` says
    (what really happened); for the others it is shared in proportion to use."""
    models: dict[str, dict[Metric, Quantity]] = defaultdict(dict)
    for (model, metric), quantity in usage.items():
        models[model][metric] = quantity
    billed: dict[Metric, dict[str, Quantity]] = defaultdict(dict)
    for model, quantities in models.items():
        for metric, quantity in billed_quantities(plan, model, quantities).items():
            billed[metric][model] = quantity
    charges: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    for metric, used in billed.items():
        if metric in reuse and included is not None:
            split = {model: included.get((model, metric), 0) for model in used}
        else:
            split = share_pool(plan.allowance(metric), used)
        for model, quantity in used.items():
            charge = plan.overage_charge(model, metric)
            if charge is None:
                continue
            overage = minus(quantity, split[model])
            amount = charge.price(overage if overage > 0 else 0)
            charges[model] = EXACT.add(charges[model], amount)
    return dict(charges)


def fits(plan: Plan, usage: Usage) -> bool:
    """Whether a free tier's hard caps take ``usage`` whole."""
    if not isinstance(plan, FreeTierPlan):
        return True
    used: dict[Metric, Decimal] = defaultdict(lambda: _ZERO)
    for model_metric, quantity in usage.items():
        used[model_metric[1]] = EXACT.add(used[model_metric[1]], Decimal(quantity))
    for metric, quantity in used.items():
        if metric is Metric.COMPUTE_SECONDS and metric not in plan.allowances:
            continue
        limit = plan.allowance(metric)
        if limit is not None and quantity > limit:
            return False
    return True


# Steeper than this is not a demand model anyone means: at -10 a 1 % price rise loses
# about a tenth of the demand.
MAX_ELASTICITY = Decimal(10)


def checked_elasticity(value: str | Decimal | None) -> Decimal | None:
    """A price elasticity of demand as given by a user (text or a number), checked.

    It is at most 0: demand falls (or holds) as the price rises. A positive value
    would have demand grow with the price and the simulator report that raising
    prices brings more usage, which no API customer does."""
    if value is None:
        return None
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(
            f"elasticity must be a number such as -0.3; {value!r} is not a number",
            param="elasticity",
        ) from None
    if not number.is_finite() or not -MAX_ELASTICITY <= number <= 0:
        raise InvalidRequest(
            f"elasticity must be between -{MAX_ELASTICITY} and 0 (demand falls as the price "
            f"rises), e.g. -0.3; got {value}",
            param="elasticity",
        )
    return number


def demand_factor(old: Decimal, new: Decimal, elasticity: Decimal | None) -> Decimal:
    """``(new / old) ** elasticity``; exactly 1 without a price signal or a change."""
    if elasticity is None or old <= 0 or new <= 0 or old == new:
        return Decimal(1)
    ratio = _DEMAND.divide(new, old)
    return _DEMAND.exp(_DEMAND.multiply(_DEMAND.ln(ratio), elasticity))


def scale(quantity: Quantity, factor: Decimal) -> Quantity:
    scaled = _DEMAND.multiply(Decimal(quantity), factor)
    if isinstance(quantity, int):
        return int(scaled.to_integral_value(ROUND_HALF_EVEN))
    return scaled.quantize(Decimal(1).scaleb(-MICROS), rounding=ROUND_HALF_EVEN)
