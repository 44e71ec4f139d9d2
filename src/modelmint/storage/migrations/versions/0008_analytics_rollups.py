"""analytics rollups: usage, revenue and cost per hour, per day and per day in all; latency

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 04:36:56.437791

The new rollups are backfilled from the usage rows already stored, with the same
rules the metering writer applies from now on (``metering/rollups.py``; the bucket
bounds are copied here so this revision never changes meaning): hours and days in
UTC, answered = 2xx, embedding requests' input counted as embedding tokens, engine
time in whole microseconds, money summed exactly (NUMERIC in SQL on PostgreSQL,
Decimal in Python on SQLite, where the columns are text).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

# ``tables.ExactDecimal`` in DDL, spelled out (see 0003).
EXACT_DECIMAL = sa.Numeric().with_variant(sa.Text(), "sqlite")

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BUCKETS_MS = (
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 30_000, 60_000, 120_000,
)  # fmt: skip
_OVERFLOW_MS = 2**31 - 1
_KEY = ("organization_id", "model", "model_version_id", "deployment_id", "plan_code", "currency")
_COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "embedding_tokens",
    "engine_us",
    "latency_ms",
)
_MONEY = ("revenue", "cost")


def _key_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("plan_code", sa.String(length=100), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
    ]


def _measure_columns() -> list[sa.Column[Any]]:
    return [
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _COUNTS),
        *(sa.Column(name, EXACT_DECIMAL, nullable=False) for name in _MONEY),
    ]


def upgrade() -> None:
    op.create_table(
        "analytics_latency_hourly",
        sa.Column("hour", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("le_ms", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "model", "le_ms", name=op.f("pk_analytics_latency_hourly")),
    )
    for table, time_column in (
        ("analytics_usage_daily", "day"),
        ("analytics_usage_hourly", "hour"),
    ):
        op.create_table(
            table,
            sa.Column(
                time_column, modelmint.storage.types.UTCDateTime(timezone=True), nullable=False
            ),
            *_key_columns(),
            *_measure_columns(),
            sa.PrimaryKeyConstraint(time_column, *_KEY, name=op.f(f"pk_{table}")),
        )
    op.create_table(
        "analytics_usage_daily_totals",
        sa.Column("day", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *_measure_columns(),
        sa.PrimaryKeyConstraint("day", "currency", name=op.f("pk_analytics_usage_daily_totals")),
    )
    if op.get_bind().dialect.name == "postgresql":
        _backfill_in_sql()
    else:
        with localcontext() as context:
            context.prec = 400  # exact for any amount the columns hold
            _backfill_in_python()


# -- PostgreSQL: NUMERIC sums are exact in SQL ------------------------------------------------

_PG_MEASURES = """
    organization_id, model, COALESCE(model_version_id, ''), COALESCE(deployment_id, ''),
    COALESCE(plan_code, ''), COALESCE(currency, ''),
    SUM(CASE WHEN status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END),
    SUM(CASE WHEN status_code BETWEEN 200 AND 299 THEN 0 ELSE 1 END),
    SUM(CASE WHEN endpoint = 'embeddings' THEN 0 ELSE input_tokens END),
    SUM(output_tokens),
    SUM(CASE WHEN endpoint = 'embeddings' THEN input_tokens ELSE 0 END),
    SUM(ROUND(engine_ms * 1000)::bigint), SUM(latency_ms),
    COALESCE(SUM(charge), 0), COALESCE(SUM(cost), 0)
