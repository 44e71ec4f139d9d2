"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric, Text
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["ExactDecimal", "UTCDateTime"]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps; SQLite stores them naive, we hand them back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """An exact Decimal of any scale: NUMERIC on PostgreSQL, canonical text on SQLite.

    PostgreSQL's unconstrained NUMERIC stores every digit (up to 16383 after the point)
    and still sums in SQL. A fixed NUMERIC(38, 18) would round: billing allows prices
    with 40 decimals (0.15 per 2**20 tokens), and request charges have more. SQLite has
    no exact decimal storage (NUMERIC affinity turns 0.000000150000000001 into a
    REAL), so there the value is kept as its plain-notation text; such a column must
    be summed in Python, not with SQL ``SUM`` (which would go through floats).
    Floats are refused on the way in, like everywhere in billing.
    """

    impl = Numeric(asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"exact decimal column given {type(value).__name__}, not Decimal")
        if not value.is_finite():
            raise ValueError(f"exact decimal column given {value}")
        return f"{value:f}" if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, str):
            return Decimal(value)
        if isinstance(value, Decimal):
            return value
        # A float here means a row written by something other than this type.
        raise TypeError(f"exact decimal column returned {type(value).__name__}")
