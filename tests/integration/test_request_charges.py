"""Request charges computed by the metering writer, settled on wallets, and invoiced.

Every expected amount here is recomputed independently from the stored usage rows
and the plan's published prices, not read back from the totals the writer keeps.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from modelmint import accounts
from modelmint.billing import (
    Budget,
    BudgetExceeded,
    EnterprisePlan,
    FlatRate,
    GraduatedTiers,
    InsufficientCredit,
    InvalidPeriod,
    Metric,
    Money,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
    tiers_up_to,
)
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.billing_admin import close_period
from modelmint.charging.reservations import hold_budget, release_budget, release_stale, reserve
from modelmint.charging.settlement import Charger
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.observability.metrics import USAGE_BATCHES
from modelmint.storage import Database
from modelmint.storage.tables import BillingAlert, BillingInvoice, BillingUsageTotal, UsageRecord

D = Decimal
INPUT_TIERS = GraduatedTiers(tiers_up_to((500, D("0.001")), (None, D("0.0005"))))
OUTPUT_RATE = FlatRate(D("2"), 1000)  # 0.002 per token
INCLUDED_INPUT = 100


def pro_plan() -> SubscriptionPlan:
    book = PriceBook(
        "USD",
        {("m", Metric.INPUT_TOKENS): INPUT_TIERS, ("m", Metric.OUTPUT_TOKENS): OUTPUT_RATE},
    )
    return SubscriptionPlan(
        "pro", 1, fee=Money(D("30.00"), "USD"), price_book=book,
        included={Metric.INPUT_TOKENS: INCLUDED_INPUT},
    )  # fmt: skip


@pytest.fixture
def writer(database: Database) -> Iterator[UsageWriter]:
    usage_writer = UsageWriter(database, charging=Charger())
    usage_writer.start()
    yield usage_writer
    usage_writer.close()


def setup_org(database: Database, name: str, plan: SubscriptionPlan | PrepaidPlan) -> str:
    with database.session() as session:
        org = accounts.create_org(session, name)
        store = BillingStore(session)
        store.plans.publish_plan(plan)
        store.subscriptions.subscribe(org.id, plan.ref, Period.containing(datetime.now(UTC)).start)
        return org.id


def event(org: str, n: int, plan: str, **fields: object) -> UsageEvent:
    values: dict[str, object] = {
        "id": f"req_{org}_{n}",
        "created_at": datetime.now(UTC),
        "organization_id": org,
        "api_key_id": "key_1",
        "model": "m",
        "endpoint": "chat.completions",
        "status_code": 200,
        "plan_code": plan,
        "plan_version": 1,
        "currency": "USD",
        **fields,
    }
    return UsageEvent(**values)  # type: ignore[arg-type]


def test_an_id_named_twice_in_one_batch_is_stored_charged_and_totalled_once(
    database: Database,
) -> None:
    org = setup_org(database, "twice", pro_plan())
    first = event(org, 1, "pro", input_tokens=20, output_tokens=30)
    again = event(org, 1, "pro", input_tokens=70, output_tokens=90)
    usage_writer = UsageWriter(database, charging=Charger())
    # Queued before the writer runs: one batch holds both.
    futures = [usage_writer.submit(first), usage_writer.submit(again)]
    usage_writer.start()
    try:
        assert [f.result(timeout=30) for f in futures] == [None, None]
    finally:
        usage_writer.close()
    assert usage_writer.batches == 1
    with database.session() as session:
        [row] = session.scalars(select(UsageRecord).where(UsageRecord.organization_id == org))
        totals = {
            t.metric: t
            for t in session.scalars(
                select(BillingUsageTotal).where(BillingUsageTotal.organization_id == org)
            )
        }
    assert (row.input_tokens, row.output_tokens) == (20, 30)  # the first one stands
    assert row.charge == OUTPUT_RATE.price(30)  # its input is within the included 100
    assert (totals["input_tokens"].quantity, totals["output_tokens"].quantity) == (20, 30)
    assert totals["output_tokens"].amount == OUTPUT_RATE.price(30)
    assert totals["output_tokens"].charges == 1


def test_subscription_charges_add_up_to_the_invoice_to_the_last_unit(
    database: Database, writer: UsageWriter
) -> None:
    org = setup_org(database, "acme", pro_plan())
    rng = random.Random(7)
    events = [
        event(org, n, "pro", input_tokens=rng.randint(0, 90), output_tokens=rng.randint(0, 40))
        for n in range(60)
    ]
    events[5].status_code = 500  # a failure owes nothing
    for e in events:
        writer.submit(e).result(timeout=30)
    writer.submit(events[3]).result(timeout=30)  # a retried write is not charged twice

    with database.session() as session:
        rows = session.scalars(select(UsageRecord).where(UsageRecord.organization_id == org)).all()
    ok = [r for r in rows if r.status_code < 400]
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    expected_in = INPUT_TIERS.price(max(total_in - INCLUDED_INPUT, 0))
    expected_out = OUTPUT_RATE.price(total_out)
    assert len(rows) == 60
    assert all(r.charge is not None and r.plan_code == "pro" for r in rows)
    assert next(r for r in rows if r.status_code == 500).charge == 0
    assert sum((r.charge for r in rows if r.charge is not None), D(0)) == expected_in + expected_out

    now = datetime.now(UTC)
    period = Period.containing(now)
    with pytest.raises(InvalidPeriod, match="has not ended"):
        close_period(database, period, now=now)
    [closed] = close_period(database, period, organization="acme", now=now, allow_open=True)
    assert closed.created
    invoice = closed.invoice
    usage = {line.metric: line for line in invoice.charge_lines if line.metric is not None}
    assert usage[Metric.INPUT_TOKENS].amount == Money.rounded(expected_in, "USD")
    assert usage[Metric.OUTPUT_TOKENS].amount == Money.rounded(expected_out, "USD")
    assert usage[Metric.INPUT_TOKENS].included == INCLUDED_INPUT
    assert invoice.usage_exact_total == expected_in + expected_out
    assert invoice.total == Money(D("30.00"), "USD") + Money.rounded(
        expected_in, "USD"
    ) + Money.rounded(expected_out, "USD")

    [again] = close_period(database, period, now=now + timedelta(seconds=1), allow_open=True)
    assert not again.created and again.invoice.total == invoice.total
    with database.session() as session:
        assert len(session.scalars(select(BillingInvoice)).all()) == 1
        # The 100 included input tokens ran out: 50, 80 and 100% alerts, each raised once.
        alerts = session.scalars(select(BillingAlert).where(BillingAlert.kind == "allowance"))
        assert sorted(a.threshold for a in alerts) == [50, 80, 100]


def usage_totals(database: Database, org: str) -> dict[str, tuple[D, D, D, int]]:
    """The organisation's usage totals by metric: quantity, included, amount, charges."""
    with database.session() as session:
        rows = session.scalars(
            select(BillingUsageTotal).where(BillingUsageTotal.organization_id == org)
        ).all()
    return {r.metric: (r.quantity, r.included, r.amount, r.charges) for r in rows}


