"""Hand-written multi-row statements for the request path's one transaction per batch.

The metering writer stores, rates and settles a whole batch of requests in one
transaction, without the ORM: SQLAlchemy's per-object and per-result costs were larger
than the database's own work on this path. This module is the one place that knows
how each dialect takes many rows in one statement:

* SQLite (in process, so a statement costs no round trip) takes a multi-row VALUES
  list, or ``executemany`` for updates; decimals are the plain-notation text
  ``ExactDecimal`` stores, times the naive UTC text SQLAlchemy reads back.
* PostgreSQL takes the rows as one JSON array typed by the table's own row type
  (``jsonb_populate_recordset``): a statement's text then never changes with the
  number of rows, so psycopg prepares it once. ``run`` sends a list of statements in
  one round trip (psycopg's pipeline mode) and hands back every result.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

__all__ = [
    "BET_LOST",
    "COMMIT",
    "EXACT_ADD",
    "EXACT_FLOOR0",
    "EXACT_ROOM",
    "BatchSql",
    "Rows",
    "Statement",
    "bet_checked",
    "read_decimal",
    "run",
    "sqlite_add_exact",
    "text_array",
]

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: Sequence[Any] = ()
    many: bool = False  # ``params`` is a list of parameter tuples (``executemany``)


_NOTHING = Statement("SELECT 1 WHERE 1 = 0")
# Sent last in a batch's round trip on PostgreSQL, when the batch checks its own bet
# (``bet_checked``): the commit then costs no round trip of its own.
COMMIT = Statement("COMMIT")
# The SQLSTATE ``mm_batch_bet`` raises (migration 0015): a one-trip batch's bet was lost.
BET_LOST = "MMB01"

# SQLite: the SQL functions that do exact arithmetic on ``ExactDecimal`` texts (SQL's
# own goes through floats). The metering writer registers them on its connection.
EXACT_ADD = "mm_exact_add"  # (a, b): a + b
EXACT_FLOOR0 = "mm_exact_floor0"  # (a): a, or "0" if a is negative
EXACT_ROOM = "mm_exact_room"  # (amount, pending, wanted): 1 if amount - pending >= wanted


def _json(value: Any) -> str:
    """What orjson cannot encode itself: Decimals, as exact plain-notation text, which
    PostgreSQL's NUMERIC input reads back exactly."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    raise TypeError(f"cannot store {type(value).__name__} in a batch statement")


@functools.lru_cache(maxsize=256)
def _sqlite_time(moment: datetime) -> str:
    """The text form SQLAlchemy's DateTime reads back on SQLite. Cached: a batch names
    the same few hours and days over and over."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def text_array(values: Iterable[str]) -> str:
    """PostgreSQL's text form of a ``text[]`` holding ``values`` (for ``%s::text[]``):
    psycopg sends a string for a fraction of what adapting a Python list costs it."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def read_decimal(value: Any) -> Decimal:
    """An ExactDecimal column as read by the DBAPI: NUMERIC (PostgreSQL) or text (SQLite)."""
    if isinstance(value, Decimal):
        return value
    if value is None:
        return Decimal(0)
    return Decimal(value)


