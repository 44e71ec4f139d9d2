"""Analytics over the rollups equal an independent computation from the raw usage rows.

A month of generated traffic (several plans, a plan change, failures, a retried
batch, usage just outside the month) goes through the real metering writer and the
real request charger. Every figure analytics gives is then recomputed here from
``usage_records`` and the invoices billing drafts, by a different route (plain SQL
rows, Python sums), and must match to the last unit, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from modelmint import accounts
from modelmint.analytics import (
    FIXED_FEES,
    Dimension,
    UsageFilter,
    breakdown,
    cohorts,
    customer_detail,
    deployment_economics,
    explore_usage,
    invoiced_revenue,
    model_quality,
    overview,
    recurring_revenue,
    top_customers,
)
from modelmint.billing import Money
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.billing_admin import close_period
from modelmint.charging.settlement import Charger
from modelmint.demo.billing import demo_plans
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.metering.rollups import LATENCY_BUCKETS_MS, LATENCY_OVERFLOW_MS
from modelmint.registry.catalog import ServingCosts
from modelmint.storage import Database, migrate
from modelmint.storage.migrate import alembic_config
from modelmint.storage.tables import Deployment, ModelVersion, RegisteredModel
from tests.conftest import _fresh_postgres

D = Decimal
OCTOBER = Period.month(2026, 10)
CHAT, EMBED, REMOTE = "smollm2-135m-instruct", "all-minilm-l6-v2", "remote-chat"


@dataclass(frozen=True)
class DeploymentSeed:
    id: str
    model: str
    version: int
    costs: ServingCosts


DEPLOYMENTS = (
    DeploymentSeed("dep_chat_v1", CHAT, 1, ServingCosts(per_hour=D("0.90"))),
    DeploymentSeed("dep_chat_v2", CHAT, 2, ServingCosts(per_hour=D("1.35"))),
    DeploymentSeed("dep_embed", EMBED, 1, ServingCosts(per_hour=D("0.30"))),
    DeploymentSeed(
        "dep_remote", REMOTE, 1, ServingCosts(per_1m_input=D("0.40"), per_1m_output=D("1.60"))
    ),
)


@dataclass
class World:
    """The generated month: organisation ids by name, every event written, and the fixed
    fees per organisation on October's invoices (closed as the month ended)."""

    database: Database
    orgs: dict[str, str]
    events: list[UsageEvent]
    fees: dict[str, Decimal]


def _seed_registry(database: Database) -> None:
    with database.session() as session:
        models: dict[str, str] = {}
        for seed in DEPLOYMENTS:
            if seed.model not in models:
                models[seed.model] = f"rm_{len(models)}"
                task = "embedding" if seed.model == EMBED else "chat"
                session.add(RegisteredModel(id=models[seed.model], name=seed.model, task=task))
                session.flush()
            version_id = f"mv_{seed.id}"
            session.add(
                ModelVersion(
                    id=version_id, model_id=models[seed.model], version=seed.version,
                    format="gguf", artifact_uri="-",
                )
            )  # fmt: skip
            session.flush()
            session.add(
                Deployment(
                    id=seed.id, public_name=seed.model, model_version_id=version_id,
                    backend="test", cost_per_hour=seed.costs.per_hour,
                    cost_per_1m_input=seed.costs.per_1m_input,
                    cost_per_1m_output=seed.costs.per_1m_output,
                    created_at=datetime(2026, 9, 1, tzinfo=UTC),
                )
            )  # fmt: skip


def _seed_billing(database: Database) -> dict[str, str]:
    """Organisations on each demo plan; ``bolt`` starts mid-month and changes plan."""
    orgs: dict[str, str] = {}
    with database.session() as session:
        store = BillingStore(session)
        plans = {plan.code: store.plans.publish_plan(plan) for plan in demo_plans()}
        for name in ("acme", "bolt", "cask", "dune", "echo", "fern"):
            orgs[name] = accounts.create_org(session, name).id
        september = datetime(2026, 9, 1, tzinfo=UTC)
        store.subscriptions.subscribe(orgs["acme"], plans["starter"].ref, september)
        store.subscriptions.subscribe(
            orgs["bolt"], plans["starter"].ref, datetime(2026, 10, 10, 6, tzinfo=UTC)
        )
        store.subscriptions.change_plan(
            orgs["bolt"], plans["enterprise"].ref, datetime(2026, 10, 20, tzinfo=UTC)
        )
        store.subscriptions.subscribe(orgs["cask"], plans["payg"].ref, september)
        store.subscriptions.subscribe(orgs["dune"], plans["enterprise"].ref, september)
        store.subscriptions.subscribe(orgs["echo"], plans["free"].ref, september)
        wallet = store.wallets.open_wallet(orgs["cask"], "USD")
        wallet.grant(Money(D("1000"), "USD"), at=datetime.now(UTC))
        store.wallets.save_wallet(wallet)
    return orgs


