"""Credit leases in the database (SQLite and PostgreSQL): fair shares, renewals, the
sweep of expired leases, and the metering writer charging requests through them.

Every amount is checked against the wallet's ledger (``audit_wallet``) and against
``balance - held - leased >= 0``, the invariant leases exist to keep.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from modelmint import accounts
from modelmint.billing import (
    Budget,
    BudgetExceeded,
    FlatRate,
    InsufficientCredit,
    Metric,
    Money,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
)
from modelmint.billing.errors import PlanNotFound
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.charging.lease_store import DatabaseLeaseStore
from modelmint.charging.leases import CreditLeases, LeaseLost, Pool
from modelmint.charging.reservations import hold_budget, reserve
from modelmint.charging.settlement import Charger
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.observability.metrics import USAGE_BATCHES
from modelmint.storage import Database
from modelmint.storage.tables import BillingCreditLease, BillingSpend, BillingWallet, UsageRecord

D = Decimal
PRICE = FlatRate(D("0.01"))  # per output token


def prepaid_org(database: Database, name: str, credit: str) -> str:
    with database.session() as session:
        org = accounts.create_org(session, name)
        repo = BillingStore(session)
        book = PriceBook("USD", {("*", Metric.OUTPUT_TOKENS): PRICE})
        try:
            plan = repo.plans.load_plan("payg", 1)  # another organisation published it
        except PlanNotFound:
            plan = repo.plans.publish_plan(PrepaidPlan("payg", 1, book))
        repo.subscriptions.subscribe(org.id, plan.ref, Period.containing(datetime.now(UTC)).start)
        wallet = repo.wallets.open_wallet(org.id, "USD")
        wallet.top_up(Money(D(credit), "USD"), at=datetime.now(UTC))
        repo.wallets.save_wallet(wallet)
        return org.id


def wallet_sums(database: Database, org: str) -> tuple[Decimal, Decimal, Decimal]:
    """The wallet row's balance, held and leased, after checking its ledger."""
    with database.session() as session:
        repo = BillingStore(session)
        row = session.scalar(select(BillingWallet).where(BillingWallet.organization_id == org))
        assert row is not None
        repo.ledger.audit_wallet(row.id)
        assert row.balance - row.held - row.leased >= 0
        open_amounts = session.scalars(
            select(BillingCreditLease.amount).where(
                BillingCreditLease.wallet_id == row.id, BillingCreditLease.closed_at.is_(None)
            )
        ).all()
        assert sum(open_amounts, D(0)) == row.leased  # leased is the sum of open leases
        return row.balance, row.held, row.leased


@pytest.fixture
def store(database: Database) -> DatabaseLeaseStore:
    # Every renewal posts pending consumption, so the tests can watch it reach the ledger.
    return DatabaseLeaseStore(database, holder="test-process", ttl_s=30, capture_every_s=0)


def test_leases_take_fair_shares_and_hand_everything_back(
    database: Database, store: DatabaseLeaseStore
) -> None:
    org = prepaid_org(database, "acme", "10.00")
    pool = Pool.wallet(org, "USD")
    first = store.open(pool, D("100"), D("1"))
    assert first is not None and first.change == D("5")  # half of 10: room for a newcomer
    second = store.open(pool, D("100"), D("1"))
    assert second is not None and second.change == D("1.666666666666")  # 5 / (1 other + 2)
    assert wallet_sums(database, org)[2] == first.change + second.change
    # The rest cannot give a third lease its minimum: nothing is leased, per-request holds.
    assert store.open(pool, D("100"), D("2")) is None
    # Leased credit is not the per-request path's to hold.
    free = D("10") - first.change - second.change
    with pytest.raises(InsufficientCredit, match=r"3\.333333333334 is available"):
        reserve(database, org, "USD", free + D("0.01"), "req_x")
    assert reserve(database, org, "USD", free, "req_y")
    # Renewing: a positive change asks for more (nothing left now: the pool is low) ...
    renewed = store.renew(first.lease_id, pool, D("1"), D("0.5"))
    assert renewed.change == 0 and renewed.low
    # ... a negative one hands back, and closing hands back the rest.
    assert store.renew(first.lease_id, pool, D("-2"), D(0)).change == D("-2")
    store.close(first.lease_id, pool)
    store.close(second.lease_id, pool)
    with pytest.raises(LeaseLost):
        store.renew(first.lease_id, pool, D("1"), D("0.1"))
    assert wallet_sums(database, org) == (D("10"), free, D(0))


