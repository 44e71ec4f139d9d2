"""The usage writer's direct line to the database: one batch, one transaction.

The group-commit writer is the only thing on the request path that waits for the
database, so it skips the ORM and SQL compilation: it holds one connection and
sends hand-written statements, one per table per batch (``storage.batch``).
``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` names the rows actually
inserted, so a retried event is neither stored, rolled up nor charged twice.

Events on a plan are settled by the ``charging`` hook (``charging.Charger``) in the
same transaction. A quick batch (charges known before the insert) goes in one round
trip, like a batch without charges (``_in_one_trip``), betting that every event is
new. On PostgreSQL that trip carries the COMMIT too: the insert checks the bet in the
database and fails the transaction when it was lost. On SQLite, in process, the bet
is checked on the statements' rows; there the gain is that the statements are built
before the writer takes its turn at the one write lock (``storage.write_turn``), so
the other processes' writers wait only for the database's work. Any other batch (or
one whose bet was lost) takes two round trips and a commit: the usage rows' insert
with the settlement's locks and reads, then the settlement's writes, the charges and
the rollups (``_settled``).

Last, the analytics rollups (``rollups.economics_rows`` per hour and per day, daily
totals per currency, and the latency histogram) take the fresh events with their
charges. Their money columns are added exactly: NUMERIC + NUMERIC on PostgreSQL; on
SQLite, where ``ExactDecimal`` is text and SQL arithmetic would go through floats, by
``mm_exact_add`` (``storage.batch.EXACT_ADD``), a Python function registered on the
writer's connection that adds the two texts as Decimals (with ``mm_exact_floor0``,
which keeps one at least zero, and ``mm_exact_room``, which compares).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

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
from modelmint.observability.metrics import USAGE_BATCHES
from modelmint.storage.batch import (
    BET_LOST,
    COMMIT,
    EXACT_ADD,
    EXACT_FLOOR0,
    EXACT_ROOM,
    BatchSql,
    Rows,
    Statement,
    bet_checked,
    run,
)
from modelmint.storage.db import Database

__all__ = ["BatchCharges", "Charging", "QuickCharges", "UsageStore"]

log = logging.getLogger(__name__)


class QuickCharges(Protocol):
    """A batch whose charges are known before the insert (``QuickSettlement``)."""

    charges: dict[str, Decimal]
    statements: list[Statement]  # sent with the insert and the rollups

    def holds(self, results: Sequence[Rows]) -> bool:
        """Whether the bet the statements made held (their rows)."""
        ...

    def joined(self, insert: Statement, events: int) -> Statement | None:
        """The usage rows' ``insert`` (``... RETURNING id``, of ``events`` rows) and
        ``statements`` as one statement that fails (``storage.batch.BET_LOST``) unless
        the bet held, whose rows are the ids inserted; None when they are sent apart."""
        ...

    def committed(self, fresh: set[str], results: Sequence[Rows]) -> None: ...


class BatchCharges(Protocol):
    """A batch settled in two round trips (``BatchSettlement``)."""

    reads: list[Statement]  # sent with the usage rows' insert

    def settle(self, fresh: Sequence[UsageEvent], results: Sequence[Rows]) -> Any:
        """The charges (``.charges``) and writing statements (``.statements``) of the
        fresh events, from the rows ``reads`` returned."""
        ...

    def committed(self, fresh: set[str], results: Sequence[Rows]) -> None:
        """The batch committed; ``results`` are the rows of its writing statements."""
        ...


class Charging(Protocol):
    """Rates and settles what a batch's events cost (``charging.Charger``)."""

    def quick(
        self, sql: BatchSql, events: Sequence[UsageEvent], session: Callable[[], Session]
    ) -> QuickCharges | None: ...

    def begin(
        self, sql: BatchSql, events: Sequence[UsageEvent], session: Callable[[], Session]
    ) -> BatchCharges | None: ...

    def lost(self, events: Sequence[UsageEvent]) -> None:
        """The events could not be stored (their requests failed)."""
        ...