def one_trip_batches() -> float:
    return USAGE_BATCHES.labels("one_trip")._value.get()


def test_flat_prices_are_settled_in_one_trip_and_add_up_exactly(
    database: Database, writer: UsageWriter
) -> None:
    """Flat prices and unlimited allowances need no running totals: such batches are
    settled without reads, their sums added blindly. The totals must still be exact,
    fractional compute seconds included."""
    book = PriceBook(
        "USD",
        {
            ("m", Metric.INPUT_TOKENS): FlatRate(D("0.0000015")),
            ("m", Metric.OUTPUT_TOKENS): FlatRate(D("6"), 1_000_000),
            ("m", Metric.COMPUTE_SECONDS): FlatRate(D("0.08"), 4),
        },
    )
    flat = SubscriptionPlan("flat", 1, fee=Money(D("5.00"), "USD"), price_book=book)
    org = setup_org(database, "initech", flat)
    reported = setup_org(database, "globex", EnterprisePlan("ent", 1, fee=Money(D("9"), "USD")))
    rng = random.Random(11)
    shapes = [
        (rng.randint(1, 900), rng.randint(0, 300), rng.randint(1, 5000) / 4) for _ in range(30)
    ]
    events = [
        event(org, n, "flat", input_tokens=i, output_tokens=o, engine_ms=ms)
        for n, (i, o, ms) in enumerate(shapes)
    ]
    events[7].status_code = 503  # owes nothing and is in no total
    events += [
        event(reported, n, "ent", input_tokens=i, output_tokens=o, engine_ms=ms)
        for n, (i, o, ms) in enumerate(shapes[:5])
    ]
    before = one_trip_batches()
    for e in events:
        writer.submit(e).result(timeout=30)
    assert one_trip_batches() - before == len(events)  # none needed a read

    served = [s for n, s in enumerate(shapes) if n != 7]
    tokens_in = sum(i for i, _, _ in served)
    tokens_out = sum(o for _, o, _ in served)
    # Engine time is metered in whole microseconds.
    secs = sum((D(round(ms * 1000)) / 1_000_000 for _, _, ms in served), D(0))
    expected = {
        "input_tokens": (D(tokens_in), D(0), D(tokens_in) * D("0.0000015"), len(served)),
        "output_tokens": (D(tokens_out), D(0), D(tokens_out) * D("0.000006"), len(served)),
        "compute_seconds": (secs, D(0), secs * D("0.02"), len(served)),
    }
    assert usage_totals(database, org) == expected
    with database.session() as session:
        charges = session.scalars(
            select(UsageRecord.charge).where(UsageRecord.organization_id == org)
        ).all()
    assert sum((c for c in charges if c is not None), D(0)) == sum(
        (amount for _, _, amount, _ in expected.values()), D(0)
    )
    # An enterprise plan reports every unit as included and charges nothing.
    reported_in = sum(i for i, _, _ in shapes[:5])
    assert usage_totals(database, reported)["input_tokens"] == (
        D(reported_in),
        D(reported_in),
        D(0),
        5,
    )


