"""Exact sums of money columns in SQL, on PostgreSQL and on SQLite alike.

``exact_sum(column)`` is ``SUM(column)`` on PostgreSQL, where money is NUMERIC and
sums exactly. On SQLite money is text (``storage.types.ExactDecimal``), and its
``SUM`` would convert each value to a float; there it calls ``mm_exact_sum``, an
aggregate written in Python that adds the texts as Decimals. ``prepare(session)``
registers that aggregate on the session's connection, so call it before a query that
uses ``exact_sum``; on PostgreSQL it does nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from modelmint.billing.exact import EXACT
from modelmint.storage.types import ExactDecimal

__all__ = ["exact_sum", "prepare"]

_AGGREGATE = "mm_exact_sum"


class exact_sum(FunctionElement[Decimal]):
    """The exact sum of a money column (NULL when there are no rows); lower case because
    it reads as the SQL function it is."""

    type = ExactDecimal()
    name = "exact_sum"
    inherit_cache = True


@compiles(exact_sum)
def _sum(element: exact_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"SUM({compiler.process(element.clauses, **kw)})"


@compiles(exact_sum, "sqlite")
def _sum_sqlite(element: exact_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{_AGGREGATE}({compiler.process(element.clauses, **kw)})"


class _ExactSum:
    """SQLite aggregate: Decimal addition of plain-notation texts."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | int | None) -> None:
        if value is None:
            return
        amount = Decimal(value)
        self.total = amount if self.total is None else EXACT.add(self.total, amount)

    def finalize(self) -> str | None:
        return None if self.total is None else f"{self.total:f}"


def prepare(session: Session) -> None:
    """Make ``exact_sum`` callable on ``session``'s connection (SQLite needs the aggregate)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    pooled = connection.connection
    # Once per DBAPI connection: SQLite refuses to replace a function while a statement
    # that may use it is still open.
    if pooled.info.get(_AGGREGATE):
        return
    raw: Any = pooled.driver_connection
    raw.create_aggregate(_AGGREGATE, 1, _ExactSum)
    pooled.info[_AGGREGATE] = True
