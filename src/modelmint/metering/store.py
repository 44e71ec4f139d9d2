"""The usage writer's direct line to the database: one batch, one transaction.

The group-commit writer is the only thing on the request path that waits for the
database, so it skips the ORM and SQL compilation: it holds one connection and
sends hand-written statements, one per table per batch (multi-row VALUES on SQLite,
one JSON array of rows on PostgreSQL; see ``_rows``).
``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` names the rows actually
inserted, so a retried event is neither stored, rolled up nor charged twice. On
PostgreSQL a batch without charges skips that wait (``_pipelined``).

Events on a plan are then charged by the ``charge`` hook (``charging.Charger``) in
the same transaction, through an ORM session on the same connection, and their
charges written onto their rows.

Last, the analytics rollups (``rollups.economics_rows`` per hour and per day, daily
totals per currency, and the latency histogram) take the fresh events with their
charges. Their money columns are added exactly: NUMERIC + NUMERIC on PostgreSQL; on
SQLite, where ``ExactDecimal`` is text and SQL arithmetic would go through floats, by
``mm_exact_add``, a Python function registered on the writer's connection that adds
the two texts as Decimals.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, exc
from sqlalchemy.orm import Session

from modelmint.billing.exact import EXACT
from modelmint.metering.events import UsageEvent
from modelmint.metering.rollups import (
    EconomicsSums,
    daily,
    daily_totals,
    economics_rows,
    latency_rows,
    rollup_rows,
)
from modelmint.storage.db import Database

__all__ = ["ChargeHook", "UsageStore"]

# Charges fresh events inside the writer's transaction: event id -> exact charge.
ChargeHook = Callable[[Session, list[UsageEvent]], dict[str, Decimal]]

log = logging.getLogger(__name__)

_USAGE_COLUMNS = (
    "id",
    "created_at",
    "organization_id",
    "api_key_id",
    "model",
    "deployment_id",
    "model_version_id",
    "endpoint",
    "status_code",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "streamed",
    "usage_estimated",
    "finish_reason",
    "engine_ms",
    "plan_code",
    "plan_version",
    "currency",
    "cost",
)
_ROLLUP_KEY = ("hour", "organization_id", "api_key_id", "model", "model_version_id", "metric")
_ROLLUP_COLUMNS = (*_ROLLUP_KEY, "quantity")
_ECONOMICS_KEY = (
    "organization_id",
    "model",
    "model_version_id",
    "deployment_id",
    "plan_code",
    "currency",
)
_ECONOMICS_COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "embedding_tokens",
    "engine_us",
    "latency_ms",
)
_ECONOMICS_MONEY = ("revenue", "cost")
_LATENCY_KEY = ("hour", "model", "le_ms")
_ROLLUP_TAIL = (
    f"ON CONFLICT ({', '.join(_ROLLUP_KEY)}) DO UPDATE SET "
    "quantity = usage_rollups_hourly.quantity + excluded.quantity"
)
_LATENCY_TAIL = (
    f"ON CONFLICT ({', '.join(_LATENCY_KEY)}) DO UPDATE SET "
    "count = analytics_latency_hourly.count + excluded.count"
)
# SQLite only: exact addition of two ExactDecimal texts (see the module docstring).
_EXACT_ADD = "mm_exact_add"


def _json(value: Any) -> str:
    """What orjson cannot encode itself: Decimals, as exact plain-notation text, which
    PostgreSQL's NUMERIC input reads back exactly."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    raise TypeError(f"cannot store {type(value).__name__} in a usage batch")


