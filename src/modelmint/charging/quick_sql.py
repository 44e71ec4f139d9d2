"""The statements of a quick batch (``quick_settlement``), in either dialect.

A quick batch reads nothing: it adds its totals to the usage totals and its charges
to its wallet leases blindly, and looks for budgets, in the usage rows' transaction.
On SQLite these are a few statements sent with the insert, whose rows check the quick
batch's bet; on PostgreSQL one statement of data-modifying CTEs around the insert,
which checks the bet itself, so that the batch and its COMMIT take the one round trip
an unbilled batch takes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from modelmint.billing import Metric
from modelmint.billing.exact import Quantity
from modelmint.charging.settlement_sql import TOTAL_KEY, TOTAL_VALUES, totals_added
from modelmint.storage.batch import (
    EXACT_ADD,
    EXACT_ROOM,
    BatchSql,
    Statement,
    bet_checked,
    text_array,
)

__all__ = ["AddedTotal", "QuickSql"]

# What a quick batch adds to one usage total: organisation, period start, plan code,
# plan version, model, metric, then quantity, included, amount and charges added.
AddedTotal = tuple[str, datetime, str, int, str, Metric, Quantity, Quantity, Decimal, int]


class QuickSql:
    """Statement builders for quick batches in one dialect."""

    def __init__(self, sql: BatchSql) -> None:
        self._sql = sql

    @property
    def sqlite(self) -> bool:
        return self._sql.sqlite

    def statements(
        self,
        totals: Sequence[AddedTotal],
        pending: Sequence[tuple[str, Decimal]],
        organizations: Sequence[str],
        now: datetime,
    ) -> list[Statement]:
        """A quick batch's statements on SQLite: add ``totals`` to the usage totals, add
        each ``(lease, amount)`` to what the open wallet lease has pending where it has
        room for it, and look for the organisations' budgets. Their rows name each lease
        added to, and "#budget" if a budget exists. (On PostgreSQL see ``joined``.)"""
        sql = self._sql
        statements = [self._added(totals)]
        if pending:
            moment = sql.time(now)
            for lease_id, amount in pending:  # a batch names one or two leases
                value = f"{amount:f}"
                statements.append(
                    Statement(_QUICK_LEASE_SQLITE, (value, value, moment, lease_id, value))
                )
        where, params = sql.where_in("billing_budgets", ("organization_id",), _rows(organizations))
        statements.append(Statement(_BUDGET_PROBE_SQLITE + where + " LIMIT 1", params))
        return statements

    def joined(
        self,
        insert: Statement,
        events: int,
        totals: Sequence[AddedTotal],
        pending: Sequence[tuple[str, Decimal]],
        organizations: Sequence[str],
        now: datetime,
    ) -> Statement:
        """On PostgreSQL, what ``statements`` do and the usage rows' ``insert`` (``... RETURNING
        id``, of ``events`` rows) in one statement of data-modifying CTEs, which checks
        the bet itself (``storage.batch.bet_checked``): it fails unless every event was
        new, every lease added to and no budget found. Its rows are the ids inserted."""
        added = self._added(totals)
        params: list[Any] = [*insert.params, *added.params]
        if len(pending) == 1:
            shape = "one"
            [(lease_id, amount)] = pending
            value = f"{amount:f}"
            params += [value, value, now, lease_id, value, events, 1]
        elif pending:
            shape = "many"
            leases = [{"id": lease_id, "pending": f"{amount:f}"} for lease_id, amount in pending]
            params += [now, orjson.dumps(leases).decode(), events, len(pending)]
        else:
            shape = "none"
            params.append(events)
        params.append(text_array(organizations))
        return Statement(_quick_with_text(insert.sql, added.sql, shape), params)

    def _added(self, totals: Sequence[AddedTotal]) -> Statement:
        """The upsert adding ``totals`` to the usage totals, in either dialect. Quantities
        and amounts go as exact text: ExactDecimal's storage on SQLite, what NUMERIC reads
        exactly on PostgreSQL (where orjson then needs no hook for them)."""
        sql = self._sql
        rows = [
            (org, sql.time(start), code, version, model, metric,
             _text(quantity), _text(included), f"{amount:f}", charges)
            for org, start, code, version, model, metric, quantity, included, amount, charges
            in totals
        ]  # fmt: skip
        return sql.insert("billing_usage_totals", TOTAL_KEY + TOTAL_VALUES, rows, totals_added(sql))


def _text(quantity: int | Decimal) -> str:
    """A quantity as exact text."""
    return str(quantity) if type(quantity) is int else f"{quantity:f}"


# SQLite: a quick batch's addition to one lease's pending.
_QUICK_LEASE_SQLITE = (
    f"UPDATE billing_credit_leases SET pending = {EXACT_ADD}(pending, ?), "
    f"consumed = {EXACT_ADD}(consumed, ?), last_consumed_at = ? "
    f"WHERE id = ? AND closed_at IS NULL AND {EXACT_ROOM}(amount, pending, ?) "
    "RETURNING id"
)
# SQLite: "#budget" if one of the batch's organisations has a budget.
_BUDGET_PROBE_SQLITE = "SELECT '#budget' FROM billing_budgets WHERE "


def _rows(values: Sequence[str]) -> list[tuple[Any, ...]]:
    return [(v,) for v in values]


@functools.lru_cache(maxsize=8)
def _quick_with_text(insert: str, added: str, leases: str) -> str:
    """``QuickSql.joined``'s statement around the usage rows' ``insert`` and the totals'
    upsert ``added`` (built once per shape: the writer sends it for every paid batch).
    ``leases`` says how the batch's wallet leases are added to: "none", "one" (by its
    id: an index lookup, where a join with a record set builds a hash table for one
    row) or "many"."""
    # Every parameter is text (JSON, or an array's text form), a time or a count:
    # psycopg adapts those for a fraction of what a Python list costs it.
    ctes = [f"inserted AS ({insert})", f"added AS ({added})"]
    if leases == "one":
        ctes.append(
            "charged AS (UPDATE billing_credit_leases l SET pending = l.pending + %s::numeric, "
            "consumed = l.consumed + %s::numeric, last_consumed_at = %s "
            "WHERE l.id = %s AND l.closed_at IS NULL AND l.amount - l.pending >= %s::numeric "
            "RETURNING l.id)"
        )
    elif leases == "many":
        ctes.append(
            "charged AS (UPDATE billing_credit_leases l SET pending = l.pending + x.pending, "
            "consumed = l.consumed + x.pending, last_consumed_at = %s "
            "FROM jsonb_populate_recordset(NULL::billing_credit_leases, %s::jsonb) AS x "
            "WHERE l.id = x.id AND l.closed_at IS NULL AND l.amount - l.pending >= x.pending "
            "RETURNING l.id)"
        )
    # The bet: every event new, every lease open with room (its row updated), and no
    # budget to keep spend for. The totals (``added``, referenced nowhere) are added
    # after it is checked, as the general way adds them after the leases.
    condition = ["(SELECT count(*) FROM inserted) = %s"]
    if leases != "none":
        condition.append("(SELECT count(*) FROM charged) = %s")
    condition.append(
        "NOT EXISTS (SELECT FROM billing_budgets WHERE organization_id = ANY(%s::text[]))"
    )
    return bet_checked(ctes, " AND ".join(condition))
