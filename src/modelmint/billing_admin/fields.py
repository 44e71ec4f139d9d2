"""The fields every billing admin service reads and writes the same way.

Amounts, percentages and tax rates are taken as strings only: a float (or a JSON
number parsed into one) is not exact, so it is refused with a billing error rather
than silently rounded. Instants go out as ISO 8601, organisations as their id and
name.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from modelmint.billing.errors import InvalidMoney
from modelmint.billing.exact import to_decimal
from modelmint.billing.money import Money
from modelmint.billing.periods import Period
from modelmint.billing.serialization import Json
from modelmint.errors import ModelMintError
from modelmint.storage.tables import Organization

__all__ = ["CODE_CHARS", "currency_code", "decimal_string", "iso", "month", "org_fields"]

# Column widths of the storage tables: refused up front with a billing error, because
# PostgreSQL would otherwise fail the insert with an opaque 500.
CODE_CHARS = 100


def iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat()


def decimal_string(value: object, what: str, error: type[ModelMintError]) -> Decimal:
    """A decimal from a string only: a float is inexact and an int is a likely slip."""
    if not isinstance(value, str):
        hint = "; floats are not exact" if isinstance(value, float) else ""
        raise error(
            f'{what} must be a decimal string such as "5.00", got {type(value).__name__}{hint}',
            param=what,
        )
    return to_decimal(value, what=what, error=error)


def currency_code(currency: object) -> str:
    if not isinstance(currency, str):
        raise InvalidMoney(f"currency must be a code such as 'USD', got {currency!r}")
    return Money.zero(currency).currency


def month(period: Period) -> str:
    return f"{period.start:%Y-%m}"


def org_fields(org: Organization) -> Json:
    return {"organization_id": org.id, "organization": org.name}