def _plan_at(database: Database, org: str, moment: datetime) -> tuple[str, int] | None:
    with database.session() as session:
        active = BillingStore(session).subscriptions.timeline(org).active_at(moment)
    return None if active is None else (active.plan.code, active.plan.version)


def _events(database: Database, orgs: dict[str, str], seed: int, count: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    start = OCTOBER.start - timedelta(hours=3)  # a little outside the month on both sides
    seconds = int((OCTOBER.end - start).total_seconds()) + 3 * 3600
    plans: dict[tuple[str, datetime], tuple[str, int] | None] = {}
    events = []
    for n in range(count):
        name = rng.choice(list(orgs))
        org = orgs[name]
        created = start + timedelta(
            seconds=rng.randrange(seconds), microseconds=rng.randrange(10**6)
        )
        deployment = rng.choice(DEPLOYMENTS)
        status = rng.choices([200, 400, 429, 500, 502], weights=[88, 4, 3, 3, 2])[0]
        embedding = deployment.model == EMBED
        ok = status == 200
        tokens_in = rng.randrange(1, 4000) if ok else 0
        tokens_out = rng.randrange(1, 600) if ok and not embedding else 0
        engine_ms = rng.randrange(1, 3_000_000) / 1000 if ok else 0.0
        key = (org, created.replace(minute=0, second=0, microsecond=0))
        if key not in plans:
            plans[key] = _plan_at(database, org, created)
        plan = plans[key]
        events.append(
            UsageEvent(
                id=f"req_{seed}_{n}", created_at=created, organization_id=org,
                api_key_id=f"key_{name}", model=deployment.model,
                endpoint="embeddings" if embedding else "chat.completions", status_code=status,
                input_tokens=tokens_in, output_tokens=tokens_out,
                latency_ms=rng.choice([rng.randrange(1, 60), rng.randrange(60, 9000)]),
                deployment_id=deployment.id, model_version_id=f"mv_{deployment.id}",
                engine_ms=engine_ms,
                plan_code=plan[0] if plan else None, plan_version=plan[1] if plan else None,
                currency="USD" if plan else None,
                cost=deployment.costs.of(engine_ms, tokens_in, tokens_out) if ok else None,
            )
        )  # fmt: skip
    events.sort(key=lambda e: e.created_at)
    return events


def build_world(database: Database, *, seed: int = 11, count: int = 1200) -> World:
    """Generate and write a month of traffic through the real writer and charger, then
    close October's invoices."""
    _seed_registry(database)
    orgs = _seed_billing(database)
    events = _events(database, orgs, seed, count)
    writer = UsageWriter(database, charging=Charger(), max_batch=97)
    writer.start()
    try:
        futures = [writer.submit(e) for e in events]
        for future in futures:
            future.result(timeout=60)
        # A retried batch: already stored, so neither stored, charged nor rolled up again.
        for future in [writer.submit(e) for e in events[100:160]]:
            future.result(timeout=60)
    finally:
        writer.close()
    return World(database, orgs, events, invoice_fees(database, OCTOBER))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One generated month per database kind, shared by the module's read-only tests."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path_factory.mktemp('db') / 'analytics.db'}")
        migrate(database)
        yield build_world(database)
        database.dispose()
        return
    with _fresh_postgres() as url:
        database = Database(url)
        migrate(database)
        yield build_world(database)
        database.dispose()


@pytest.fixture
def database(world: World) -> Database:
    return world.database


# -- the independent computation -------------------------------------------------------------


def as_utc(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def money(value: object) -> Decimal:
    return D(0) if value is None else D(str(value))


def raw_rows(database: Database) -> list[dict[str, Any]]:
    """Usage rows as the database holds them, read with plain SQL."""
    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM usage_records")).mappings().all()
    return [{**row, "created_at": as_utc(row["created_at"])} for row in rows]


def expected(rows: list[dict[str, Any]], window: Period, key: str) -> dict[str, dict[str, Any]]:
    """Per ``key`` column (or "day"): the sums a breakdown must show, from raw rows."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(lambda: 0))
    for row in rows:
        moment = row["created_at"].replace(minute=0, second=0, microsecond=0)
        if not window.start <= moment < window.end:
            continue
        group = moment.date().isoformat() if key == "day" else (row[key] or "")
        sums = out[group]
        ok = 200 <= row["status_code"] < 300
        embedding = row["endpoint"] == "embeddings"
        sums["requests"] += 1 if ok else 0
        sums["errors"] += 0 if ok else 1
        sums["input_tokens"] += 0 if embedding else row["input_tokens"]
        sums["embedding_tokens"] += row["input_tokens"] if embedding else 0
        sums["output_tokens"] += row["output_tokens"]
        sums["engine_us"] += round(row["engine_ms"] * 1000)
        sums["revenue"] = money(sums["revenue"]) + money(row["charge"])
        sums["cost"] = money(sums["cost"]) + money(row["cost"])
    return out


def invoice_fees(database: Database, window: Period) -> dict[str, Decimal]:
    """Fixed fees per organisation as billing's invoices charge them."""
    invoices = close_period(database, window, now=window.end + timedelta(days=1))
    fees: dict[str, Decimal] = defaultdict(Decimal)
    for closed in invoices:
        for line in closed.invoice.charge_lines:
            if line.metric is None and line.plan is not None:
                fees[closed.invoice.organization_id] += line.amount.amount
    return fees


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dimension", "column"),
    [
        (Dimension.MODEL, "model"),
        (Dimension.VERSION, "model_version_id"),
        (Dimension.ORGANIZATION, "organization_id"),
        (Dimension.PLAN, "plan_code"),
        (Dimension.DEPLOYMENT, "deployment_id"),
        (Dimension.DAY, "day"),
    ],
)
def test_breakdowns_match_the_raw_rows_to_the_last_unit(
    database: Database, world: World, dimension: Dimension, column: str
) -> None:
    want = expected(raw_rows(database), OCTOBER, column)
    with database.session() as session:
        report = breakdown(session, OCTOBER, dimension)
    rows = {row.key: row for row in report.rows if row.key != FIXED_FEES}
    assert {k for k, v in want.items()} <= set(rows)
    for key, row in rows.items():
        sums = want.get(key, defaultdict(lambda: 0))
        assert row.requests == sums["requests"], key
        assert row.errors == sums["errors"], key
        assert (row.input_tokens, row.output_tokens, row.embedding_tokens) == (
            sums["input_tokens"], sums["output_tokens"], sums["embedding_tokens"]
        ), key  # fmt: skip
        assert row.engine_us == sums["engine_us"], key
        assert row.usage_revenue == money(sums["revenue"]), key
        assert row.cost == money(sums["cost"]), key
    assert report.total.usage_revenue == sum((money(s["revenue"]) for s in want.values()), D(0))
    assert report.total.cost == sum((money(s["cost"]) for s in want.values()), D(0))
    assert report.total.usage_revenue > 0 and report.total.cost > 0


def test_fees_and_margins_match_the_invoices(database: Database, world: World) -> None:
    rows = raw_rows(database)
    usage = expected(rows, OCTOBER, "organization_id")
    with database.session() as session:
        by_org = {row.key: row for row in breakdown(session, OCTOBER, Dimension.ORGANIZATION).rows}
        by_model = breakdown(session, OCTOBER, Dimension.MODEL)
    fees = world.fees
    bolt = world.orgs["bolt"]
    assert fees[bolt] > 0 and fees[world.orgs["acme"]] == D("20.00")
    for org, row in by_org.items():
        assert row.fees == fees.get(org, D(0)), org
        revenue = money(usage[org]["revenue"]) + fees.get(org, D(0))
        assert row.margin == revenue - money(usage[org]["cost"]), org
    # By model, the fees are one row of their own, so totals agree across breakdowns.
    assert by_model.total.revenue == sum((r.revenue for r in by_org.values()), D(0))
    [fee_row] = [row for row in by_model.rows if row.key == FIXED_FEES]
    assert fee_row.fees == sum(fees.values(), D(0))
    with database.session() as session:
        invoiced = invoiced_revenue(session, OCTOBER, "USD")
        after = breakdown(session, OCTOBER, Dimension.ORGANIZATION)
    assert invoiced.invoices == 5  # everyone subscribed, fern is not
    assert after.total.invoiced == invoiced.billed
    # The prepaid customer's usage is credited back on its invoice (the wallet paid it).
    assert invoiced.subtotal < invoiced.billed
    # Invoice lines are the accrued amounts, each rounded once to the cent.
    for row in after.rows:
        if row.key in fees:
            assert row.invoiced is not None and abs(row.invoiced - row.revenue) <= D("0.05")


def test_hourly_rollups_and_latency_histogram_equal_a_recomputation(
    database: Database, world: World
) -> None:
    rows = raw_rows(database)
    assert len(rows) == len(world.events)
    want: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, D(0), D(0)])
    latencies: Counter[tuple[Any, ...]] = Counter()
    for row in rows:
        hour = row["created_at"].replace(minute=0, second=0, microsecond=0)
        key = (
            hour,
            *(row[c] for c in ("organization_id", "model")),
            *(row[c] or "" for c in ("model_version_id", "deployment_id", "plan_code", "currency")),
        )
        ok = 200 <= row["status_code"] < 300
        want[key][0] += 1 if ok else 0
        want[key][1] += row["latency_ms"]
        want[key][2] += money(row["charge"])
        want[key][3] += money(row["cost"])
        if ok:
            bound = next(
                (b for b in LATENCY_BUCKETS_MS if row["latency_ms"] <= b), LATENCY_OVERFLOW_MS
            )
            latencies[(hour, row["model"], bound)] += 1
    with database.engine.connect() as connection:
        stored = connection.execute(
            text(
                "SELECT hour, organization_id, model, model_version_id, deployment_id, plan_code,"
                " currency, requests, latency_ms, revenue, cost FROM analytics_usage_hourly"
            )
        ).all()
        histogram = connection.execute(
            text("SELECT hour, model, le_ms, count FROM analytics_latency_hourly")
        ).all()
    got = {
        (as_utc(r[0]), *r[1:7]): [int(r[7]), int(r[8]), money(r[9]), money(r[10])] for r in stored
    }
    assert got == dict(want)
    assert {(as_utc(h), m, int(b)): int(c) for h, m, b, c in histogram} == dict(latencies)


