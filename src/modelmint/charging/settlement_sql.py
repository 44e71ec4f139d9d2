"""The statements of a batch's settlement, and the rows they read back, in either dialect.

Quick batches need no reads: their statements are ``quick_sql``'s.

Other batches are settled in two round trips inside the metering writer's
transaction: ``reads`` (sent with the usage rows' insert) takes the locks and reads
what rating and settling need, in the one lock order every path uses:
organisations' rating locks, month spend rows, wallets, then leases and
reservations; the writes (sent with the rollups) store the results. Each read or
write is one statement for the whole batch. The rows come back as the typed records
below.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from modelmint.billing import Budget, Metric, Money, PlanRef
from modelmint.billing.rating import ChargedTotal, UsageKey, UsageTotal
from modelmint.billing.store.usage import USAGE_LOCK_SPACE
from modelmint.billing.wallet import CreditGrant, GrantKind
from modelmint.storage.batch import EXACT_ADD, EXACT_FLOOR0, BatchSql, Rows, Statement, read_decimal

__all__ = [
    "TOTAL_KEY",
    "TOTAL_VALUES",
    "BatchKeys",
    "BatchReads",
    "LeaseRow",
    "SettlementSql",
    "SpendRow",
    "WalletRow",
    "totals_added",
]


_WALLET_COLUMNS = (
    "id", "organization_id", "currency", "balance", "held", "leased", "last_sequence",
    "last_entry_at", "granted_total", "consumed_total", "expires_next", "grant_count",
    "reservation_count",
)  # fmt: skip
_GRANT_COLUMNS = (
    "wallet_id", "grant_id", "sequence", "kind", "amount", "priority", "granted_at",
    "expires_at", "remaining",
)  # fmt: skip
_LEASE_COLUMNS = (
    "id", "kind", "organization_id", "currency", "wallet_id", "api_key_id", "period_start",
    "amount", "pending", "consumed", "closed_at", "expires_at",
)  # fmt: skip
TOTAL_KEY = ("organization_id", "period_start", "plan_code", "plan_version", "model", "metric")
TOTAL_VALUES = ("quantity", "included", "amount", "charges")


@functools.lru_cache(maxsize=8)  # built once per writer: every paid batch sends it
def totals_added(sql: BatchSql) -> str:
    """The ON CONFLICT clause that adds an insert's values to the usage totals, exactly."""
    table = "billing_usage_totals"
    sets = [sql.add_exact(table, c) for c in ("quantity", "included", "amount")]
    sets.append(f"charges = {table}.charges + excluded.charges")
    return f"ON CONFLICT ({', '.join(TOTAL_KEY)}) DO UPDATE SET {', '.join(sets)}"


