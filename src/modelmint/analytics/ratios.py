"""Derived figures (percentages, rates, prices per million): divisions, so rounded.

Money itself stays exact everywhere in analytics; a ratio of two amounts generally
has no finite decimal expansion, so it is rounded half-even to a stated number of
places here, and nowhere else. None means the ratio is undefined (nothing to divide by).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal

__all__ = ["per_million", "percent", "ratio"]

# Enough digits for any quotient of amounts the columns hold; rounding happens once,
# in ``quantize``.
_DIVISION = Context(prec=60, rounding=ROUND_HALF_EVEN)


def ratio(numerator: Decimal | int, denominator: Decimal | int, *, places: int) -> Decimal | None:
    """``numerator / denominator`` rounded half-even to ``places``; None for a zero divisor."""
    if denominator == 0:
        return None
    quotient = _DIVISION.divide(Decimal(numerator), Decimal(denominator))
    return quotient.quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=_DIVISION
    )


def percent(part: Decimal | int, whole: Decimal | int, *, places: int = 2) -> Decimal | None:
    """``part`` as a percentage of ``whole``; None when ``whole`` is zero."""
    if whole == 0:
        return None
    return ratio(_DIVISION.multiply(Decimal(part), 100), whole, places=places)


def per_million(amount: Decimal, units: int, *, places: int = 6) -> Decimal | None:
    """``amount`` per million ``units`` (e.g. cost per 1M tokens); None without units."""
    return ratio(_DIVISION.multiply(amount, 1_000_000), units, places=places)
