"""Exact decimal arithmetic: the one context billing computes in, and input conversion.

Python's default decimal context keeps 28 significant digits and rounds silently
past them; a gateway thread may even have changed it. Billing therefore never uses
the ambient context: every sum and product goes through ``EXACT``, which carries
200 digits and *traps* ``Inexact``, so an operation that would have to round raises
instead of losing a fraction of a cent. Rounding to minor units is a separate,
deliberate step (``Money.quantize``), never a side effect.

Inputs are bounded (``MAX_INTEGER_DIGITS`` before the point, ``MAX_SCALE`` after)
so that every product and sum of valid inputs fits in the context's 200 digits:
an absurd value is refused at the door with a clear error, not deep in a formula.
Floats are refused everywhere: ``0.1`` as a float is not one tenth.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

from modelmint.errors import ModelMintError

__all__ = [
    "EXACT",
    "MAX_INTEGER_DIGITS",
    "MAX_SCALE",
    "Quantity",
    "exact_sum",
    "is_terminating",
    "minus",
    "plus",
    "to_decimal",
]

Quantity = int | Decimal
"""A metered amount: whole units (tokens, requests) or a decimal (compute seconds)."""

# 18 integer digits hold any plausible token count or invoice total; 40 decimals
# hold a per-token price like 0.15 / 2**20 exactly. 18 + 40 doubled stays far below
# the context's 200 digits, so a product of two inputs never rounds.
MAX_INTEGER_DIGITS = 18
MAX_SCALE = 40

EXACT = Context(
    prec=200,
    rounding=ROUND_HALF_EVEN,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
"""Arithmetic that raises ``decimal.Inexact`` rather than round."""

_ZERO = Decimal(0)


def to_decimal(value: object, *, what: str, error: type[ModelMintError]) -> Decimal:
    """``value`` (Decimal, int or numeric string) as a finite, bounded Decimal.

    A float or a bool is a ``TypeError`` (a programming error, not bad input); a
    string that is not a number, NaN, an infinity or an out-of-bounds value raises
    ``error`` with a message that names ``what``.
    """
    if isinstance(value, bool | float):
        raise TypeError(
            f"{what}: {type(value).__name__} is refused on the money path; "
            "pass a Decimal, an int or a numeric string"
        )
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise error(f"{what}: {value!r} is not a decimal number") from None
    else:
        raise TypeError(f"{what}: expected Decimal, int or str, got {type(value).__name__}")
    if not number.is_finite():
        raise error(f"{what}: {value!r} is not a finite number")
    if number.is_zero():
        return number
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite numbers have an int exponent
    if exponent < -MAX_SCALE:
        raise error(f"{what}: {value!r} has more than {MAX_SCALE} decimal places")
    if number.adjusted() >= MAX_INTEGER_DIGITS:
        raise error(f"{what}: {value!r} has more than {MAX_INTEGER_DIGITS} integer digits")
    return number


def exact_sum(values: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``values`` (0 for none), whatever the ambient context."""
    total = _ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def is_terminating(denominator: int) -> bool:
    """Whether 1/denominator has a finite decimal expansion (its primes are 2 and 5)."""
    if denominator <= 0:
        return False
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def plus(a: Quantity, b: Quantity) -> Quantity:
    """``a + b``, exact; stays an int when both are ints (token counts)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return EXACT.add(a, b)


def minus(a: Quantity, b: Quantity) -> Quantity:
    """``a - b``, exact; stays an int when both are ints."""
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return EXACT.subtract(a, b)