class BatchSql:
    """Statement builders for one dialect (see the module docstring)."""

    def __init__(self, *, sqlite: bool) -> None:
        self.sqlite = sqlite
        self.mark = "?" if sqlite else "%s"

    # -- values ---------------------------------------------------------------------------

    def time(self, moment: datetime) -> Any:
        if moment.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return _sqlite_time(moment) if self.sqlite else moment

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def decimal(self, value: Decimal) -> Any:
        # Same storage as ``ExactDecimal``: plain-notation text on SQLite, NUMERIC elsewhere.
        return f"{value:f}" if self.sqlite else value

    def add_exact(self, table: str, column: str) -> str:
        """``column = column + excluded.column`` for an upsert's ON CONFLICT clause,
        exactly: NUMERIC arithmetic on PostgreSQL, ``sqlite_add_exact`` on SQLite."""
        if self.sqlite:
            return sqlite_add_exact(table, column)
        return f"{column} = {table}.{column} + excluded.{column}"

    # -- statements -----------------------------------------------------------------------

    def insert(self, table: str, columns: tuple[str, ...], rows: Rows, tail: str = "") -> Statement:
        """``INSERT INTO table (columns) <the rows> tail`` as one statement (one that
        does nothing for no rows)."""
        if not rows:
            return _NOTHING
        sql = self._insert_text(table, columns, tail, len(rows) if self.sqlite else 0)
        if self.sqlite:
            return Statement(sql, tuple(itertools.chain.from_iterable(rows)))
        return Statement(sql, (self.records(columns, rows),))

    def update(
        self, table: str, keys: tuple[str, ...], columns: tuple[str, ...], rows: Rows
    ) -> Statement:
        """Set ``columns`` of the rows named by ``keys``; each row gives the key values,
        then the new column values, in that order."""
        if self.sqlite:
            sets = ", ".join(f"{c} = ?" for c in columns)
            where = " AND ".join(f"{k} = ?" for k in keys)
            reordered = [(*row[len(keys) :], *row[: len(keys)]) for row in rows]
            return Statement(f"UPDATE {table} SET {sets} WHERE {where}", reordered, many=True)
        return Statement(
            self._update_text(table, keys, columns), (self.records((*keys, *columns), rows),)
        )

    def where_in(
        self, table: str, keys: tuple[str, ...], rows: Rows, *, alias: str = ""
    ) -> tuple[str, tuple[Any, ...]]:
        """A condition ``(keys) IN <rows>`` and its parameters, for a statement on ``table``
        (named ``alias`` in it, if given)."""
        if self.sqlite:
            if not rows:
                return "0", ()
            where = self._where_in_text(table, keys, alias, len(rows))
            return where, tuple(itertools.chain.from_iterable(rows))
        return self._where_in_text(table, keys, alias, 0), (self.records(keys, rows),)

    def records(self, columns: tuple[str, ...], rows: Rows) -> str:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        return orjson.dumps(records, default=_json).decode()

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one builder per writer, few shapes
    def _insert_text(self, table: str, columns: tuple[str, ...], tail: str, rows: int) -> str:
        """The text of ``insert``: on SQLite for ``rows`` rows, on PostgreSQL one text
        whatever their number (``rows`` 0)."""
        names = ", ".join(columns)
        if self.sqlite:
            one = "(" + ", ".join(["?"] * len(columns)) + ")"
            values = ", ".join([one] * rows)
            return f"INSERT INTO {table} ({names}) VALUES {values} {tail}"
        return (
            f"INSERT INTO {table} ({names}) SELECT {names} "
            f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) {tail}"
        )

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one builder per writer, few shapes
    def _where_in_text(self, table: str, keys: tuple[str, ...], alias: str, rows: int) -> str:
        """The text of ``where_in``: on SQLite for ``rows`` rows, on PostgreSQL one text
        whatever their number (``rows`` 0)."""
        prefix = f"{alias}." if alias else ""
        qualified = ", ".join(prefix + k for k in keys)
        if self.sqlite:
            one = "(" + ", ".join(["?"] * len(keys)) + ")"
            return f"({qualified}) IN (VALUES {', '.join([one] * rows)})"
        return (
            f"({qualified}) IN (SELECT {', '.join(keys)} "
            f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb))"
        )

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one builder per writer, few shapes
    def _update_text(self, table: str, keys: tuple[str, ...], columns: tuple[str, ...]) -> str:
        sets = ", ".join(f"{c} = x.{c}" for c in columns)
        where = " AND ".join(f"{table}.{k} = x.{k}" for k in keys)
        return (
            f"UPDATE {table} SET {sets} "
            f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS x WHERE {where}"
        )


def sqlite_add_exact(table: str, column: str) -> str:
    """SQLite's exact ``column = column + excluded.column`` for an upsert's ON CONFLICT
    clause: ``EXACT_ADD``, skipped when adding "0" (a call into Python costs more than
    the CASE)."""
    return (
        f"{column} = CASE excluded.{column} WHEN '0' THEN {table}.{column} "
        f"ELSE {EXACT_ADD}({table}.{column}, excluded.{column}) END"
    )


def bet_checked(ctes: Sequence[str], condition: str) -> str:
    """On PostgreSQL, a statement of data-modifying ``ctes``, the first of them named
    ``inserted`` (``INSERT ... RETURNING id``), whose rows are the ids inserted and
    which fails (SQLSTATE ``BET_LOST``) unless ``condition`` holds once they ran: a batch
    that checks its bet in the database can send its COMMIT in the same round trip."""
    return (
        f"WITH {', '.join(ctes)} SELECT id FROM inserted "
        f"UNION ALL SELECT NULL WHERE mm_batch_bet({condition})"
    )


def run(raw: Any, sqlite: bool, statements: Sequence[Statement]) -> list[Rows]:
    """Execute ``statements`` in order on a DBAPI connection; each one's rows (empty for
    statements that return none). On PostgreSQL all of them go in one round trip."""
    if sqlite:
        results: list[Rows] = []
        cursor = raw.cursor()
        try:
            for statement in statements:
                if statement.many:
                    if statement.params:
                        cursor.executemany(statement.sql, statement.params)
                    results.append([])
                    continue
                cursor.execute(statement.sql, statement.params)
                results.append(cursor.fetchall() if cursor.description else [])
        finally:
            cursor.close()
        return results
    cursors = []
    try:
        with raw.pipeline() as pipeline:
            for statement in statements:
                cursor = raw.cursor()
                cursors.append(cursor)
                if statement.many:
                    cursor.executemany(statement.sql, statement.params)
                else:
                    cursor.execute(statement.sql, statement.params)
            pipeline.sync()
            return [c.fetchall() if c.description else [] for c in cursors]
    finally:
        for cursor in cursors:
            cursor.close()
