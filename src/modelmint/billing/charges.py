"""Charge models: the formulas that turn a quantity of one metric into an amount.

Each model is a small frozen dataclass with ``price(quantity) -> Decimal``: the exact,
unrounded amount in currency units for ``quantity`` units used in one billing
period. All share two rules:

* ``price(0) == 0``. No usage, no charge (a tier's flat fee is due only once a unit
  falls in the tier). This also makes request-time charges add up: charging each
  request ``price(after) - price(before)`` sums to ``price(total)`` exactly.
* Prices may be stated "per N units" (0.15 per 1_000_000 tokens) and stay exact:
  N must be a product of 2s and 5s (10, 1_000, 1_000_000, 1_024 ...), so that the
  per-unit price has a finite decimal expansion. "1 per 3 units" is refused
  because no Decimal charge could ever be exact.

Tiers cover half-open ranges of the running quantity: a ``Tier(start, up_to)`` holds
the units after ``start`` up to and including ``up_to`` (``None``: no upper end).
Tiers must start at 0, be sorted, contiguous and non-overlapping, end open-ended,
and have non-negative prices; anything else raises ``InvalidPriceBook`` naming the
problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from typing import Protocol

from modelmint.billing.errors import InvalidPriceBook, InvalidQuantity
from modelmint.billing.exact import EXACT, Quantity, exact_sum, is_terminating, to_decimal
from modelmint.billing.metrics import check_quantity

__all__ = [
    "ChargeModel",
    "FlatRate",
    "GraduatedTiers",
    "PackagePrice",
    "Tier",
    "VolumeTiers",
    "tiers_up_to",
]

_ZERO = Decimal(0)


class ChargeModel(Protocol):
    """A price formula for one metric over one billing period."""

    def price(self, quantity: Quantity) -> Decimal:
        """Exact amount for ``quantity`` units; 0 for 0; never rounded."""
        ...

    @property
    def is_monotone(self) -> bool:
        """Whether using more never costs less (request-time charges are never negative)."""
        ...

    def max_increase(self, quantity: Quantity) -> Decimal:
        """An upper bound of ``price(b + quantity) - price(b)`` over every ``b >= 0``.

        What a request adding ``quantity`` units can cost at most, whatever the
        period's usage so far: the gateway reserves it before the request runs.
        """
        ...


def _price(value: object, what: str) -> Decimal:
    number = to_decimal(value, what=what, error=InvalidPriceBook)
    if number < 0:
        raise InvalidPriceBook(f"{what} must not be negative, got {number}")
    return number


def _per_units(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidPriceBook(f"per_units must be a positive int, got {value!r}")
    if not is_terminating(value):
        raise InvalidPriceBook(
            f"per_units={value} cannot give an exact per-unit price: "
            "use a product of 2s and 5s such as 1000 or 1_000_000"
        )
    return value


def _bound(value: object, what: str) -> Quantity:
    try:
        return check_quantity(value)
    except InvalidQuantity as exc:  # a bad bound is a bad price book, not bad usage
        raise InvalidPriceBook(f"{what}: {exc.message}") from None


def _cost(units: Quantity, price: Decimal, per_units: int) -> Decimal:
    # Multiply first, divide last: exact because per_units divides a power of ten.
    amount = EXACT.multiply(price, units)
    return amount if per_units == 1 else EXACT.divide(amount, per_units)


@dataclass(frozen=True, slots=True)
class FlatRate:
    """``amount`` for every ``per_units`` units, e.g. ``FlatRate(Decimal("0.15"), 1_000_000)``."""

    amount: Decimal
    per_units: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", _price(self.amount, "flat rate amount"))
        _per_units(self.per_units)

    @property
    def unit_price(self) -> Decimal:
        """Exact price of one unit (0.15 per million -> 0.00000015)."""
        return EXACT.divide(self.amount, self.per_units)

    def price(self, quantity: Quantity) -> Decimal:
        return _cost(check_quantity(quantity), self.amount, self.per_units)

    @property
    def is_monotone(self) -> bool:
        return True

    def max_increase(self, quantity: Quantity) -> Decimal:
        return self.price(quantity)  # linear: the same wherever the period stands


@dataclass(frozen=True, slots=True)
class Tier:
    """Units after ``start`` up to ``up_to`` at ``price`` per ``per_units``, plus ``flat_fee``."""

    start: Quantity
    up_to: Quantity | None
    price: Decimal
    flat_fee: Decimal = _ZERO
    per_units: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _bound(self.start, "tier start"))
        if self.up_to is not None:
            object.__setattr__(self, "up_to", _bound(self.up_to, "tier up_to"))
        object.__setattr__(self, "price", _price(self.price, "tier price"))
        object.__setattr__(self, "flat_fee", _price(self.flat_fee, "tier flat fee"))
        _per_units(self.per_units)

    def cost(self, units: Quantity) -> Decimal:
        """Exact price of ``units`` units at this tier's rate (flat fee excluded)."""
        return _cost(units, self.price, self.per_units)

    def __str__(self) -> str:
        end = "∞" if self.up_to is None else str(self.up_to)
        return f"({self.start}, {end}]"


