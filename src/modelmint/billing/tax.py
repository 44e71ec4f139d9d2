"""Tax: one percentage rate per organisation, applied to the discounted subtotal.

The tax line is ``round_half_even(rate * (subtotal - discount))`` to minor units,
computed once per invoice, after the coupon (tax is due on what the customer
actually pays). A negative base (proration credits larger than the charges) gives
a negative tax line: the credit reverses tax that was charged before.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from modelmint.billing.errors import InvalidTaxRate
from modelmint.billing.exact import EXACT, to_decimal
from modelmint.billing.money import Money

__all__ = ["TaxRate"]

_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class TaxRate:
    """``percent`` (0 to 100, e.g. ``Decimal("20")`` for 20% VAT) named ``name`` on invoices."""

    percent: Decimal
    name: str = "Tax"

    def __post_init__(self) -> None:
        value = to_decimal(self.percent, what="tax rate", error=InvalidTaxRate)
        if not 0 <= value <= _HUNDRED:
            raise InvalidTaxRate(f"tax rate must be between 0 and 100 percent, got {value}")
        object.__setattr__(self, "percent", value)

    @classmethod
    def none(cls) -> TaxRate:
        return cls(Decimal(0), "No tax")

    def tax_on(self, base: Money) -> Money:
        """Tax on ``base``, rounded half-even to minor units."""
        exact = EXACT.divide(EXACT.multiply(base.amount, self.percent), _HUNDRED)
        return Money.rounded(exact, base.currency)

    def __str__(self) -> str:
        return f"{self.name} {self.percent:f}%"