def test_a_hard_budget_holds_the_worst_case_and_settles_the_actual(
    database: Database, writer: UsageWriter
) -> None:
    org = setup_org(database, "initech", pro_plan())
    with database.session() as session:
        BillingStore(session).budgets.set_budget(
            org, "", Budget(Money(D("1.00"), "USD"), hard=True)
        )
        BillingStore(session).budgets.set_budget(
            org, "key_1", Budget(Money(D("0.20"), "USD"), hard=False, thresholds=(50, 100))
        )
    period = Period.containing(datetime.now(UTC))
    budgets = {"": Budget(Money(D("1.00"), "USD"))}
    assert hold_budget(database, org, "key_1", period, "USD", D("0.60"), budgets) == ("",)
    with pytest.raises(BudgetExceeded, match=r"monthly budget of 1\.00 USD is reached"):
        hold_budget(database, org, "key_1", period, "USD", D("0.50"), budgets)
    # It could have cost 0.60; it used 150 output tokens at 0.002: 0.30.
    done = event(
        org, 1, "pro", output_tokens=150, spend_hold=D("0.60"), spend_period=period.start,
        spend_scopes=("",),
    )  # fmt: skip
    writer.submit(done).result(timeout=30)
    hold_budget(database, org, "key_1", period, "USD", D("0.70"), budgets)  # 0.30 + 0.70 fits
    release_budget(database, org, "key_1", period, "USD", D("0.70"), ("",))
    with database.session() as session:
        spend = BillingStore(session).budgets.lock_spend(org, ["key_1"], period.start, "USD")
        alerts = session.scalars(select(BillingAlert).where(BillingAlert.kind == "budget")).all()
    assert spend == {"": (D("0.30"), D(0)), "key_1": (D("0.30"), D(0))}
    # The key's soft budget of 0.20 was passed (50% and 100%); the org's 1.00 is at 30%.
    assert sorted((a.api_key_id, a.threshold) for a in alerts) == [("key_1", 50), ("key_1", 100)]
    assert all(a.status == "pending" and a.payload["type"] == "budget.threshold" for a in alerts)


def test_prepaid_requests_settle_their_reservations_exactly(
    database: Database, writer: UsageWriter
) -> None:
    book = PriceBook("USD", {("*", Metric.OUTPUT_TOKENS): FlatRate(D("0.01"))})
    org = setup_org(database, "globex", PrepaidPlan("payg", 1, book))
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.open_wallet(org, "USD")
        wallet.grant(Money(D("1.00"), "USD"), at=datetime.now(UTC))
        store.wallets.save_wallet(wallet)
        wallet_id = wallet.id

    first = reserve(database, org, "USD", D("0.50"), "req_a")
    second = reserve(database, org, "USD", D("0.40"), "req_b")
    with pytest.raises(InsufficientCredit):
        reserve(database, org, "USD", D("0.20"), "req_c")  # 0.10 left
    writer.submit(event(org, 1, "payg", output_tokens=7, reservation=first)).result(timeout=30)
    writer.submit(
        event(org, 2, "payg", output_tokens=3, reservation=second, status_code=502)
    ).result(timeout=30)
    stale = reserve(database, org, "USD", D("0.30"), "req_d")
    assert stale
    assert release_stale(database, timedelta(seconds=-1)) == 1

    with database.session() as session:
        store = BillingStore(session)
        balance = store.ledger.audit_wallet(wallet_id)
        assert balance == Money(D("0.93"), "USD")  # only the served request's 7 tokens
        assert store.wallets.wallet_reserved(wallet_id) == Money(D(0), "USD")
        charges = {
            r.id: r.charge
            for r in session.scalars(select(UsageRecord).where(UsageRecord.organization_id == org))
        }
    assert charges == {f"req_{org}_1": D("0.07"), f"req_{org}_2": D(0)}