def tiers_up_to(
    *bounds: tuple[Quantity | None, Decimal] | tuple[Quantity | None, Decimal, Decimal],
    per_units: int = 1,
) -> tuple[Tier, ...]:
    """Contiguous tiers from ``(up_to, price[, flat_fee])`` pairs, Stripe style.

    ``tiers_up_to((1000, Decimal("0.10")), (None, Decimal("0.05")))`` is the first
    1000 units at 0.10 and every unit after at 0.05.
    """
    tiers: list[Tier] = []
    start: Quantity = 0
    for bound in bounds:
        up_to, price, *fee = bound
        tiers.append(Tier(start, up_to, price, fee[0] if fee else _ZERO, per_units))
        start = up_to if up_to is not None else start
    return tuple(tiers)


def _validate_tiers(tiers: Sequence[Tier]) -> tuple[Tier, ...]:
    if not tiers:
        raise InvalidPriceBook("tiers: at least one tier is required")
    for index, (before, after) in enumerate(pairwise(tiers), start=1):
        if after.start < before.start:
            raise InvalidPriceBook(
                f"tiers: not sorted, tier {index + 1} {after} comes after tier {index} {before}"
            )
    if tiers[0].start != 0:
        raise InvalidPriceBook(f"tiers: the first tier must start at 0, not {tiers[0].start}")
    for index, tier in enumerate(tiers, start=1):
        if tier.up_to is not None and tier.up_to <= tier.start:
            raise InvalidPriceBook(f"tiers: tier {index} {tier} is empty or inverted")
    for index, (before, after) in enumerate(pairwise(tiers), start=1):
        if before.up_to is None:
            raise InvalidPriceBook(
                f"tiers: tier {index} {before} is open-ended but is not the last tier"
            )
        if after.start < before.up_to:
            raise InvalidPriceBook(
                f"tiers: tier {index + 1} {after} overlaps tier {index} {before}"
            )
        if after.start > before.up_to:
            raise InvalidPriceBook(
                f"tiers: gap between tier {index} {before} and tier {index + 1} {after}"
            )
    if tiers[-1].up_to is not None:
        raise InvalidPriceBook(f"tiers: the last tier {tiers[-1]} must be open-ended (up_to=None)")
    return tuple(tiers)