@functools.lru_cache(maxsize=256)
def _sqlite_time(moment: datetime) -> str:
    """The text form SQLAlchemy's DateTime reads back on SQLite. Cached: a batch names
    the same few hours and days over and over."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _exact_add_text(left: str | None, right: str | None) -> str:
    total = EXACT.add(Decimal(left or 0), Decimal(right or 0))
    return f"{total:f}"


class UsageStore:
    def __init__(self, database: Database, charge: ChargeHook | None = None) -> None:
        self._db = database
        self._charge = charge
        self._sqlite = database.is_sqlite
        self._mark = "?" if self._sqlite else "%s"
        # Errors that mean "these rows are wrong", as opposed to "the database is down":
        # SQLAlchemy's, and the driver's own (PEP 249 names) from the raw cursor.
        dbapi = database.engine.dialect.dbapi
        self.data_errors: tuple[type[BaseException], ...] = (
            ValueError,
            TypeError,
            exc.IntegrityError,
            exc.DataError,
            exc.ProgrammingError,
            *(getattr(dbapi, name) for name in ("IntegrityError", "DataError", "ProgrammingError")),
        )
        self._connection: Connection | None = None

    def write(self, events: list[UsageEvent]) -> int:
        """Insert the events and add the new ones to the hourly rollups, in one transaction.

        Returns how many were new. On any error the transaction is rolled back and the
        connection replaced, so a database that went away is reconnected to next time.
        """
        connection = self._connect()
        try:
            # The DBAPI cursor itself, for every statement but the charging ORM's:
            # SQLAlchemy's result wrapper cost more per row than the database's work on
            # this hot path. The transaction is begun through SQLAlchemy, so that
            # ``connection.commit()`` below commits it.
            connection.begin()
            fresh = self._pipelined(connection, events)
            if fresh is None:
                fresh = self._one_by_one(connection, events)
            connection.commit()
        except BaseException:
            self._discard()
            raise
        return len(fresh)

    def _one_by_one(self, connection: Connection, events: list[UsageEvent]) -> list[UsageEvent]:
        """Insert, learn which events are new, then add only those up and charge them."""
        cursor = connection.connection.cursor()
        try:
            cursor.execute(*self._insert_usage(events))
            inserted = {row[0] for row in cursor.fetchall()}
            fresh = [event for event in events if event.id in inserted]
            if fresh:
                charges: dict[str, Decimal] = {}
                if self._charges_due(fresh):
                    charges = self._charge_events(connection, fresh)
                for statement in self._sums(fresh, charges):
                    cursor.execute(*statement)
        finally:
            cursor.close()
        return fresh

    def _pipelined(
        self, connection: Connection, events: list[UsageEvent]
    ) -> list[UsageEvent] | None:
        """PostgreSQL without charges: every statement in one round trip (psycopg's
        pipeline mode), betting that every event is new, as all but retried ones are.

        Waiting for each of six statements cost ~0.2 ms apiece here, more than the
        commit. When the bet is lost (an event was already stored) the transaction is
        rolled back and None returned, for ``_one_by_one`` to do it again.
        """
        raw: Any = connection.connection.driver_connection
        pipeline = getattr(raw, "pipeline", None)
        if self._sqlite or pipeline is None:
            return None
        if self._charges_due(events):
            return None
        ids = {event.id for event in events}
        if len(ids) < len(events):
            return None  # a batch naming one event twice: only one of them is new
        # The insert's cursor keeps its RETURNING rows; the upserts share another.
        with pipeline() as batch, raw.cursor() as returning, raw.cursor() as upserts:
            returning.execute(*self._insert_usage(events))
            for statement in self._sums(events, {}):
                upserts.execute(*statement)
            batch.sync()
            inserted = {row[0] for row in returning.fetchall()}
        if inserted == ids:
            return events
        connection.rollback()
        connection.begin()
        return None

    def _charges_due(self, events: list[UsageEvent]) -> bool:
        return self._charge is not None and any(e.plan_code is not None for e in events)

    def _sums(
        self, fresh: list[UsageEvent], charges: dict[str, Decimal]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The upserts adding the fresh events to the hourly rollups and, charged, to
        the analytics rollups."""
        return [self._upsert_rollups(rollup_rows(fresh)), *self._economics_upserts(fresh, charges)]

    def _charge_events(self, connection: Connection, fresh: list[UsageEvent]) -> dict[str, Decimal]:
        assert self._charge is not None
        # The session joins the connection's transaction; it never commits it.
        with Session(bind=connection) as session:
            charges = self._charge(session, fresh)
        if charges:
            mark = self._mark
            connection.exec_driver_sql(
                f"UPDATE usage_records SET charge = {mark} WHERE id = {mark}",
                [(self._decimal(amount), event_id) for event_id, amount in charges.items()],
            )
        return charges

    def _economics_upserts(
        self, fresh: list[UsageEvent], charges: dict[str, Decimal]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The upserts adding the fresh events, charged, to the analytics rollups."""
        hourly = economics_rows(fresh, charges)
        days = daily(hourly)
        statements = [
            self._upsert_economics("analytics_usage_hourly", "hour", hourly),
            self._upsert_economics("analytics_usage_daily", "day", days),
            self._upsert_economics(
                "analytics_usage_daily_totals", "day", daily_totals(days), ("currency",)
            ),
        ]
        latencies = latency_rows(fresh)
        if latencies:
            statements.append(self._upsert_latencies(latencies))
        return statements

    def close(self) -> None:
        self._discard()

    def _connect(self) -> Connection:
        if self._connection is None:
            connection = self._db.engine.connect()
            pooled = connection.connection
            if self._sqlite and not pooled.info.get(_EXACT_ADD):
                raw: Any = pooled.driver_connection
                raw.create_function(_EXACT_ADD, 2, _exact_add_text, deterministic=True)
                pooled.info[_EXACT_ADD] = True
            self._connection = connection
        return self._connection

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.rollback()
            connection.close()
        except Exception as exc:  # a broken connection: drop it from the pool
            log.debug("discarding usage connection: %s", exc)
            connection.invalidate()

    def _decimal(self, value: Decimal) -> Any:
        # Same storage as ``ExactDecimal``: plain-notation text on SQLite, NUMERIC elsewhere.
        return f"{value:f}" if self._sqlite else value

    def _rows(
        self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]], tail: str
    ) -> tuple[str, tuple[Any, ...]]:
        """``INSERT INTO table (columns) <the rows> tail`` as one statement and its parameters.

        SQLite takes a multi-row VALUES list. PostgreSQL takes the rows as one JSON
        array, typed by the table's own row type: the statement's text then never
        changes with the batch size, so psycopg prepares it once, where a VALUES list
        of 32 rows x 20 columns cost more in psycopg's per-call query parsing (~4 ms)
        than the database's work.
        """
        sql = self._statement(table, columns, tail, len(rows) if self._sqlite else 0)
        if self._sqlite:
            return sql, tuple(itertools.chain.from_iterable(rows))
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        return sql, (orjson.dumps(records, default=_json).decode(),)

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one store per writer, few shapes
    def _statement(self, table: str, columns: tuple[str, ...], tail: str, rows: int) -> str:
        """The text of ``_rows``' statement: on SQLite for ``rows`` rows, on PostgreSQL
        one text whatever their number (``rows`` 0)."""
        names = ", ".join(columns)
        if self._sqlite:
            one = "(" + ", ".join(["?"] * len(columns)) + ")"
            values = ", ".join([one] * rows)
            return f"INSERT INTO {table} ({names}) VALUES {values} {tail}"
        return (
            f"INSERT INTO {table} ({names}) SELECT {names} "
            f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) {tail}"
        )

    def _time(self, moment: datetime) -> Any:
        if moment.tzinfo is None:
            raise ValueError("usage timestamps must be timezone-aware")
        if not self._sqlite:
            return moment  # a timestamptz
        return _sqlite_time(moment)

    def _insert_usage(self, events: list[UsageEvent]) -> tuple[str, tuple[Any, ...]]:
        rows = [self._usage_row(event) for event in events]
        return self._rows(
            "usage_records", _USAGE_COLUMNS, rows, "ON CONFLICT (id) DO NOTHING RETURNING id"
        )

    def _usage_row(self, e: UsageEvent) -> tuple[Any, ...]:
        """An event's values in ``_USAGE_COLUMNS`` order."""
        return (
            e.id, self._time(e.created_at), e.organization_id, e.api_key_id, e.model,
            e.deployment_id, e.model_version_id, e.endpoint, e.status_code,
            e.input_tokens, e.output_tokens, e.latency_ms, e.streamed, e.usage_estimated,
            e.finish_reason, e.engine_ms, e.plan_code, e.plan_version, e.currency,
            None if e.cost is None else self._decimal(e.cost),
        )  # fmt: skip

    def _upsert_rollups(self, rows: list[dict[str, Any]]) -> tuple[str, tuple[Any, ...]]:
        values = [(self._time(row["hour"]), *(row[c] for c in _ROLLUP_COLUMNS[1:])) for row in rows]
        return self._rows("usage_rollups_hourly", _ROLLUP_COLUMNS, values, _ROLLUP_TAIL)

    def _upsert_economics(
        self,
        table: str,
        time_column: str,
        rows: Mapping[tuple[Any, ...], EconomicsSums],
        key_columns: tuple[str, ...] = _ECONOMICS_KEY,
    ) -> tuple[str, tuple[Any, ...]]:
        """An upsert adding ``rows`` (keyed by the hour or day, then ``key_columns``'
        values) to an analytics table."""
        values = [self._economics_row(moment, key, sums) for (moment, *key), sums in rows.items()]
        columns, tail = self._economics_shape(table, time_column, key_columns)
        return self._rows(table, columns, values, tail)

    def _economics_row(
        self, moment: datetime, key: list[Any], sums: EconomicsSums
    ) -> tuple[Any, ...]:
        return (
            self._time(moment), *key, sums.requests, sums.errors, sums.input_tokens,
            sums.output_tokens, sums.embedding_tokens, sums.engine_us, sums.latency_ms,
            self._decimal(sums.revenue), self._decimal(sums.cost),
        )  # fmt: skip

    @functools.lru_cache(maxsize=8)  # noqa: B019 - one store per writer, three tables
    def _economics_shape(
        self, table: str, time_column: str, key_columns: tuple[str, ...]
    ) -> tuple[tuple[str, ...], str]:
        """An analytics table's inserted columns and its ON CONFLICT clause."""
        conflict = (time_column, *key_columns)
        columns = (*conflict, *_ECONOMICS_COUNTS, *_ECONOMICS_MONEY)
        counts = [f"{c} = {table}.{c} + excluded.{c}" for c in _ECONOMICS_COUNTS]
        if self._sqlite:
            money = [f"{c} = {_EXACT_ADD}({table}.{c}, excluded.{c})" for c in _ECONOMICS_MONEY]
        else:
            money = [f"{c} = {table}.{c} + excluded.{c}" for c in _ECONOMICS_MONEY]
        tail = f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {', '.join(counts + money)}"
        return columns, tail

    def _upsert_latencies(self, counts: dict[Any, int]) -> tuple[str, tuple[Any, ...]]:
        values = [
            (self._time(hour), model, le_ms, count)
            for (hour, model, le_ms), count in counts.items()
        ]
        return self._rows(
            "analytics_latency_hourly", (*_LATENCY_KEY, "count"), values, _LATENCY_TAIL
        )