def test_credit_that_expired_unrecorded_is_written_off_before_a_hold(
    database: Database,
) -> None:
    book = PriceBook("USD", {("*", Metric.OUTPUT_TOKENS): FlatRate(D("0.01"))})
    org = setup_org(database, "umbrella", PrepaidPlan("payg", 1, book))
    now = datetime.now(UTC)
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.open_wallet(org, "USD")
        wallet.grant(
            Money(D("1.00"), "USD"),
            at=now - timedelta(hours=2),
            expires_at=now - timedelta(hours=1),
        )
        wallet.top_up(Money(D("0.50"), "USD"), at=now - timedelta(hours=2))
        store.wallets.save_wallet(wallet)
        wallet_id = wallet.id
    # The wallet row still counts the expired 1.00: the one-statement hold must not use it.
    assert reserve(database, org, "USD", D("0.40"), "req_1")
    with pytest.raises(InsufficientCredit, match=r"up to 0\.20 USD, 0\.10 is available"):
        reserve(database, org, "USD", D("0.20"), "req_2")
    with database.session() as session:
        store = BillingStore(session)
        assert store.ledger.audit_wallet(wallet_id) == Money(D("0.50"), "USD")  # 1.00 written off
        assert store.wallets.wallet_reserved(wallet_id) == Money(D("0.40"), "USD")


class _GeneralWayOnly(Charger):
    """A charger that settles every batch the general way (reads, then absolute totals),
    as batches holding a per-request hold or a budget's spend are settled."""

    def quick(self, *args: object, **kwargs: object) -> None:
        return None


def test_a_quick_batch_committed_during_a_general_settlement_is_kept_in_the_totals(
    _postgres_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateway processes charge the first requests of a new slot (organisation,
    month, plan, model, metric): one the general way, one the quick way. The quick batch
    commits between the general settlement's reads and its writes, on rows that did not
    exist when they were read: the totals must hold both batches."""
    from modelmint.metering import store as store_module

    database = _postgres_database
    suffix = secrets.token_hex(4)
    book = PriceBook(
        "USD",
        {
            ("m", Metric.INPUT_TOKENS): FlatRate(D("0.001")),
            ("m", Metric.OUTPUT_TOKENS): FlatRate(D("0.002")),
        },
    )
    plan = SubscriptionPlan(f"race{suffix}", 1, fee=Money(D("5.00"), "USD"), price_book=book)
    org = setup_org(database, f"race-{suffix}", plan)
    general = store_module.UsageStore(database, _GeneralWayOnly())
    quick = store_module.UsageStore(database, Charger())
    first = event(org, 1, plan.code, input_tokens=100, output_tokens=10)
    second = event(org, 2, plan.code, input_tokens=50, output_tokens=5)

    real_run = store_module.run
    calls = 0

    def run_then_let_the_other_process_commit(raw: Any, sqlite: bool, statements: Any) -> Any:
        nonlocal calls
        calls += 1
        results = real_run(raw, sqlite, statements)
        if calls == 1:  # the general settlement's reads are done, its writes not sent
            monkeypatch.setattr(store_module, "run", real_run)
            assert quick.write([second]) == 1
        return results

    monkeypatch.setattr(store_module, "run", run_then_let_the_other_process_commit)
    try:
        assert general.write([first]) == 1
    finally:
        general.close()
        quick.close()
    assert calls == 1
    assert usage_totals(database, org) == {
        "input_tokens": (D(150), D(0), D("0.150"), 2),
        "output_tokens": (D(15), D(0), D("0.030"), 2),
    }