@dataclass(frozen=True, slots=True)
class GraduatedTiers:
    """Each tier's units at that tier's price; a tier's flat fee once any unit reaches it."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", _validate_tiers(self.tiers))

    def price(self, quantity: Quantity) -> Decimal:
        quantity = check_quantity(quantity)
        parts: list[Decimal] = []
        for tier in self.tiers:
            if quantity <= tier.start:
                break
            top = quantity if tier.up_to is None else min(quantity, tier.up_to)
            parts.append(tier.cost(EXACT.subtract(top, tier.start)))
            parts.append(tier.flat_fee)
        return exact_sum(parts)

    @property
    def is_monotone(self) -> bool:
        return True  # prices and fees are non-negative, so every extra unit adds >= 0

    def max_increase(self, quantity: Quantity) -> Decimal:
        # Every unit at the dearest tier's rate, and every tier's flat fee falling due.
        quantity = check_quantity(quantity)
        if quantity == 0:
            return _ZERO
        dearest = max(EXACT.divide(t.price, t.per_units) for t in self.tiers)
        return exact_sum([EXACT.multiply(dearest, quantity), *(t.flat_fee for t in self.tiers)])


@dataclass(frozen=True, slots=True)
class VolumeTiers:
    """All units at the price of the tier the total falls in, plus that tier's flat fee."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", _validate_tiers(self.tiers))

    def tier_for(self, quantity: Quantity) -> Tier:
        """The tier whose range holds ``quantity`` (the first tier for 0)."""
        for tier in self.tiers:
            if tier.up_to is None or quantity <= tier.up_to:
                return tier
        raise AssertionError("validated tiers end open-ended")  # pragma: no cover

    def price(self, quantity: Quantity) -> Decimal:
        quantity = check_quantity(quantity)
        if quantity == 0:
            return _ZERO
        tier = self.tier_for(quantity)
        return EXACT.add(tier.cost(quantity), tier.flat_fee)

    @property
    def is_monotone(self) -> bool:
        # Within a tier the price grows; it can only drop at a boundary, when the
        # first quantity past ``up_to`` costs less than ``up_to`` itself did.
        for before, after in pairwise(self.tiers):
            assert before.up_to is not None
            at_bound = EXACT.add(before.cost(before.up_to), before.flat_fee)
            just_past = EXACT.add(after.cost(before.up_to), after.flat_fee)
            if just_past < at_bound:
                return False
        return True

    def max_increase(self, quantity: Quantity) -> Decimal:
        # price(b + n) - price(b) when b is in tier i and b + n in tier j >= i is
        # n * u_j + b * (u_j - u_i) + f_j - f_i with b <= up_to_i: bounded by n at the
        # dearest rate, plus the largest re-pricing of a lower tier's units, plus the
        # largest flat fee.
        quantity = check_quantity(quantity)
        if quantity == 0:
            return _ZERO
        rates = [EXACT.divide(t.price, t.per_units) for t in self.tiers]
        repricing = _ZERO
        for i, lower in enumerate(self.tiers[:-1]):
            assert lower.up_to is not None
            for rate in rates[i + 1 :]:
                if rate > rates[i]:
                    step = EXACT.multiply(lower.up_to, EXACT.subtract(rate, rates[i]))
                    repricing = max(repricing, step)
        dearest = max(rates)
        fees = max(t.flat_fee for t in self.tiers)
        return exact_sum([EXACT.multiply(dearest, quantity), repricing, fees])


@dataclass(frozen=True, slots=True)
class PackagePrice:
    """``amount`` per package of ``size`` units; a partial package costs a whole one."""

    amount: Decimal
    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", _price(self.amount, "package amount"))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise InvalidPriceBook(f"package size must be a positive int, got {self.size!r}")

    def packages(self, quantity: Quantity) -> int:
        """Packages needed for ``quantity`` units (rounded up)."""
        quantity = check_quantity(quantity)
        if isinstance(quantity, int):
            return -(-quantity // self.size)
        whole = int(EXACT.divide_int(quantity, self.size))
        return whole + (1 if EXACT.remainder(quantity, self.size) else 0)

    def price(self, quantity: Quantity) -> Decimal:
        return EXACT.multiply(self.amount, self.packages(quantity))

    @property
    def is_monotone(self) -> bool:
        return True

    def max_increase(self, quantity: Quantity) -> Decimal:
        # ceil((b + n) / s) - ceil(b / s) <= ceil(n / s), as ceil is subadditive.
        return self.price(quantity)