_USAGE_COLUMNS = (
    "charge",
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


@functools.lru_cache(maxsize=4)
def _checked_insert_text(insert: str) -> str:
    """On PostgreSQL, the usage rows' ``insert`` failing unless all of them were new
    (its one parameter more: their number)."""
    return bet_checked([f"inserted AS ({insert})"], "(SELECT count(*) FROM inserted) = %s")


def _first_of_each(events: list[UsageEvent], inserted: set[str]) -> list[UsageEvent]:
    """The events the insert stored (``inserted``, their ids, is used up): of a batch
    naming one id twice, only the first (the insert skips the second as a conflict with
    the first), so that it is neither rolled up nor charged twice."""
    fresh = []
    for event in events:
        if event.id in inserted:
            fresh.append(event)
            inserted.discard(event.id)
    return fresh


def _exact_add_text(left: str | None, right: str | None) -> str:
    total = EXACT.add(Decimal(left or 0), Decimal(right or 0))
    return f"{total:f}"


def _exact_floor0_text(value: str | None) -> str:
    number = Decimal(value or 0)
    return "0" if number < 0 else f"{number:f}"


def _exact_room(amount: str | None, pending: str | None, wanted: str | None) -> int:
    """1 if ``amount - pending >= wanted`` (a lease has room for a charge), else 0."""
    left = EXACT.subtract(Decimal(amount or 0), Decimal(pending or 0))
    return int(left >= Decimal(wanted or 0))


@dataclass(frozen=True, slots=True)
class _Trip:
    """A batch ready to go in one round trip: its ``statements``, the usage rows' insert
    first, then on SQLite the ``owned`` statements of its quick settlement (whose rows
    check the bet), then the rollups."""

    events: list[UsageEvent]
    ids: set[str]
    quick: QuickCharges | None
    statements: list[Statement]
    owned: int


class UsageStore:
    def __init__(self, database: Database, charging: Charging | None = None) -> None:
        self._db = database
        self._charging = charging
        self._sqlite = database.is_sqlite
        self._sql = BatchSql(sqlite=self._sqlite)
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
        """Insert the events, and charge and add up the new ones, in one transaction.

        Returns how many were new. On any error the transaction is rolled back and the
        connection replaced, so a database that went away is reconnected to next time.
        """
        connection = self._connect()
        try:
            # The transaction's SQLAlchemy side only: no statement has been sent, so no
            # SQLite lock is taken until the turn below (a plan's first load reads
            # outside any transaction there).
            connection.begin()
            trip = self._one_trip(connection, events)
        except BaseException:
            self._discard()
            raise
        # The turn is held only while the database works: a one-trip batch's statements
        # were built before it, so the other processes' writers do not wait on this
        # one's Python (nor on this process's event loop, for the GIL).
        with self._db.write_turn():
            fresh, done = self._commit(connection, events, trip)
        if done is not None:
            done()
        return len(fresh)

    def _commit(
        self, connection: Connection, events: list[UsageEvent], trip: _Trip | None
    ) -> tuple[list[UsageEvent], Callable[[], None] | None]:
        try:
            fresh: list[UsageEvent] | None = None
            done: Callable[[], None] | None = None
            way = "two_trips"
            if trip is not None:
                fresh, done = self._in_one_trip(connection, trip)
                way = "one_trip" if fresh is not None else "retried"
            if fresh is None:
                fresh, done = self._settled(connection, events)
            connection.commit()
        except BaseException:
            self._discard()
            raise
        USAGE_BATCHES.labels(way).inc()
        return fresh, done

    def lost(self, events: Sequence[UsageEvent]) -> None:
        """The events finally failed to be stored (their requests were answered 503)."""
        if self._charging is not None:
            self._charging.lost(events)

    def _one_trip(self, connection: Connection, events: list[UsageEvent]) -> _Trip | None:
        """The batch's statements for one round trip (``_in_one_trip``), betting that
        every event is new, or None when it must go the general way: a paid batch that
        is not quick, or a batch naming one event twice (only one of them can be new).
        On SQLite there is no round trip to save, but the statements are built before
        the write turn and sent in one go under it."""
        quick = None
        if self._charges_due(events):
            assert self._charging is not None
            quick = self._charging.quick(self._sql, events, lambda: Session(bind=connection))
            if quick is None:
                return None
        ids = {event.id for event in events}
        if len(ids) < len(events):
            return None
        charges = quick.charges if quick else {}
        insert = self._insert_usage(events, charges)
        sums = self._sums(events, charges)
        if self._sqlite:
            owned = quick.statements if quick else []
            return _Trip(events, ids, quick, [insert, *owned, *sums], len(owned))
        joined = quick.joined(insert, len(events)) if quick else None
        if joined is None:
            joined = Statement(_checked_insert_text(insert.sql), (*insert.params, len(events)))
        return _Trip(events, ids, quick, [joined, *sums, COMMIT], 0)

    def _in_one_trip(
        self, connection: Connection, trip: _Trip
    ) -> tuple[list[UsageEvent] | None, Callable[[], None] | None]:
        """A batch whose charges are known (none, or ``trip.quick``'s) in one round trip
        (psycopg's pipeline mode), betting that every event is new, as all but retried
        ones are, and on what ``quick`` bets.

        Waiting for each of six statements cost ~0.2 ms apiece here, more than the
        commit. On PostgreSQL the insert checks the bet itself (``mm_batch_bet``) and
        the COMMIT goes in the same round trip: 0.05-0.14 ms less a batch at c1 on a
        2-vCPU machine. When a bet is lost the transaction is rolled back and (None,
        None) returned, for ``_settled`` to do it again the general way.
        """
        # The DBAPI connection itself: SQLAlchemy's result wrapper cost more per row than
        # the database's work on this hot path. The transaction was begun through
        # SQLAlchemy, so that ``connection.commit()`` commits it.
        raw: Any = connection.connection.driver_connection
        quick = trip.quick
        written: list[Rows] = []  # the quick settlement's rows (SQLite only)
        if self._sqlite:
            # In process: the bet is checked on the statements' rows, before the commit.
            results = run(raw, True, trip.statements)
            written = results[1 : 1 + trip.owned]
            all_new = {row[0] for row in results[0]} == trip.ids
            if not all_new or (quick is not None and not quick.holds(written)):
                return self._bet_lost(connection)
        else:
            try:
                run(raw, False, trip.statements)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) != BET_LOST:
                    raise
                return self._bet_lost(connection)
        if quick is None:
            return trip.events, None
        return trip.events, lambda: quick.committed(trip.ids, written)

    @staticmethod
    def _bet_lost(connection: Connection) -> tuple[None, None]:
        connection.rollback()
        connection.begin()
        return None, None

    def _settled(
        self, connection: Connection, events: list[UsageEvent]
    ) -> tuple[list[UsageEvent], Callable[[], None] | None]:
        """Insert, learn which events are new, then charge and add up only those.

        Two round trips: the insert with the settlement's locks and reads, then every
        write. Returns the new events and what to tell charging once committed."""
        raw: Any = connection.connection.driver_connection
        batch = None
        if self._charges_due(events):
            assert self._charging is not None
            batch = self._charging.begin(self._sql, events, lambda: Session(bind=connection))
        reads = [self._insert_usage(events, {}), *(batch.reads if batch else ())]
        results = run(raw, self._sqlite, reads)
        fresh = _first_of_each(events, {row[0] for row in results[0]})
        if not fresh:
            return fresh, (lambda: batch.committed(set(), [])) if batch else None
        charges: dict[str, Decimal] = {}
        writes: list[Statement] = []
        if batch is not None:
            settled = batch.settle(fresh, results[1:])
            charges = settled.charges
            writes = list(settled.statements)
        owned = len(writes)
        writes += self._sums(fresh, charges)
        written = run(raw, self._sqlite, writes)
        if batch is None:
            return fresh, None
        ids = {event.id for event in fresh}
        return fresh, lambda: batch.committed(ids, written[:owned])

    def _charges_due(self, events: list[UsageEvent]) -> bool:
        return self._charging is not None and any(e.plan_code is not None for e in events)

    def _sums(self, fresh: list[UsageEvent], charges: dict[str, Decimal]) -> list[Statement]:
        """The upserts adding the fresh events to the hourly rollups and, charged, to
        the analytics rollups. Refused requests are in neither: they used nothing."""
        if any(event.refused for event in fresh):
            fresh = [event for event in fresh if not event.refused]
        return [self._upsert_rollups(rollup_rows(fresh)), *self._economics_upserts(fresh, charges)]

    def _economics_upserts(
        self, fresh: list[UsageEvent], charges: dict[str, Decimal]
    ) -> list[Statement]:
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
            if self._sqlite and not pooled.info.get(EXACT_ADD):
                raw: Any = pooled.driver_connection
                raw.create_function(EXACT_ADD, 2, _exact_add_text, deterministic=True)
                raw.create_function(EXACT_FLOOR0, 1, _exact_floor0_text, deterministic=True)
                raw.create_function(EXACT_ROOM, 3, _exact_room, deterministic=True)
                pooled.info[EXACT_ADD] = True
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

    def _insert_usage(self, events: list[UsageEvent], charges: dict[str, Decimal]) -> Statement:
        """The usage rows, with their charges when already known (else set later)."""
        decimal = self._sql.decimal
        rows = [
            (None if (c := charges.get(e.id)) is None else decimal(c), *self._usage_row(e))
            for e in events
        ]
        return self._sql.insert(
            "usage_records", _USAGE_COLUMNS, rows, "ON CONFLICT (id) DO NOTHING RETURNING id"
        )

    def _usage_row(self, e: UsageEvent) -> tuple[Any, ...]:
        """An event's values in ``_USAGE_COLUMNS`` order."""
        time, decimal = self._sql.time, self._sql.decimal
        return (
            e.id, time(e.created_at), e.organization_id, e.api_key_id, e.model,
            e.deployment_id, e.model_version_id, e.endpoint, e.status_code,
            e.input_tokens, e.output_tokens, e.latency_ms, e.streamed, e.usage_estimated,
            e.finish_reason, e.engine_ms, e.plan_code, e.plan_version, e.currency,
            None if e.cost is None else decimal(e.cost),
        )  # fmt: skip

    def _upsert_rollups(self, rows: list[dict[str, Any]]) -> Statement:
        time = self._sql.time
        values = [(time(row["hour"]), *(row[c] for c in _ROLLUP_COLUMNS[1:])) for row in rows]
        return self._sql.insert("usage_rollups_hourly", _ROLLUP_COLUMNS, values, _ROLLUP_TAIL)

    def _upsert_economics(
        self,
        table: str,
        time_column: str,
        rows: Mapping[tuple[Any, ...], EconomicsSums],
        key_columns: tuple[str, ...] = _ECONOMICS_KEY,
    ) -> Statement:
        """An upsert adding ``rows`` (keyed by the hour or day, then ``key_columns``'
        values) to an analytics table."""
        values = [self._economics_row(moment, key, sums) for (moment, *key), sums in rows.items()]
        columns, tail = self._economics_shape(table, time_column, key_columns)
        return self._sql.insert(table, columns, values, tail)

    def _economics_row(
        self, moment: datetime, key: list[Any], sums: EconomicsSums
    ) -> tuple[Any, ...]:
        decimal = self._sql.decimal
        return (
            self._sql.time(moment), *key, sums.requests, sums.errors, sums.input_tokens,
            sums.output_tokens, sums.embedding_tokens, sums.engine_us, sums.latency_ms,
            decimal(sums.revenue), decimal(sums.cost),
        )  # fmt: skip

    @functools.lru_cache(maxsize=8)  # noqa: B019 - one store per writer, three tables
    def _economics_shape(
        self, table: str, time_column: str, key_columns: tuple[str, ...]
    ) -> tuple[tuple[str, ...], str]:
        """An analytics table's inserted columns and its ON CONFLICT clause."""
        conflict = (time_column, *key_columns)
        columns = (*conflict, *_ECONOMICS_COUNTS, *_ECONOMICS_MONEY)
        counts = [f"{c} = {table}.{c} + excluded.{c}" for c in _ECONOMICS_COUNTS]
        money = [self._sql.add_exact(table, c) for c in _ECONOMICS_MONEY]
        tail = f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {', '.join(counts + money)}"
        return columns, tail

    def _upsert_latencies(self, counts: dict[Any, int]) -> Statement:
        time = self._sql.time
        values = [
            (time(hour), model, le_ms, count) for (hour, model, le_ms), count in counts.items()
        ]
        return self._sql.insert(
            "analytics_latency_hourly", (*_LATENCY_KEY, "count"), values, _LATENCY_TAIL
        )