"""


def _backfill_in_sql() -> None:
    columns = ", ".join((*_KEY, *_COUNTS, *_MONEY))
    for table, unit in (("analytics_usage_hourly", "hour"), ("analytics_usage_daily", "day")):
        moment = f"date_trunc('{unit}', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        op.execute(
            f"INSERT INTO {table} ({unit}, {columns}) "
            f"SELECT {moment}, {_PG_MEASURES} FROM usage_records "
            f"GROUP BY 1, 2, 3, 4, 5, 6, 7"
        )
    measures = (*_COUNTS, *_MONEY)
    sums = ", ".join(f"SUM({name})" for name in measures)
    op.execute(
        f"INSERT INTO analytics_usage_daily_totals (day, currency, {', '.join(measures)}) "
        f"SELECT day, currency, {sums} FROM analytics_usage_daily GROUP BY day, currency"
    )
    bucket = " ".join(f"WHEN latency_ms <= {bound} THEN {bound}" for bound in _BUCKETS_MS)
    hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    op.execute(
        "INSERT INTO analytics_latency_hourly (hour, model, le_ms, count) "
        f"SELECT {hour}, model, CASE {bucket} ELSE {_OVERFLOW_MS} END, COUNT(*) "
        "FROM usage_records WHERE status_code BETWEEN 200 AND 299 GROUP BY 1, 2, 3"
    )


# -- SQLite: money is text, summed as Decimals -------------------------------------------------


def _bucket(latency_ms: int) -> int:
    for bound in _BUCKETS_MS:
        if latency_ms <= bound:
            return bound
    return _OVERFLOW_MS


def _backfill_in_python() -> None:
    bind = op.get_bind()
    hourly: dict[tuple[Any, ...], list[Any]] = {}
    latencies: dict[tuple[str, str, int], int] = defaultdict(int)
    rows = bind.execute(
        sa.text(
            "SELECT created_at, organization_id, model, model_version_id, deployment_id,"
            " plan_code, currency, status_code, endpoint, input_tokens, output_tokens,"
            " engine_ms, latency_ms, charge, cost FROM usage_records"
        )
    )
    for (created, org, model, version, deployment, plan, currency, status, endpoint,
         tokens_in, tokens_out, engine_ms, latency, charge, cost) in rows:  # fmt: skip
        # SQLite keeps UTC timestamps as "YYYY-MM-DD HH:MM:SS.ffffff".
        hour = f"{str(created)[:13]}:00:00.000000"
        key = (hour, org, model, version or "", deployment or "", plan or "", currency or "")
        sums = hourly.get(key)
        if sums is None:
            sums = hourly[key] = [0] * len(_COUNTS) + [Decimal(0), Decimal(0)]
        ok = 200 <= status < 300
        embedding = endpoint == "embeddings"
        for index, amount in enumerate(
            (
                1 if ok else 0,
                0 if ok else 1,
                0 if embedding else tokens_in,
                tokens_out,
                tokens_in if embedding else 0,
                round(engine_ms * 1000),
                latency,
            )
        ):
            sums[index] += amount
        sums[-2] += Decimal(str(charge)) if charge is not None else 0
        sums[-1] += Decimal(str(cost)) if cost is not None else 0
        if ok:
            latencies[(hour, model, _bucket(latency))] += 1
    daily: dict[tuple[Any, ...], list[Any]] = {}
    for (hour, *rest), sums in hourly.items():
        day_key = (f"{hour[:10]} 00:00:00.000000", *rest)
        total = daily.setdefault(day_key, [0] * len(_COUNTS) + [Decimal(0), Decimal(0)])
        for index, amount in enumerate(sums):
            total[index] += amount
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for (day, *rest), sums in daily.items():
        total = totals.setdefault((day, rest[-1]), [0] * len(_COUNTS) + [Decimal(0), Decimal(0)])
        for index, amount in enumerate(sums):
            total[index] += amount
    _insert(bind, "analytics_usage_hourly", ("hour", *_KEY), hourly)
    _insert(bind, "analytics_usage_daily", ("day", *_KEY), daily)
    _insert(bind, "analytics_usage_daily_totals", ("day", "currency"), totals)
    if latencies:
        bind.execute(
            sa.text(
                "INSERT INTO analytics_latency_hourly (hour, model, le_ms, count) "
                "VALUES (:hour, :model, :le_ms, :count)"
            ),
            [
                {"hour": hour, "model": model, "le_ms": le_ms, "count": count}
                for (hour, model, le_ms), count in latencies.items()
            ],
        )


def _insert(
    bind: Any, table: str, key: tuple[str, ...], rows: dict[tuple[Any, ...], list[Any]]
) -> None:
    if not rows:
        return
    names = (*key, *_COUNTS, *_MONEY)
    statement = sa.text(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"
    )
    values = []
    for key, sums in rows.items():
        money = [f"{amount:f}" for amount in sums[len(_COUNTS) :]]
        values.append(dict(zip(names, (*key, *sums[: len(_COUNTS)], *money), strict=True)))
    bind.execute(statement, values)


def downgrade() -> None:
    op.drop_table("analytics_usage_daily_totals")
    op.drop_table("analytics_usage_hourly")
    op.drop_table("analytics_usage_daily")
    op.drop_table("analytics_latency_hourly")