def test_partial_windows_read_hours_at_the_edges(database: Database, world: World) -> None:
    window = Period(datetime(2026, 10, 3, 5, 30, tzinfo=UTC), datetime(2026, 10, 9, 17, tzinfo=UTC))
    want = expected(
        raw_rows(database), Period(datetime(2026, 10, 3, 6, tzinfo=UTC), window.end), "model"
    )
    with database.session() as session:
        report = breakdown(session, window, Dimension.MODEL)
    for row in report.rows:
        if row.key != FIXED_FEES:
            assert row.requests == want[row.key]["requests"]
            assert row.usage_revenue == money(want[row.key]["revenue"])


def test_quality_overview_and_unit_economics(database: Database, world: World) -> None:
    rows = [
        r
        for r in raw_rows(database)
        if OCTOBER.contains(r["created_at"].replace(minute=0, second=0, microsecond=0))
    ]
    with database.session() as session:
        quality = {q.model: q for q in model_quality(session, OCTOBER)}
        view = overview(session, OCTOBER, now=OCTOBER.end + timedelta(days=3))
        economics = {
            e.deployment_id: e
            for e in deployment_economics(session, OCTOBER, now=datetime.now(UTC))
        }
    for model, q in quality.items():
        answered = sorted(
            r["latency_ms"] for r in rows if r["model"] == model and r["status_code"] == 200
        )
        failed = sum(1 for r in rows if r["model"] == model and r["status_code"] != 200)
        assert (q.requests, q.errors) == (len(answered), failed)
        true_p50 = answered[len(answered) // 2]
        # An estimate within the bucket that holds the true median.
        bound = next(b for b in LATENCY_BUCKETS_MS if true_p50 <= b)
        lower = max([0, *[b for b in LATENCY_BUCKETS_MS if b < bound]])
        assert q.p50_ms is not None and lower <= q.p50_ms <= bound
    assert len(view.days) == 31 and view.days[0].key == "2026-10-01"
    assert view.total.revenue == sum((d.revenue for d in view.days), D(0))
    assert view.recurring.fixed_mrr == D("20.00") + D("2000.00") + D("2000.00")
    chat = economics["dep_chat_v1"]
    chat_rows = [r for r in rows if r["deployment_id"] == "dep_chat_v1"]
    assert chat.cost == sum((money(r["cost"]) for r in chat_rows), D(0))
    assert chat.hours == 31 * 24
    assert chat.utilisation is not None and chat.break_even_utilisation is not None
    # Break-even utilisation = cost per hour / revenue per busy hour.
    busy_hours = D(sum(round(r["engine_ms"] * 1000) for r in chat_rows)) / D(3_600_000_000)
    revenue = sum((money(r["charge"]) for r in chat_rows), D(0))
    assert abs(chat.break_even_utilisation - D("0.90") * busy_hours / revenue) < D("0.0001")
    assert economics["dep_remote"].break_even_utilisation is None


def test_customers_cohorts_and_the_usage_explorer(database: Database, world: World) -> None:
    with database.session() as session:
        top = top_customers(session, OCTOBER, limit=2)
        detail = customer_detail(session, "cask", OCTOBER)
        report = cohorts(session, months=3, until=datetime(2026, 11, 15, tzinfo=UTC))
        mrr = recurring_revenue(session, datetime(2026, 10, 25, tzinfo=UTC))
        first = explore_usage(
            session, UsageFilter(organization="fern", status="error"), page_size=5
        )
        second = explore_usage(
            session, UsageFilter(organization="fern", status="error"), page=2, page_size=5
        )
    # Licence fees lead: dune's for the month, bolt's from the 20th.
    assert [row.label for row in top] == ["dune", "bolt"]
    assert detail.plan == "payg@v1" and detail.wallets[0].balance < D(1000)
    assert D(1000) - detail.wallets[0].balance == detail.usage.total.usage_revenue + sum(
        (money(r["charge"]) for r in raw_rows(database)
         if r["organization_id"] == world.orgs["cask"] and not OCTOBER.contains(r["created_at"])),
        D(0),
    )  # fmt: skip
    assert report.months == ("2026-09", "2026-10", "2026-11")
    # Active: used a model, or paid a fee (acme and dune from September, bolt from October).
    rows = raw_rows(database)
    orgs = world.orgs
    fee_months = {orgs["acme"]: "2026-09", orgs["dune"]: "2026-09", orgs["bolt"]: "2026-10"}
    active = {(r["organization_id"], f"{r['created_at']:%Y-%m}") for r in rows}
    active |= {(org, m) for org, start in fee_months.items() for m in report.months if m >= start}
    firsts = {org: min(m for o, m in active if o == org) for org, _ in active}
    for index, g in enumerate(report.growth):
        now = {org for org, m in active if m == g.month}
        before = {org for org, m in active if index and m == report.months[index - 1]}
        assert (g.active, g.churned) == (len(now), len(before - now)), g.month
        assert g.new == sum(1 for org in now if firsts[org] == g.month), g.month
    assert [c.size for c in report.cohorts] == [
        sum(1 for m in firsts.values() if m == month) for month in report.months
    ]
    assert report.growth[1].active == 6  # everyone used a model in October
    assert mrr.fixed_mrr == D("20.00") + D("2000.00") + D("2000.00") and mrr.subscriptions == 3
    fern_errors = sorted(
        (r for r in raw_rows(database)
         if r["organization_id"] == world.orgs["fern"] and r["status_code"] != 200),
        key=lambda r: (r["created_at"], r["id"]), reverse=True,
    )  # fmt: skip
    assert [r.id for r in first.rows + second.rows] == [r["id"] for r in fern_errors[:10]]
    assert first.has_more and all(r.organization_name == "fern" for r in first.rows)


@pytest.fixture
def fresh_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'backfill.db'}"
    else:
        yield request.getfixturevalue("fresh_postgres_url")


@pytest.mark.parametrize("fresh_url", ["sqlite", "postgres"], indirect=True)
def test_the_migration_backfills_rollups_from_existing_usage(fresh_url: str) -> None:
    """Usage written before 0008 gets the same rollups the writer keeps from then on."""
    reference = Database(fresh_url)
    migrate(reference)
    world = build_world(reference, count=400)
    with reference.engine.connect() as connection:
        tables = {
            name: sorted(map(tuple, connection.execute(text(f"SELECT * FROM {name}")).all()))
            for name in (
                "analytics_usage_hourly",
                "analytics_usage_daily",
                "analytics_latency_hourly",
            )
        }
    with reference.engine.begin() as connection:
        config = alembic_config(fresh_url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
        command.upgrade(config, "head")
    with reference.engine.connect() as connection:
        for name, rows in tables.items():
            again = sorted(map(tuple, connection.execute(text(f"SELECT * FROM {name}")).all()))
            assert [tuple(map(str, r)) for r in again] == [tuple(map(str, r)) for r in rows], name
    assert len(world.events) == 400 and tables["analytics_usage_hourly"]
    reference.dispose()