def test_an_expired_lease_is_swept_back_into_its_pool(
    database: Database, store: DatabaseLeaseStore
) -> None:
    org = prepaid_org(database, "initech", "10.00")
    pool = Pool.wallet(org, "USD")
    granted = store.open(pool, D("3"), D("1"))
    assert granted is not None
    assert store.reclaim_expired() == 0  # still alive
    with database.session() as session:  # its holder died 31 seconds ago
        session.execute(
            update(BillingCreditLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert store.reclaim_expired() == 1
    assert wallet_sums(database, org) == (D("10"), D(0), D(0))
    with pytest.raises(LeaseLost):
        store.renew(granted.lease_id, pool, D("1"), D("1"))


def test_a_budget_lease_counts_against_the_month(
    database: Database, store: DatabaseLeaseStore
) -> None:
    with database.session() as session:
        org = accounts.create_org(session, "globex").id
        repo = BillingStore(session)
        book = PriceBook("USD", {("*", Metric.OUTPUT_TOKENS): PRICE})
        plan = repo.plans.publish_plan(
            SubscriptionPlan("pro", 1, Money(D("1"), "USD"), price_book=book)
        )
        repo.subscriptions.subscribe(org, plan.ref, Period.containing(datetime.now(UTC)).start)
        repo.budgets.set_budget(org, "", Budget(Money(D("4.00"), "USD"), hard=True))
    month = Period.containing(datetime.now(UTC))
    pool = Pool.budget(org, "USD", "", month.start)
    granted = store.open(pool, D("10"), D("0.5"))
    assert granted is not None and granted.change == D("2")
    budgets = {"": Budget(Money(D("4.00"), "USD"))}
    with pytest.raises(BudgetExceeded, match=r"monthly budget of 4\.00 USD is reached"):
        hold_budget(database, org, "key", month, "USD", D("2.01"), budgets)
    assert hold_budget(database, org, "key", month, "USD", D("2.00"), budgets) == ("",)
    # The budget made soft: nothing is leasable any more, the holder hands back.
    with database.session() as session:
        BillingStore(session).budgets.set_budget(org, "", Budget(Money(D("4.00"), "USD"), False))
    assert store.renew(granted.lease_id, pool, D("1"), D("0.5")).low
    store.close(granted.lease_id, pool)
    with database.session() as session:
        spend = session.scalar(select(BillingSpend).where(BillingSpend.api_key_id == ""))
        assert spend is not None and (spend.held, spend.leased) == (D("2.00"), D(0))


@pytest.fixture
def writer(database: Database) -> Iterator[tuple[UsageWriter, Charger]]:
    charger = Charger()
    usage_writer = UsageWriter(database, charging=charger)
    usage_writer.start()
    yield usage_writer, charger
    usage_writer.close()


def paid(org: str, n: int, *, tokens: int, **fields: object) -> UsageEvent:
    values: dict[str, object] = {
        "id": f"req_{n}",
        "created_at": datetime.now(UTC),
        "organization_id": org,
        "api_key_id": "key_1",
        "model": "m",
        "endpoint": "chat.completions",
        "status_code": 200,
        "output_tokens": tokens,
        "plan_code": "payg",
        "plan_version": 1,
        "currency": "USD",
        **fields,
    }
    return UsageEvent(**values)  # type: ignore[arg-type]


async def test_requests_admitted_against_a_lease_are_charged_through_it(
    database: Database, store: DatabaseLeaseStore, writer: tuple[UsageWriter, Charger]
) -> None:
    usage_writer, charger = writer
    org = prepaid_org(database, "umbrella", "10.00")
    pool = Pool.wallet(org, "USD")
    leases = CreditLeases(store, ttl_s=30)
    charger.leases = leases
    worst = D("0.20")  # 20 tokens at most
    admitted: list[str] = []
    for _ in range(12):
        taken = leases.take([pool], worst)
        if taken is None:
            taken = tuple((await leases.take_or_fall_back([pool], worst))[0].values())
        admitted.append(taken[0])
    events = [
        paid(org, n, tokens=n + 1, wallet_lease=lease_id, lease_worst=worst)
        for n, lease_id in enumerate(admitted)
    ]
    events[3].status_code = 502  # failed: costs nothing, its worst case comes back whole
    for event in events:
        await usage_writer.record(event)
    usage_writer.submit(events[0]).result(timeout=30)  # a retry charges nothing twice
    charged = sum((D(n + 1) * D("0.01") for n in range(12) if n != 3), D(0))
    with database.session() as session:
        charges = session.scalars(select(UsageRecord.charge)).all()
        assert sum((c for c in charges if c is not None), D(0)) == charged
        pending = sum(session.scalars(select(BillingCreditLease.pending)).all(), D(0))
    # Charged through the lease: pending on it, in the wallet's leased credit, and not
    # yet in the ledger, so the balance has not moved and the free credit has.
    assert pending == charged
    balance, held, leased = wallet_sums(database, org)
    assert (balance, held) == (D("10"), D(0))
    # Memory and the lease rows agree on what is left to admit against.
    [(_, free, inflight)] = leases.snapshot().values()
    assert (free, inflight) == (leased - pending, 0)
    await leases.checkin()  # a renewal posts what is pending to the ledger
    balance, held, leased = wallet_sums(database, org)
    assert (balance, held) == (D("10") - charged, D(0))
    assert leased == leases.snapshot()[pool][1]
    await leases.close()
    assert wallet_sums(database, org) == (D("10") - charged, D(0), D(0))


async def test_a_request_whose_lease_was_swept_is_paid_from_free_credit(
    database: Database, store: DatabaseLeaseStore, writer: tuple[UsageWriter, Charger]
) -> None:
    usage_writer, _ = writer
    org = prepaid_org(database, "hooli", "1.00")
    granted = store.open(Pool.wallet(org, "USD"), D("0.40"), D("0.1"))
    assert granted is not None
    with database.session() as session:
        session.execute(
            update(BillingCreditLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert store.reclaim_expired() == 1
    retried = USAGE_BATCHES.labels("retried")
    before = retried._value.get()
    await usage_writer.record(
        paid(org, 1, tokens=7, wallet_lease=granted.lease_id, lease_worst=D("0.1"))
    )
    # The quick batch bet on an open lease and lost: it was settled again the general way.
    assert retried._value.get() == before + 1
    assert wallet_sums(database, org) == (D("0.93"), D(0), D(0))


def test_a_batch_charging_several_leases_adds_to_each_exactly(
    database: Database, store: DatabaseLeaseStore
) -> None:
    """One batch of two organisations' requests, each admitted against its own lease:
    settled in one trip, each lease's pending is its own requests' charges."""
    orgs = [prepaid_org(database, "soylent", "5.00"), prepaid_org(database, "tyrell", "5.00")]
    leases = {}
    for org in orgs:
        granted = store.open(Pool.wallet(org, "USD"), D("1.00"), D("0.1"))
        assert granted is not None
        leases[org] = granted.lease_id
    events = [
        paid(org, n * 10 + k, tokens=n + k + 1, wallet_lease=leases[org], lease_worst=D("0.1"))
        for n in range(4)
        for k, org in enumerate(orgs)
    ]
    usage_writer = UsageWriter(database, charging=Charger())
    futures = [usage_writer.submit(event) for event in events]  # queued: one batch
    one_trip = USAGE_BATCHES.labels("one_trip")
    before = one_trip._value.get()
    usage_writer.start()
    try:
        for future in futures:
            future.result(timeout=30)
    finally:
        usage_writer.close()
    assert usage_writer.batches == 1
    assert one_trip._value.get() == before + 1  # settled without reads
    with database.session() as session:
        pending = {
            row.organization_id: row.pending for row in session.scalars(select(BillingCreditLease))
        }
    charged = {
        org: sum((D(e.output_tokens) * D("0.01") for e in events if e.organization_id == org), D(0))
        for org in orgs
    }
    assert pending == charged
    for org in orgs:
        assert wallet_sums(database, org)[1:] == (D(0), D("1.00"))
