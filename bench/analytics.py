"""Analytics overview over 10M usage events: the rollups against the raw rows.

    make bench-analytics                       (or: .venv/bin/python -m bench.analytics)
    .venv/bin/python -m bench.analytics --postgres        # PostgreSQL instead of SQLite
    .venv/bin/python -m bench.analytics --events 1000000  # a quicker run

Generates a month (October 2026) of usage directly in a benchmark database (this is
a benchmark: rows are written straight to the tables, with ``executemany`` on SQLite
and ``COPY`` on PostgreSQL): 200 organisations on the demo plans, four deployments
(two versions of a local chat model, an embedder, a remote upstream), a day curve,
failures. Charges and serving costs are exact decimals (whole multiples of 10^-12),
and the analytics rollups (hourly, daily, latency histogram) are summed from the
same generated arrays, as the metering writer would have kept them.

Then times ``analytics.overview`` for the month (totals, 31 daily rows, MRR) over the
rollups, and the same overview computed from ``usage_records`` (the same SQL shape,
exact money sums), checks both give the same figures, and prints

    analytics_overview_ms_rollups: X     (median of 5 after a warm-up; target < 300)
    analytics_overview_ms_raw: Y         (median of 3; one run beyond 2M events)
    analytics_overview_speedup: Y / X

The database is written under var/bench (SQLite) or as a fresh database on the
PostgreSQL server of MODELMINT_TEST_POSTGRES_URL, and kept for a re-run with
``--reuse``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Index, case, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench.common import BENCH_HOME, say
from modelmint import accounts
from modelmint.analytics import Overview, overview
from modelmint.analytics.fees import accrue, fee_spans
from modelmint.analytics.money_sql import exact_sum, prepare
from modelmint.analytics.recurring import USAGE_RUN_RATE_DAYS
from modelmint.billing.exact import exact_sum as decimal_sum
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.demo.billing import demo_plans
from modelmint.metering.rollups import LATENCY_BUCKETS_MS, LATENCY_OVERFLOW_MS
from modelmint.storage import Database, migrate
from modelmint.storage.tables import (
    AnalyticsLatencyHourly,
    AnalyticsUsageDaily,
    AnalyticsUsageDailyTotal,
    AnalyticsUsageHourly,
    Deployment,
    ModelVersion,
    RegisteredModel,
    UsageRecord,
)

MONTH = Period.month(2026, 10)
HOURS = int(MONTH.duration / timedelta(hours=1))
SCALE = 12  # money in whole units of 10^-12
CHUNK = 500_000
POSTGRES_URL = os.environ.get(
    "MODELMINT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class Deploy:
    id: str
    model: str
    version: int
    endpoint: str
    share: float
    per_us: int  # serving cost per engine microsecond, 10^-12 units (0.90/h = 250)
    per_in: int  # serving cost per input token, 10^-12 units
    per_out: int
    price_in: int  # price per input (or embedding) token, 10^-12 units
    price_out: int


CHAT, EMBED, REMOTE = "smollm2-135m-instruct", "all-minilm-l6-v2", "remote-chat"
TEXT, EMBEDDINGS = "chat.completions", "embeddings"
DEPLOYS = (
    Deploy("dep_chat_v1", CHAT, 1, TEXT, 0.30, 250, 0, 0, 150_000, 600_000),
    Deploy("dep_chat_v2", CHAT, 2, TEXT, 0.10, 500, 0, 0, 150_000, 600_000),
    Deploy("dep_embed", EMBED, 1, EMBEDDINGS, 0.45, 100, 0, 0, 20_000, 0),
    Deploy("dep_remote", REMOTE, 1, TEXT, 0.15, 0, 400_000, 1_600_000, 500_000, 1_500_000),
)
# Plan of organisation i: charged per token (starter, payg), flat (enterprise), capped
# (free) or none; the last two pay nothing per request.
PLANS = ("starter", "payg", "enterprise", "free", None)
PLAN_WEIGHTS = (0.35, 0.3, 0.1, 0.15, 0.1)
COLUMNS = (
    "id", "created_at", "organization_id", "api_key_id", "model", "deployment_id",
    "model_version_id", "endpoint", "status_code", "input_tokens", "output_tokens", "latency_ms",
    "streamed", "usage_estimated", "finish_reason", "engine_ms", "plan_code", "plan_version",
    "charge", "currency", "cost",
)  # fmt: skip
MEASURES = ("requests", "errors", "input_tokens", "output_tokens", "embedding_tokens",
            "engine_us", "latency_ms", "revenue", "cost")  # fmt: skip


def _money(units: int) -> Decimal:
    return Decimal(units).scaleb(-SCALE)


# -- the world: organisations, plans, deployments ---------------------------------------------


def _seed(
    database: Database, organizations: int, rng: np.random.Generator
) -> list[tuple[str, str | None]]:
    """Organisations (id, plan code) with their subscriptions, and the deployments."""
    plans = rng.choice(len(PLANS), size=organizations, p=PLAN_WEIGHTS)
    orgs: list[tuple[str, str | None]] = []
    with database.session() as session:
        store = BillingStore(session)
        published = {plan.code: store.plans.publish_plan(plan) for plan in demo_plans()}
        for index in range(organizations):
            org = accounts.create_org(session, f"bench-{index:04d}")
            code = PLANS[plans[index]]
            if code is not None:
                store.subscriptions.subscribe(
                    org.id, published[code].ref, datetime(2026, 9, 1, tzinfo=UTC)
                )
            orgs.append((org.id, code))
        for n, deploy in enumerate(DEPLOYS):
            model_id = f"rm_{deploy.model}"
            if session.get(RegisteredModel, model_id) is None:
                session.add(RegisteredModel(id=model_id, name=deploy.model, task="chat"))
                session.flush()
            session.add(ModelVersion(id=f"mv_{n}", model_id=model_id, version=deploy.version,
                                     format="gguf", artifact_uri="-"))  # fmt: skip
            session.flush()
            per_hour = _money(deploy.per_us * 3_600_000_000) if deploy.per_us else None
            session.add(
                Deployment(
                    id=deploy.id, public_name=deploy.model, model_version_id=f"mv_{n}",
                    backend="bench", cost_per_hour=per_hour,
                    created_at=datetime(2026, 9, 1, tzinfo=UTC),
                )
            )  # fmt: skip
    return orgs


# -- generated usage ---------------------------------------------------------------------------


@dataclass
class Chunk:
    hour: NDArray[np.int64]
    micros: NDArray[np.int64]  # within the hour
    org: NDArray[np.int64]
    deploy: NDArray[np.int64]
    status: NDArray[np.int64]
    tokens_in: NDArray[np.int64]
    tokens_out: NDArray[np.int64]
    latency: NDArray[np.int64]
    engine_us: NDArray[np.int64]
    charge: NDArray[np.int64]  # 10^-12 units; billed rows only
    cost: NDArray[np.int64]


def _chunk(
    rng: np.random.Generator, size: int, org_weights: NDArray[np.float64], billed: NDArray[np.bool_]
) -> Chunk:
    day_curve = 0.25 + np.exp(-(((np.arange(24) - 15) / 4.5) ** 2))
    hour_weights = np.tile(day_curve, HOURS // 24)
    hour = rng.choice(HOURS, size=size, p=hour_weights / hour_weights.sum())
    org = rng.choice(len(org_weights), size=size, p=org_weights)
    deploy = rng.choice(len(DEPLOYS), size=size, p=[d.share for d in DEPLOYS])
    status = rng.choice(np.array([200, 400, 429, 500]), size=size, p=[0.97, 0.01, 0.01, 0.01])
    ok = status == 200
    embedding = np.array([d.endpoint == "embeddings" for d in DEPLOYS])[deploy]
    tokens_in = np.where(ok, rng.lognormal(5.0, 1.0, size).astype(np.int64) + 1, 0)
    tokens_out = np.where(ok & ~embedding, rng.integers(1, 300, size), 0)
    engine_us = np.where(ok, rng.integers(2_000, 3_000_000, size), 0)
    latency = (engine_us // 1000 + rng.integers(1, 40, size)).astype(np.int64)
    table = np.array([(d.per_us, d.per_in, d.per_out, d.price_in, d.price_out) for d in DEPLOYS])
    rates = table[deploy]
    cost = engine_us * rates[:, 0] + tokens_in * rates[:, 1] + tokens_out * rates[:, 2]
    charge = np.where(billed[org], tokens_in * rates[:, 3] + tokens_out * rates[:, 4], 0)
    micros = rng.integers(0, 3_600_000_000, size)
    return Chunk(
        hour, micros, org, deploy, status, tokens_in, tokens_out, latency, engine_us, charge, cost
    )


def _timestamps(chunk: Chunk, postgres: bool) -> list[str]:
    base = np.datetime64(MONTH.start.replace(tzinfo=None), "us")
    moments = base + (chunk.hour * 3_600_000_000 + chunk.micros).astype("timedelta64[us]")
    texts = np.char.replace(np.datetime_as_string(moments, unit="us"), "T", " ")
    return [t + "+00" for t in texts.tolist()] if postgres else texts.tolist()


def _decimal_texts(units: NDArray[np.int64]) -> NDArray[np.str_]:
    """Whole units of 10^-12 as exact plain decimal texts, vectorised ("0.000000150000")."""
    whole = (units // 10**SCALE).astype(str)
    fraction = np.char.zfill((units % 10**SCALE).astype(str), SCALE)
    return np.char.add(np.char.add(whole, "."), fraction)


def _rows(
    chunk: Chunk, start: int, orgs: list[tuple[str, str | None]], postgres: bool
) -> Iterator[tuple[Any, ...]]:
    """The chunk as usage_records rows, built column by column (a row at a time in Python
    would be the slowest part of the benchmark)."""
    size = len(chunk.org)
    org_ids = np.array([org for org, _ in orgs])[chunk.org]
    plans = np.array([plan or "" for _, plan in orgs])[chunk.org]
    billed = plans != ""
    ok = chunk.status == 200
    none = np.array([None] * size, dtype=object)

    def where(mask: NDArray[np.bool_], values: NDArray[Any]) -> list[Any]:
        return np.where(mask, values.astype(object), none).tolist()

    columns = [
        np.char.add("b", np.char.zfill(np.arange(start, start + size).astype(str), 10)).tolist(),
        _timestamps(chunk, postgres),
        org_ids.tolist(),
        np.char.add("key_", chunk.org.astype(str)).tolist(),
        np.array([d.model for d in DEPLOYS])[chunk.deploy].tolist(),
        np.array([d.id for d in DEPLOYS])[chunk.deploy].tolist(),
        np.char.add("mv_", chunk.deploy.astype(str)).tolist(),
        np.array([d.endpoint for d in DEPLOYS])[chunk.deploy].tolist(),
        chunk.status.tolist(),
        chunk.tokens_in.tolist(),
        chunk.tokens_out.tolist(),
        chunk.latency.tolist(),
        repeat(False, size),
        repeat(False, size),
        repeat(None, size),
        (chunk.engine_us / 1000).tolist(),
        where(billed, plans),
        where(billed, np.ones(size, dtype=np.int64)),
        where(billed, _decimal_texts(chunk.charge)),
        where(billed, np.full(size, "USD")),
        where(ok, _decimal_texts(chunk.cost)),
    ]
    return zip(*columns, strict=True)


# -- rollups summed from the same arrays --------------------------------------------------------


class Rollups:
    """Dense sums per (hour, organisation, deployment), and the latency histogram."""

    def __init__(self, organizations: int) -> None:
        shape = (HOURS, organizations, len(DEPLOYS))
        self.sums = {name: np.zeros(shape, dtype=np.int64) for name in MEASURES}
        self.bounds = np.array([*LATENCY_BUCKETS_MS, LATENCY_OVERFLOW_MS])
        models = sorted({d.model for d in DEPLOYS})
        self.models = models
        self.model_of = np.array([models.index(d.model) for d in DEPLOYS])
        self.latency = np.zeros((HOURS, len(models), len(self.bounds)), dtype=np.int64)

    def add(self, c: Chunk) -> None:
        at = (c.hour, c.org, c.deploy)
        ok = c.status == 200
        embedding = np.array([d.endpoint == "embeddings" for d in DEPLOYS])[c.deploy]
        values = {
            "requests": ok.astype(np.int64), "errors": (~ok).astype(np.int64),
            "input_tokens": np.where(embedding, 0, c.tokens_in), "output_tokens": c.tokens_out,
            "embedding_tokens": np.where(embedding, c.tokens_in, 0), "engine_us": c.engine_us,
            "latency_ms": c.latency, "revenue": c.charge, "cost": c.cost,
        }  # fmt: skip
        for name, value in values.items():
            np.add.at(self.sums[name], at, value)
        bucket = np.searchsorted(self.bounds, c.latency, side="left")
        np.add.at(self.latency, (c.hour[ok], self.model_of[c.deploy[ok]], bucket[ok]), 1)

    def rows(self, orgs: list[tuple[str, str | None]], daily: bool) -> Iterator[tuple[Any, ...]]:
        sums = self.sums
        if daily:
            sums = {
                k: v.reshape(HOURS // 24, 24, *v.shape[1:]).sum(axis=1) for k, v in sums.items()
            }
        step = timedelta(days=1) if daily else timedelta(hours=1)
        touched = np.argwhere((sums["requests"] + sums["errors"]) > 0)
        for t, org, deploy in touched.tolist():
            org_id, plan = orgs[org]
            d = DEPLOYS[deploy]
            cell = [int(sums[name][t, org, deploy]) for name in MEASURES]
            yield (
                MONTH.start + t * step, org_id, d.model, f"mv_{deploy}", d.id, plan or "",
                "USD" if plan else "", *cell[:7], _money(cell[7]), _money(cell[8]),
            )  # fmt: skip

    def total_rows(self, orgs: list[tuple[str, str | None]]) -> Iterator[tuple[Any, ...]]:
        """Per day and currency ("USD" for organisations on a plan, "" for the others)."""
        billed = np.array([plan is not None for _, plan in orgs])
        for currency, members in (("USD", billed), ("", ~billed)):
            cells = {
                name: v[:, members, :].sum(axis=(1, 2)).reshape(HOURS // 24, 24).sum(axis=1)
                for name, v in self.sums.items()
            }
            for day in range(HOURS // 24):
                cell = [int(cells[name][day]) for name in MEASURES]
                if cell[0] or cell[1]:
                    yield (MONTH.start + timedelta(days=day), currency, *cell[:7],
                           _money(cell[7]), _money(cell[8]))  # fmt: skip

    def latency_rows(self) -> Iterator[tuple[Any, ...]]:
        for hour, model, bucket in np.argwhere(self.latency > 0).tolist():
            at = MONTH.start + timedelta(hours=hour)
            count = int(self.latency[hour, model, bucket])
            yield (at, self.models[model], int(self.bounds[bucket]), count)


# -- writing -------------------------------------------------------------------------------------


def _usage_indexes() -> list[Index]:
    return list(UsageRecord.__table__.indexes)  # type: ignore[attr-defined]


def _write_sqlite(database: Database, rows: Iterator[tuple[Any, ...]]) -> None:
    sql = (
        f"INSERT INTO usage_records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    )
    raw = database.engine.raw_connection()
    try:
        raw.execute("PRAGMA synchronous=OFF")  # type: ignore[attr-defined]
        raw.cursor().executemany(sql, rows)
        raw.commit()
    finally:
        raw.close()


def _write_postgres(database: Database, rows: Iterator[tuple[Any, ...]]) -> None:
    raw = database.engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY usage_records ({', '.join(COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def _insert_rollups(
    database: Database, rollups: Rollups, orgs: list[tuple[str, str | None]]
) -> int:
    key = ("organization_id", "model", "model_version_id", "deployment_id", "plan_code", "currency")
    written = 0
    with database.session() as session:
        for table, time_column, daily in (
            (AnalyticsUsageHourly, "hour", False),
            (AnalyticsUsageDaily, "day", True),
        ):
            names = (time_column, *key, *MEASURES)
            batch: list[dict[str, Any]] = []
            for row in rollups.rows(orgs, daily):
                batch.append(dict(zip(names, row, strict=True)))
                if len(batch) == 20_000:
                    session.execute(table.__table__.insert(), batch)  # type: ignore[attr-defined]
                    written += len(batch)
                    batch = []
            if batch:
                session.execute(table.__table__.insert(), batch)  # type: ignore[attr-defined]
                written += len(batch)
        names = ("day", "currency", *MEASURES)
        totals = [dict(zip(names, r, strict=True)) for r in rollups.total_rows(orgs)]
        session.execute(AnalyticsUsageDailyTotal.__table__.insert(), totals)  # type: ignore[attr-defined]
        written += len(totals)
        latency = [
            dict(zip(("hour", "model", "le_ms", "count"), r, strict=True))
            for r in rollups.latency_rows()
        ]
        session.execute(AnalyticsLatencyHourly.__table__.insert(), latency)  # type: ignore[attr-defined]
    return written


def generate(database: Database, events: int, organizations: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    orgs = _seed(database, organizations, rng)
    weights = rng.zipf(1.6, organizations).astype(np.float64)
    weights = np.minimum(weights, np.percentile(weights, 98)) + 1
    weights /= weights.sum()
    billed = np.array([plan is not None for _, plan in orgs])
    rollups = Rollups(organizations)
    postgres = not database.is_sqlite
    with database.engine.begin() as connection:
        for index in _usage_indexes():
            index.drop(connection)
    started = time.perf_counter()
    done = 0
    while done < events:
        size = min(CHUNK, events - done)
        chunk = _chunk(rng, size, weights, billed)
        rollups.add(chunk)
        rows = _rows(chunk, done, orgs, postgres)
        (_write_postgres if postgres else _write_sqlite)(database, rows)
        done += size
        rate = done / (time.perf_counter() - started)
        say(f"{done:,} usage rows written ({rate:,.0f}/s)")
    say("indexing usage_records")
    with database.engine.begin() as connection:
        for index in _usage_indexes():
            index.create(connection)
    say(f"{_insert_rollups(database, rollups, orgs):,} rollup rows written")
    with database.engine.begin() as connection:
        connection.execute(text("ANALYZE"))


# -- the same overview, from raw rows -------------------------------------------------------------


def _day_expression(session: Session) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return func.substr(UsageRecord.created_at, 1, 10)
    return func.date(func.timezone("UTC", UsageRecord.created_at))


def raw_overview(session: Session, period: Period) -> dict[str, Any]:
    """The overview's figures (per day, the month's fees, MRR) straight from usage_records."""
    prepare(session)
    u = UsageRecord
    ok = u.status_code.between(200, 299)
    embedding = u.endpoint == "embeddings"
    day = _day_expression(session)
    query = (
        select(
            day,
            func.sum(case((ok, 1), else_=0)), func.sum(case((ok, 0), else_=1)),
            func.sum(case((embedding, 0), else_=u.input_tokens)), func.sum(u.output_tokens),
            func.sum(case((embedding, u.input_tokens), else_=0)),
            func.sum(func.round(u.engine_ms * 1000)), func.sum(u.latency_ms),
            exact_sum(u.charge), exact_sum(u.cost),
        )
        .where(u.created_at >= period.start, u.created_at < period.end)
        .where(u.currency.is_(None) | (u.currency == "USD"))
        .group_by(day)
    )  # fmt: skip
    days = {}
    for row in session.execute(query):
        days[str(row[0])] = tuple(int(v or 0) for v in row[1:8]) + tuple(
            Decimal(0) if v is None else v for v in row[8:]
        )
    fees = accrue(fee_spans(session, period, "USD"), period)
    end = period.end
    usage = session.execute(
        select(exact_sum(u.charge)).where(
            u.created_at >= end - timedelta(days=USAGE_RUN_RATE_DAYS), u.created_at < end
        )
    ).scalar()
    return {"days": days, "fees": decimal_sum(fees.values()), "usage_mrr": usage or Decimal(0)}


def _same(view: Overview, raw: dict[str, Any]) -> bool:
    for row in view.days:
        measured = (
            row.requests, row.errors, row.input_tokens, row.output_tokens, row.embedding_tokens,
            row.engine_us, row.latency_ms_total, row.usage_revenue, row.cost,
        )  # fmt: skip
        if measured != raw["days"].get(row.key, (0,) * 7 + (Decimal(0), Decimal(0))):
            say(f"mismatch on {row.key}: {measured} != {raw['days'].get(row.key)}")
            return False
    return view.total.fees == raw["fees"] and view.recurring.usage_mrr == raw["usage_mrr"]


def _timed(work: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def _database(args: argparse.Namespace) -> Database:
    if not args.postgres:
        path = BENCH_HOME / "analytics.db"
        if not args.reuse:
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return Database(f"sqlite:///{path}", sqlite_synchronous="NORMAL")
    import psycopg

    url = make_url(POSTGRES_URL)
    name = "modelmint_bench_analytics"
    if not args.reuse:
        with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username,
                             dbname=url.database, autocommit=True) as admin:  # fmt: skip
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
    return Database(url.set(database=name).render_as_string(hide_password=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261001)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--reuse", action="store_true", help="time the database of a previous run")
    args = parser.parse_args()
    BENCH_HOME.mkdir(parents=True, exist_ok=True)
    database = _database(args)
    migrate(database)
    if not args.reuse:
        started = time.perf_counter()
        generate(database, args.events, args.orgs, args.seed)
        kind = database.url.get_backend_name()
        say(f"generated in {time.perf_counter() - started:.0f} s ({kind})")
    now = MONTH.end + timedelta(days=1)
    with database.session() as session:
        _timed(lambda: overview(session, MONTH, now=now), 1)  # warm-up
        rollups_ms, view = _timed(lambda: overview(session, MONTH, now=now), 5)
        # Raw rows take seconds to minutes: fewer runs of them on big tables.
        raw_ms, raw = _timed(
            lambda: raw_overview(session, MONTH), 3 if args.events <= 2_000_000 else 1
        )
    database.dispose()
    say(f"{view.total.requests + view.total.errors:,} requests in the month; "
        f"revenue {view.total.revenue:,.2f}, cost {view.total.cost:,.2f} USD")  # fmt: skip
    print(f"analytics_overview_equal: {str(_same(view, raw)).lower()}")
    print(f"analytics_overview_ms_rollups: {rollups_ms:.1f}")
    print(f"analytics_overview_ms_raw: {raw_ms:.1f}")
    print(f"analytics_overview_speedup: {raw_ms / rollups_ms:.1f}")


if __name__ == "__main__":
    main()