_SPEND_KEY = ("organization_id", "api_key_id", "period_start")
_LEDGER_COLUMNS = ("wallet_id", "sequence", "at", "kind", "grant_id", "amount", "reference")
_ALERT_COLUMNS = (
    "id", "organization_id", "api_key_id", "kind", "subject", "period_start", "threshold",
    "payload", "status", "attempts", "next_attempt_at", "created_at",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BatchKeys:
    """What a batch's settlement reads, named by the batch's events."""

    organizations: tuple[str, ...]  # sorted: the rating locks are taken in this order
    periods: tuple[tuple[str, datetime], ...]  # (organisation, period start) of usage totals
    spend: tuple[tuple[str, str, datetime], ...]  # (organisation, scope, month), sorted
    wallets: tuple[tuple[str, str], ...]  # (organisation, currency)
    reservations: tuple[tuple[str, str, str], ...]  # (organisation, currency, reservation)
    leases: tuple[str, ...]


@dataclass(slots=True)
class WalletRow:
    id: str
    organization_id: str
    currency: str
    balance: Decimal
    held: Decimal
    leased: Decimal
    last_sequence: int
    last_entry_at: datetime | None
    granted_total: Decimal
    consumed_total: Decimal
    expires_next: datetime | None
    grant_count: int
    reservation_count: int


@dataclass(slots=True)
class SpendRow:
    amount: Decimal
    held: Decimal
    leased: Decimal


@dataclass(slots=True)
class LeaseRow:
    id: str
    kind: str
    organization_id: str
    currency: str
    wallet_id: str | None
    scope: str
    period_start: datetime | None
    amount: Decimal  # what it still sets aside
    pending: Decimal  # consumed through it, not yet posted to the wallet's ledger
    consumed: Decimal
    open: bool
    expires_at: datetime | None
    changed: bool = False


@dataclass(slots=True)
class BatchReads:
    totals: dict[tuple[str, datetime], list[ChargedTotal]] = field(default_factory=dict)
    budgets: dict[str, dict[str, Budget]] = field(default_factory=dict)
    spend: dict[tuple[str, str, datetime], SpendRow] = field(default_factory=dict)
    wallets: dict[tuple[str, str], WalletRow] = field(default_factory=dict)
    grants: dict[str, list[tuple[CreditGrant, Decimal]]] = field(default_factory=dict)
    # (wallet id, reservation id) -> amount, for the per-request holds ended now
    holds: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    leases: dict[str, LeaseRow] = field(default_factory=dict)


class SettlementSql:
    def __init__(self, sql: BatchSql) -> None:
        self._sql = sql
        self.sqlite = sql.sqlite
        self._lock = "" if sql.sqlite else " FOR UPDATE"

    # -- reads ------------------------------------------------------------------------------

    def reads(self, keys: BatchKeys, now: datetime) -> list[Statement]:
        """The statements of the first round trip, in lock order; ``parse`` their rows."""
        sql, time = self._sql, self._sql.time
        statements = []
        if not sql.sqlite:  # SQLite: the transaction already holds the one write lock
            statements += [
                Statement("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (USAGE_LOCK_SPACE, org))
                for org in keys.organizations
            ]
        where, params = sql.where_in(
            "billing_usage_totals",
            ("organization_id", "period_start"),
            [(org, time(start)) for org, start in keys.periods],
        )
        statements.append(
            Statement(
                f"SELECT {', '.join(TOTAL_KEY + TOTAL_VALUES)} FROM billing_usage_totals "
                f"WHERE {where}",
                params,
            )
        )
        where, params = sql.where_in(
            "billing_budgets", ("organization_id",), [(org,) for org in keys.organizations]
        )
        statements.append(
            Statement(
                "SELECT organization_id, api_key_id, amount, currency, hard, thresholds "
                f"FROM billing_budgets WHERE {where}",
                params,
            )
        )
        where, params = sql.where_in(
            "billing_spend", _SPEND_KEY, [(o, s, time(m)) for o, s, m in keys.spend]
        )
        statements.append(
            Statement(
                "SELECT organization_id, api_key_id, period_start, amount, held, leased "
                f"FROM billing_spend WHERE {where} "
                f"ORDER BY organization_id, api_key_id, period_start{self._lock}",
                params,
            )
        )
        wallets = list(keys.wallets)
        where, params = sql.where_in(
            "billing_wallets", ("organization_id", "currency"), wallets, alias="w"
        )
        statements.append(
            Statement(
                f"SELECT {', '.join('w.' + c for c in _WALLET_COLUMNS)} FROM billing_wallets w "
                f"WHERE {where} ORDER BY w.id{self._lock}",
                params,
            )
        )
        nonzero = "CAST(g.remaining AS REAL) != 0" if sql.sqlite else "g.remaining <> 0"
        statements.append(
            Statement(
                f"SELECT {', '.join('g.' + c for c in _GRANT_COLUMNS)} "
                "FROM billing_credit_grants g JOIN billing_wallets w ON w.id = g.wallet_id "
                f"WHERE {where} AND {nonzero} ORDER BY g.wallet_id, g.sequence",
                params,
            )
        )
        statements.append(self._end_holds(keys.reservations, now))
        statements.append(self._leases(keys.leases))
        return statements

    def _end_holds(self, held: Sequence[tuple[str, str, str]], now: datetime) -> Statement:
        """Close the per-request holds of the batch's requests; returns those it closed
        (a sweep may have released some already)."""
        sql = self._sql
        if sql.sqlite:
            if not held:
                return Statement("SELECT NULL, NULL, NULL WHERE 0")
            rows = "(VALUES " + ", ".join(["(?, ?, ?)"] * len(held)) + ") x"
            org, currency, reservation = "column1", "column2", "column3"
            params: tuple[Any, ...] = (sql.time(now), *(v for row in held for v in row))
        else:
            rows = (
                "jsonb_to_recordset(%s::jsonb) "
                "AS x(organization_id text, currency text, reservation_id text)"
            )
            org, currency, reservation = "organization_id", "currency", "reservation_id"
            records = [
                {"organization_id": o, "currency": c, "reservation_id": r} for o, c, r in held
            ]
            params = (now, orjson.dumps(records).decode())
        return Statement(
            f"UPDATE billing_reservations SET closed_at = {sql.mark} "
            "WHERE closed_at IS NULL AND (wallet_id, reservation_id) IN ("
            f"SELECT w.id, x.{reservation} FROM {rows} JOIN billing_wallets w "
            f"ON w.organization_id = x.{org} AND w.currency = x.{currency}"
            ") RETURNING wallet_id, reservation_id, amount",
            params,
        )

    def _leases(self, ids: Sequence[str]) -> Statement:
        columns = ", ".join(_LEASE_COLUMNS)
        if self._sql.sqlite:
            marks = ", ".join(["?"] * len(ids)) or "NULL"
            return Statement(
                f"SELECT {columns} FROM billing_credit_leases WHERE id IN ({marks})", tuple(ids)
            )
        return Statement(
            f"SELECT {columns} FROM billing_credit_leases WHERE id = ANY(%s) "
            "ORDER BY id FOR UPDATE",
            (list(ids),),
        )

    def open_leases(self, wallet_id: str, ended_by: datetime) -> Statement:
        """A wallet's open leases that ended by ``ended_by`` (when credit is written off)."""
        mark = self._sql.mark
        return Statement(
            f"SELECT {', '.join(_LEASE_COLUMNS)} FROM billing_credit_leases "
            f"WHERE wallet_id = {mark} AND closed_at IS NULL AND expires_at <= {mark} "
            f"ORDER BY id{self._lock}",
            (wallet_id, self._sql.time(ended_by)),
        )

    def parse(self, results: Sequence[Rows], organizations: int) -> BatchReads:
        """The rows of ``reads``' statements (after the ``organizations`` lock statements)."""
        sql = self._sql
        rows = list(results[0 if sql.sqlite else organizations :])
        totals_rows, budget_rows, spend_rows, wallet_rows, grant_rows, hold_rows, lease_rows = rows
        reads = BatchReads()
        for org, start, code, version, model, metric_name, *sums in totals_rows:
            metric = Metric(metric_name)
            quantity, included, amount, charges = sums
            key = UsageKey(PlanRef(code, int(version)), model, metric)
            total = UsageTotal(
                key,
                _quantity(read_decimal(quantity), metric),
                _quantity(read_decimal(included), metric),
            )
            period = sql.read_time(start)
            assert period is not None
            reads.totals.setdefault((org, period), []).append(
                ChargedTotal(total, read_decimal(amount), int(charges))
            )
        for org, scope, amount, currency, hard, thresholds in budget_rows:
            levels = orjson.loads(thresholds) if isinstance(thresholds, str | bytes) else thresholds
            reads.budgets.setdefault(org, {})[scope] = Budget(
                Money(read_decimal(amount), currency), bool(hard), tuple(levels)
            )
        for org, scope, start, amount, held, leased in spend_rows:
            month = sql.read_time(start)
            assert month is not None
            reads.spend[(org, scope, month)] = SpendRow(
                read_decimal(amount), read_decimal(held), read_decimal(leased)
            )
        for columns in wallet_rows:
            wallet = WalletRow(*columns)
            for name in ("balance", "held", "leased", "granted_total", "consumed_total"):
                setattr(wallet, name, read_decimal(getattr(wallet, name)))
            wallet.last_entry_at = sql.read_time(wallet.last_entry_at)
            wallet.expires_next = sql.read_time(wallet.expires_next)
            reads.wallets[(wallet.organization_id, wallet.currency)] = wallet
        currencies = {w.id: w.currency for w in reads.wallets.values()}
        for (
            wallet_id,
            grant_id,
            sequence,
            kind,
            amount,
            priority,
            granted,
            expires,
            left,
        ) in grant_rows:
            remaining = read_decimal(left)
            if remaining <= 0:
                continue
            granted_at = sql.read_time(granted)
            assert granted_at is not None
            grant = CreditGrant(
                grant_id, GrantKind(kind), Money(read_decimal(amount), currencies[wallet_id]),
                int(priority), granted_at, sql.read_time(expires), int(sequence),
            )  # fmt: skip
            reads.grants.setdefault(wallet_id, []).append((grant, remaining))
        for wallet_id, reservation_id, amount in hold_rows:
            if wallet_id is not None:
                reads.holds[(wallet_id, reservation_id)] = read_decimal(amount)
        for lease_columns in lease_rows:
            reads.leases[lease_columns[0]] = self.lease(lease_columns)
        return reads

    def lease(self, values: Sequence[Any]) -> LeaseRow:
        lease_id, kind, org, currency, wallet_id, scope, start, *sums, closed, ends = values
        amount, pending, consumed = (read_decimal(v) for v in sums)
        return LeaseRow(
            lease_id, kind, org, currency, wallet_id, scope, self._sql.read_time(start),
            amount, pending, consumed, closed is None, self._sql.read_time(ends),
        )  # fmt: skip

    # -- writes -----------------------------------------------------------------------------

    def charges(self, charges: dict[str, Decimal]) -> Statement:
        sql = self._sql
        rows = [(event_id, sql.decimal(amount)) for event_id, amount in charges.items()]
        return sql.update("usage_records", ("id",), ("charge",), rows)

    def totals(
        self, organization_id: str, period_start: datetime, added: Iterable[ChargedTotal]
    ) -> Statement:
        """Add what the batch ``added`` to the usage totals. An addition, not the new
        values, though rating holds the organisation's lock: quick batches add to the
        same rows without it, and may create a row after this batch read it missing."""
        sql = self._sql
        rows = [
            (
                organization_id,
                sql.time(period_start),
                t.total.key.plan.code,
                t.total.key.plan.version,
                t.total.key.model,
                t.total.key.metric.value,
                sql.decimal(Decimal(t.total.quantity)),
                sql.decimal(Decimal(t.total.included)),
                sql.decimal(t.amount),
                t.charges,
            )
            for t in added
        ]
        return sql.insert("billing_usage_totals", TOTAL_KEY + TOTAL_VALUES, rows, totals_added(sql))

    def spend(self, changes: Sequence[tuple[str, str, datetime, str, SpendRow]]) -> Statement:
        """Add ``(organisation, scope, month, currency, delta)`` to the month spend rows,
        creating missing ones. Additive, because a row this batch did not lock (it did
        not exist when read) may meanwhile have been created by an admission's hold."""
        sql = self._sql
        rows = [
            (org, scope, sql.time(month), currency, sql.decimal(d.amount),
             sql.decimal(d.held), sql.decimal(d.leased))
            for org, scope, month, currency, d in changes
        ]  # fmt: skip
        if sql.sqlite:  # exact text decimals: the writer's registered functions add them
            add, floor0 = EXACT_ADD, EXACT_FLOOR0
            sets = (
                f"amount = {add}(billing_spend.amount, excluded.amount), "
                f"held = {floor0}({add}(billing_spend.held, excluded.held)), "
                f"leased = {floor0}({add}(billing_spend.leased, excluded.leased))"
            )
        else:
            sets = (
                "amount = billing_spend.amount + excluded.amount, "
                "held = GREATEST(billing_spend.held + excluded.held, 0), "
                "leased = GREATEST(billing_spend.leased + excluded.leased, 0)"
            )
        columns = (*_SPEND_KEY, "currency", "amount", "held", "leased")
        tail = f"ON CONFLICT ({', '.join(_SPEND_KEY)}) DO UPDATE SET {sets}"
        return sql.insert("billing_spend", columns, rows, tail)

    def wallets(self, rows: Sequence[WalletRow]) -> Statement:
        sql = self._sql
        columns = (
            "balance", "held", "leased", "last_sequence", "last_entry_at", "consumed_total",
            "expires_next",
        )  # fmt: skip
        values = [
            (
                w.id,
                sql.decimal(w.balance),
                sql.decimal(w.held),
                sql.decimal(w.leased),
                w.last_sequence,
                None if w.last_entry_at is None else sql.time(w.last_entry_at),
                sql.decimal(w.consumed_total),
                None if w.expires_next is None else sql.time(w.expires_next),
            )
            for w in rows
        ]
        return sql.update("billing_wallets", ("id",), columns, values)

    def ledger(self, rows: Rows) -> Statement:
        """New ledger entries: (wallet, sequence, at, kind, grant, amount, reference)."""
        sql = self._sql
        values = [
            (wallet, sequence, sql.time(at), kind, grant, sql.decimal(amount), reference)
            for wallet, sequence, at, kind, grant, amount, reference in rows
        ]
        return sql.insert("billing_ledger_entries", _LEDGER_COLUMNS, values)

    def grants(self, rows: Sequence[tuple[str, str, Decimal]]) -> Statement:
        sql = self._sql
        values = [(wallet, grant, sql.decimal(left)) for wallet, grant, left in rows]
        return sql.update(
            "billing_credit_grants", ("wallet_id", "grant_id"), ("remaining",), values
        )

    def leases(self, rows: Sequence[LeaseRow], now: datetime) -> Statement:
        sql = self._sql
        values = [
            (
                lease.id,
                sql.decimal(lease.amount),
                sql.decimal(lease.pending),
                sql.decimal(lease.consumed),
                None if lease.open else sql.time(now),
                sql.time(now),
            )
            for lease in rows
        ]
        columns = ("amount", "pending", "consumed", "closed_at", "last_consumed_at")
        return sql.update("billing_credit_leases", ("id",), columns, values)

    def alerts(self, rows: Sequence[dict[str, Any]]) -> Statement:
        """Raise alerts; an id raised before is skipped (returns the ids stored)."""
        sql = self._sql
        values = []
        for row in rows:
            payload: Any = row["payload"]
            values.append(
                (
                    row["id"],
                    row["organization_id"],
                    row["api_key_id"],
                    row["kind"],
                    row["subject"],
                    sql.time(row["period_start"]),
                    row["threshold"],
                    orjson.dumps(payload).decode() if sql.sqlite else payload,
                    "pending",
                    0,
                    sql.time(row["created_at"]),
                    sql.time(row["created_at"]),
                )
            )
        return sql.insert(
            "billing_alerts", _ALERT_COLUMNS, values, "ON CONFLICT (id) DO NOTHING RETURNING id"
        )


def _quantity(value: Decimal, metric: Metric) -> int | Decimal:
    # Whole-unit metrics are metered as ints; keep that type across a round trip.
    if not metric.fractional and value == value.to_integral_value():
        return int(value)
    return value
