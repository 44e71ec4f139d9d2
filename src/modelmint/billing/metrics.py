"""Billable metrics: what a price can be attached to.

A metric is a ``StrEnum`` member, so its value is the stable name stored in the
database, written in price-book files and shown on invoices. Each metric knows its
unit and whether quantities must be whole (tokens) or may be fractional (seconds).

To add a metric: add a member below with its unit in ``_UNITS`` (and in
``_FRACTIONAL`` if it can be fractional), then have metering record it. Existing
price books keep working: a metric without a price resolves to the ``*`` default
or raises ``PriceNotFound``, never to a silent zero.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from modelmint.billing.errors import InvalidQuantity
from modelmint.billing.exact import MAX_INTEGER_DIGITS, Quantity, to_decimal

__all__ = ["Metric", "check_quantity"]


class Metric(StrEnum):
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    REQUESTS = "requests"
    EMBEDDING_TOKENS = "embedding_tokens"
    COMPUTE_SECONDS = "compute_seconds"

    @property
    def unit(self) -> str:
        """Singular unit name for invoice lines ("token", "request", "second")."""
        return _UNITS[self]

    @property
    def fractional(self) -> bool:
        """Whether a quantity may have a fractional part (compute time does; tokens do not)."""
        return self in _FRACTIONAL

    @classmethod
    def parse(cls, name: str) -> Metric:
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(member.value for member in cls)
            raise InvalidQuantity(f"unknown metric {name!r}; known metrics: {known}") from None


_UNITS: dict[Metric, str] = {
    Metric.INPUT_TOKENS: "token",
    Metric.OUTPUT_TOKENS: "token",
    Metric.REQUESTS: "request",
    Metric.EMBEDDING_TOKENS: "token",
    Metric.COMPUTE_SECONDS: "second",
}
_FRACTIONAL = frozenset({Metric.COMPUTE_SECONDS})
_INT_LIMIT = 10**MAX_INTEGER_DIGITS


def check_quantity(quantity: object, metric: Metric | None = None) -> Quantity:
    """``quantity`` validated: finite, non-negative, whole unless ``metric`` is fractional.

    Ints pass through unchanged (the hot path meters tokens as ints); Decimals are
    bounds-checked. Floats are a ``TypeError`` like everywhere in billing.
    """
    what = f"{metric.value} quantity" if metric is not None else "quantity"
    if isinstance(quantity, int) and not isinstance(quantity, bool):
        if quantity >= _INT_LIMIT:
            raise InvalidQuantity(f"{what} {quantity} is beyond {MAX_INTEGER_DIGITS} digits")
        value: Quantity = quantity
    else:
        value = to_decimal(quantity, what=what, error=InvalidQuantity)
    if value < 0:
        raise InvalidQuantity(f"{what} must not be negative, got {value}")
    if (
        metric is not None
        and not metric.fractional
        and isinstance(value, Decimal)
        and value != value.to_integral_value()
    ):
        raise InvalidQuantity(f"{what} must be a whole number of {metric.unit}s, got {value}")
    return value
