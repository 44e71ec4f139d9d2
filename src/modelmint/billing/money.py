"""Money: an exact decimal amount in one currency, and the one rounding rule of billing.

The rounding rule
-----------------
Amounts carry full precision everywhere: a price of $0.15 per million tokens is
0.00000015 per token, and a request of 37 tokens costs exactly 0.00000555. An
amount is rounded **once**, where it becomes an invoice line, to the currency's
minor units (cents for USD and EUR, whole yen for JPY) with ``ROUND_HALF_EVEN``
(banker's rounding: a tie goes to the even neighbour). Half-up rounding pushes
every tie the same way, so over thousands of lines the invoices drift upwards;
half-even sends ties up and down equally often and is unbiased on average.
Totals are then sums of rounded lines, so a printed invoice always adds up.

Money never mixes currencies: ``+``, ``-`` and ordering across currencies raise
``CurrencyMismatch`` (equality is simply false, so Money can live in sets).
Money never touches floats: building one from a float is a ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from fractions import Fraction
from types import MappingProxyType

from modelmint.billing.errors import CurrencyMismatch, InvalidMoney
from modelmint.billing.exact import EXACT, to_decimal

__all__ = ["DEFAULT_MINOR_UNITS", "MINOR_UNITS", "ROUNDING", "Money", "minor_units"]

ROUNDING = ROUND_HALF_EVEN
"""The one rounding mode of billing (see the module docstring for why)."""

# ISO 4217 exponents that differ from the default or that customers use most. Add a
# currency here when it is sold in; any other code bills in hundredths.
MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "USD": 2,
        "EUR": 2,
        "GBP": 2,
        "CHF": 2,
        "CAD": 2,
        "AUD": 2,
        "INR": 2,
        "CNY": 2,
        "JPY": 0,
        "KRW": 0,
        "BHD": 3,
        "KWD": 3,
        "JOD": 3,
        "TND": 3,
    }
)
DEFAULT_MINOR_UNITS = 2

# Quantizing is the one operation allowed to round, so it gets its own context
# without the Inexact trap (and with enough digits never to round twice).
_ROUNDING_CONTEXT = Context(
    prec=200, rounding=ROUNDING, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation]
)


def minor_units(currency: str) -> int:
    """Decimal places of ``currency``'s smallest unit (2 unless listed in MINOR_UNITS)."""
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNITS)


def _currency_code(currency: object) -> str:
    if not isinstance(currency, str):
        raise TypeError(f"currency must be an ISO 4217 code string, got {type(currency).__name__}")
    code = currency.strip().upper()
    if len(code) != 3 or not (code.isascii() and code.isalpha()):
        raise InvalidMoney(f"{currency!r} is not a three-letter ISO 4217 currency code")
    return code


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount of one currency. Immutable; arithmetic returns new values."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        amount: object = self.amount
        if isinstance(amount, bool | float):
            raise TypeError(
                f"Money refuses {type(amount).__name__} amounts: floats are not exact; "
                "use Decimal, int or Money.parse('12.50', ...)"
            )
        if isinstance(amount, int):
            object.__setattr__(self, "amount", Decimal(amount))
        elif not isinstance(amount, Decimal):
            raise TypeError(f"Money amount must be Decimal or int, got {type(amount).__name__}")
        if not self.amount.is_finite():
            raise InvalidMoney(f"money amount must be finite, got {amount!r}")
        object.__setattr__(self, "currency", _currency_code(self.currency))

    # -- construction -----------------------------------------------------------------

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    @classmethod
    def of(cls, amount: Decimal | int | str, currency: str) -> Money:
        """Money from an external value: numeric strings accepted, bounds checked."""
        return cls(to_decimal(amount, what="money amount", error=InvalidMoney), currency)

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        """Money from text such as ``"12.50"``; non-numeric, NaN and infinity are refused."""
        if not isinstance(text, str):
            raise TypeError(f"Money.parse takes a string, got {type(text).__name__}")
        return cls.of(text, currency)

    @classmethod
    def rounded(cls, value: Decimal | Fraction, currency: str) -> Money:
        """``value`` rounded to ``currency``'s minor units by the billing rounding rule.

        Accepts a Fraction so that proration (a fee times a ratio of durations, which
        rarely has a finite decimal expansion) is rounded exactly once, here.
        """
        if isinstance(value, Decimal):
            return cls(value, currency).quantize()
        code = _currency_code(currency)
        places = minor_units(code)
        # round() on a Fraction rounds half to even, the same rule as ROUNDING.
        units = round(value * 10**places)
        return cls(Decimal(units).scaleb(-places, EXACT), code)

    @classmethod
    def from_minor_units(cls, units: int, currency: str) -> Money:
        """Money from an integer count of minor units (e.g. cents), as stores often keep it."""
        code = _currency_code(currency)
        return cls(Decimal(units).scaleb(-minor_units(code), EXACT), code)

    @classmethod
    def total(cls, values: Iterable[Money], currency: str) -> Money:
        """Exact sum of ``values`` in ``currency`` (zero for none)."""
        result = cls.zero(currency)
        for value in values:
            result = result + value
        return result

    # -- rounding ---------------------------------------------------------------------

    def quantize(self) -> Money:
        """This amount rounded half-even to the currency's minor units."""
        exponent = Decimal(1).scaleb(-minor_units(self.currency))
        rounded = self.amount.quantize(exponent, rounding=ROUNDING, context=_ROUNDING_CONTEXT)
        return Money(rounded, self.currency)

    @property
    def is_quantized(self) -> bool:
        """Whether the amount is a whole number of minor units."""
        return self.quantize().amount == self.amount

    def to_minor_units(self) -> int:
        """The amount as an integer count of minor units; refuses to round implicitly."""
        if not self.is_quantized:
            raise InvalidMoney(f"{self} is not a whole number of minor units; quantize() first")
        return int(self.amount.scaleb(minor_units(self.currency), EXACT))

    # -- arithmetic ---------------------------------------------------------------------

    def _same_currency(self, other: Money, operation: str) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(
                f"cannot {operation} {self.currency} and {other.currency} amounts"
            )

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(EXACT.add(self.amount, other.amount), self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(EXACT.subtract(self.amount, other.amount), self.currency)

    def __mul__(self, factor: object) -> Money:
        if isinstance(factor, bool | float):
            raise TypeError(f"Money cannot be multiplied by {type(factor).__name__}")
        if isinstance(factor, int | Decimal):
            if isinstance(factor, Decimal) and not factor.is_finite():
                raise InvalidMoney(f"cannot multiply money by {factor}")
            return Money(EXACT.multiply(self.amount, Decimal(factor)), self.currency)
        return NotImplemented

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(EXACT.minus(self.amount), self.currency)

    def __abs__(self) -> Money:
        return Money(EXACT.abs(self.amount), self.currency)

    # -- ordering -----------------------------------------------------------------------

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount < other.amount

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount <= other.amount

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount > other.amount

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount >= other.amount

    @property
    def is_zero(self) -> bool:
        return self.amount.is_zero()

    @property
    def is_negative(self) -> bool:
        return self.amount < 0

    def __str__(self) -> str:
        # "f" keeps 0.00000015 from printing as 1.5E-7 on an invoice.
        return f"{self.amount:f} {self.currency}"
