"""Paid traffic under fire: gateway processes sharing one wallet or one budget.

Each process admits paid requests against credit it leased from the wallet (or room
leased from a hard budget), in memory; when a pool is too small to lease from it holds
per request. Whatever the interleaving, and whether a process is stopped, idle or
killed: the balance never goes below zero, every refusal is a 402, the money consumed
is exactly the charges of the requests that got 200, the ledger explains the wallet,
and no hold or lease outlives its holder.

The mock upstream reports 13 prompt and 9 completion tokens for every request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from modelmint import accounts
from modelmint.billing import (
    Budget,
    FlatRate,
    Metric,
    Money,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
)
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.storage import Database, migrate
from modelmint.storage.tables import (
    BillingCreditLease,
    BillingReservation,
    BillingSpend,
    BillingWallet,
    UsageRecord,
)
from tests.support.processes import MockUpstreamProcess, Server, cli

D = Decimal
ADMIN = "paid-cluster-admin"
# Every token and request priced: a request costs 13 * 0.0001 + 9 * 0.001 + 0.01.
PRICES = {
    Metric.INPUT_TOKENS: FlatRate(D("0.0001")),
    Metric.OUTPUT_TOKENS: FlatRate(D("0.001")),
    Metric.REQUESTS: FlatRate(D("0.01")),
}
CHARGE = D("0.0001") * 13 + D("0.001") * 9 + D("0.01")
# Output tokens and requests only, and max_tokens 9: the worst case is the actual cost.
EXACT_PRICES = {metric: PRICES[metric] for metric in (Metric.OUTPUT_TOKENS, Metric.REQUESTS)}
EXACT_CHARGE = D("0.001") * 9 + D("0.01")


@dataclass
class Cluster:
    servers: list[Server]
    database: Database
    org: str
    key: str

    def post(self, client: httpx.AsyncClient, server: int, i: int, max_tokens: int = 20) -> object:
        return client.post(
            self.servers[server].url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.key}"},
            json={
                "model": "mock",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"request {i}"}],
            },
        )

    def fire(self, count: int, max_tokens: int = 20) -> list[httpx.Response]:
        """``count`` requests at once, alternating between the servers."""

        async def run() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=count)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        self.post(client, i % len(self.servers), i, max_tokens)  # type: ignore[misc]
                        for i in range(count)
                    )
                )

        return asyncio.run(run())

    def one(self, server: int, max_tokens: int = 20) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(
                self.servers[server].url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {self.key}"},
                json={
                    "model": "mock",
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )


def _setup(
    database: Database, *, credit: str | None, prices: dict[Metric, FlatRate], budget: str | None
) -> tuple[str, str]:
    with database.session() as session:
        org = accounts.create_org(session, "paying-customer")
        _, key = accounts.create_key(session, org)
        store = BillingStore(session)
        book = PriceBook("USD", {("*", metric): charge for metric, charge in prices.items()})
        if credit is not None:
            plan = store.plans.publish_plan(PrepaidPlan("payg", 1, book))
        else:
            plan = store.plans.publish_plan(SubscriptionPlan("pro", 1, Money(D("0"), "USD"), book))
        store.subscriptions.subscribe(org.id, plan.ref, Period.containing(datetime.now(UTC)).start)
        if credit is not None:
            wallet = store.wallets.open_wallet(org.id, "USD")
            wallet.top_up(Money(D(credit), "USD"), at=datetime.now(UTC), reference="payment")
            store.wallets.save_wallet(wallet)
        if budget is not None:
            store.budgets.set_budget(org.id, "", Budget(Money(D(budget), "USD"), hard=True))
        return org.id, key


@pytest.fixture
def upstream() -> Iterator[MockUpstreamProcess]:
    mock = MockUpstreamProcess()
    yield mock
    mock.stop()


ClusterFactory = Callable[..., Cluster]


def _clusters(
    database: Database,
    homes: list[Path],
    env: dict[str, str],
    upstream: MockUpstreamProcess,
    *up_args: str,
) -> Iterator[ClusterFactory]:
    """A factory of clusters on ``database``: a gateway process per home (``modelmint up
    *up_args``), all stopped afterwards."""
    started: list[Server] = []

    def make(
        *,
        credit: str | None = None,
        prices: dict[Metric, FlatRate] = PRICES,
        budget: str | None = None,
        lease_ttl: float = 30.0,
    ) -> Cluster:
        server_env = {
            **env,
            "MODELMINT_LOAD_BUNDLED_MODELS": "false",
            "MODELMINT_ADMIN_TOKEN": ADMIN,
            "MODELMINT_CREDIT_LEASE_TTL_S": str(lease_ttl),
        }
        servers = [Server(home=home, admin_token=ADMIN, extra_env=server_env) for home in homes]
        cli(servers[0].env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
        migrate(database)
        org, key = _setup(database, credit=credit, prices=prices, budget=budget)
        for server in servers:
            server.start(*up_args, ready_timeout=60)
            started.append(server)
        return Cluster(servers, database, org, key)

    yield make
    for server in started:
        server.stop()
    database.dispose()


@pytest.fixture
def postgres_cluster(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str, upstream: MockUpstreamProcess
) -> Iterator[ClusterFactory]:
    """Two gateway processes on one PostgreSQL and one Redis."""
    env = {"MODELMINT_DATABASE_URL": fresh_postgres_url, "MODELMINT_REDIS_URL": redis_url}
    homes = [tmp_path / "gw0", tmp_path / "gw1"]
    yield from _clusters(Database(fresh_postgres_url), homes, env, upstream)


@pytest.fixture
def sqlite_cluster(tmp_path: Path, upstream: MockUpstreamProcess) -> Iterator[ClusterFactory]:
    """One gateway process with two workers (each its own leases) on one SQLite file."""
    database = Database(f"sqlite:///{tmp_path / 'modelmint.db'}")
    yield from _clusters(database, [tmp_path], {}, upstream, "--workers", "2")


@pytest.fixture(params=["postgres", "sqlite"])
def cluster_of(request: pytest.FixtureRequest) -> ClusterFactory:
    """Two processes on PostgreSQL and Redis, or one process of two workers on SQLite."""
    factory: ClusterFactory = request.getfixturevalue(f"{request.param}_cluster")
    return factory


def served(responses: list[httpx.Response], reason: str = "prepaid credit") -> int:
    """How many got 200; every other answer must be a 402 saying ``reason``."""
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 402 for r in refused), sorted({r.status_code for r in refused})
    errors = [r.json()["error"] for r in refused]
    assert all(e["code"] == "insufficient_quota" and reason in e["message"] for e in errors)
    return len(responses) - len(refused)


def assert_books_balance(cluster: Cluster, credit: Decimal) -> int:
    """The wallet's ledger, its running sums and the usage rows agree to the last unit,
    counting what open leases consumed but have not yet posted to the ledger (their
    ``pending``); returns how many requests were metered (all of them charged)."""
    with cluster.database.session() as session:
        store = BillingStore(session)
        wallet = session.scalar(
            select(BillingWallet).where(BillingWallet.organization_id == cluster.org)
        )
        assert wallet is not None
        balance = store.ledger.audit_wallet(
            wallet.id
        ).amount  # the ledger explains the running sums
        assert balance >= 0 and wallet.balance - wallet.held - wallet.leased >= 0
        metered = session.execute(
            select(UsageRecord.status_code, UsageRecord.charge).where(
                UsageRecord.organization_id == cluster.org
            )
        ).all()
        # Refusals are recorded too (a 402, never charged); every answer was charged.
        assert all(c is None for status, c in metered if status == 402)
        charges = [c for status, c in metered if status != 402]
        assert all(c is not None and c > 0 for c in charges)
        open_pending = session.scalars(
            select(BillingCreditLease.pending).where(
                BillingCreditLease.wallet_id == wallet.id, BillingCreditLease.closed_at.is_(None)
            )
        ).all()
        pending = sum(open_pending, D(0))
        assert credit - balance + pending == sum((c for c in charges if c is not None), D(0))
        assert wallet.consumed_total == credit - balance
    return len(charges)


def wait_for_no_holds_or_leases(database: Database, org: str, timeout: float = 30.0) -> None:
    """Idle leases are handed back by their holder after ten idle seconds, or swept
    after their expiry if the holder died: poll until none is open."""
    deadline = time.monotonic() + timeout
    while True:
        with database.session() as session:
            leases = session.scalar(
                select(func.count())
                .select_from(BillingCreditLease)
                .where(
                    BillingCreditLease.organization_id == org,
                    BillingCreditLease.closed_at.is_(None),
                )
            )
            holds = session.scalar(
                select(func.count())
                .select_from(BillingReservation)
                .where(BillingReservation.closed_at.is_(None))
            )
            leased = sum(  # exact decimals are text on SQLite: added in Python
                session.scalars(
                    select(BillingWallet.leased).where(BillingWallet.organization_id == org)
                ).all(),
                D(0),
            )
            spend_leased = session.scalars(
                select(BillingSpend.leased).where(BillingSpend.organization_id == org)
            ).all()
        if leases == 0 and holds == 0 and leased == 0 and not any(spend_leased):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{leases} leases and {holds} holds still open, {leased} leased")
        time.sleep(0.2)


def test_two_processes_never_overdraw_one_wallet(cluster_of: ClusterFactory) -> None:
    credit = 200 * CHARGE  # about half of the 400 requests fired at once
    cluster = cluster_of(credit=f"{credit}")
    responses = cluster.fire(400)
    count = served(responses)
    assert assert_books_balance(cluster, credit) == count  # refused ones reached no model
    assert 0 < count <= 200  # the wallet covered some, not all: the boundary was crossed
    wait_for_no_holds_or_leases(cluster.database, cluster.org)
    # Whatever was set aside and not spent is free again: the next request may use it.
    left = credit - count * CHARGE
    if left >= D("0.06"):  # its worst case
        assert cluster.one(0).status_code == 200


def test_a_small_wallet_serves_exactly_what_it_covers_across_processes(
    cluster_of: ClusterFactory,
) -> None:
    # Enough for five requests, worst case and actual alike: too small to lease from, so
    # neither process can hold credit the other could have used.
    cluster = cluster_of(credit=f"{5 * EXACT_CHARGE}", prices=EXACT_PRICES)
    responses = cluster.fire(10, max_tokens=9)
    assert served(responses) == 5
    assert assert_books_balance(cluster, 5 * EXACT_CHARGE) == 5
    wait_for_no_holds_or_leases(cluster.database, cluster.org)


def test_an_idle_process_hands_its_lease_back_for_the_other_to_use(
    postgres_cluster: ClusterFactory,
) -> None:
    credit = 40 * EXACT_CHARGE
    cluster = postgres_cluster(credit=f"{credit}", prices=EXACT_PRICES)
    responses = [cluster.one(0, max_tokens=9) for _ in range(10)]
    with cluster.database.session() as session:  # process 0 admitted them from a lease
        assert session.scalar(select(func.count()).select_from(BillingCreditLease)) >= 1
    # Process 0 goes idle; its lease comes back without anything asking for it ...
    wait_for_no_holds_or_leases(cluster.database, cluster.org)
    # ... and process 1 can spend every cent that is left, and not one more.
    while (response := cluster.one(1, max_tokens=9)).status_code == 200:
        responses.append(response)
    responses.append(response)
    assert served(responses) == 40
    assert assert_books_balance(cluster, credit) == 40


def _load_until(cluster: Cluster, requests: int, kill: Callable[[], None]) -> list[httpx.Response]:
    """Eight clients post to the first server until ``requests`` answers came, then
    ``kill`` runs (a crash under load); the answers received."""
    received: list[httpx.Response] = []

    async def load() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=10) as client:

            async def worker(n: int) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        response = await cluster.post(client, 0, n * 1000 + i)  # type: ignore[misc]
                    except httpx.HTTPError:
                        return  # the server died under this request
                    received.append(response)
                    i += 1
                    if len(received) >= requests and not stop.is_set():
                        stop.set()
                        kill()

            await asyncio.gather(*(worker(n) for n in range(8)))

    asyncio.run(load())
    return received


def assert_nothing_lost_or_doubled(cluster: Cluster, received: list[httpx.Response]) -> None:
    """Every answer was a 200 and metered once; what was metered but never delivered
    is at most the eight requests in flight at the kill; the books balance."""
    assert {r.status_code for r in received} == {200}
    with cluster.database.session() as session:
        rows = session.scalars(
            select(UsageRecord.id).where(UsageRecord.organization_id == cluster.org)
        ).all()
    assert len(rows) == len(set(rows))  # nothing metered twice
    delivered = {r.headers["x-request-id"] for r in received}
    assert delivered <= set(rows)  # nothing delivered went unmetered
    assert len(set(rows) - delivered) <= 8  # committed, then cut by the kill in flight
    # Every metered request was charged through the books exactly, lease or not.
    assert assert_books_balance(cluster, D("1000")) == len(rows)


def open_leases(database: Database, holder_part: str = "") -> Decimal:
    """The credit held by open leases (of holders whose name contains ``holder_part``)."""
    with database.session() as session:
        amounts = session.scalars(
            select(BillingCreditLease.amount).where(
                BillingCreditLease.closed_at.is_(None),
                BillingCreditLease.holder.contains(holder_part),
            )
        ).all()
    return sum(amounts, D(0))  # exact decimals are text on SQLite: added in Python


def test_a_killed_holder_loses_nothing_and_its_lease_returns_after_expiry(
    postgres_cluster: ClusterFactory,
) -> None:
    cluster = postgres_cluster(credit="1000", lease_ttl=3.0)
    victim = cluster.servers[0]
    received = _load_until(cluster, 150, victim.kill)
    # The dead process held credit it can never hand back.
    assert open_leases(cluster.database) > 0
    victim.start(ready_timeout=60)  # restarted: a new holder; the old lease is swept
    wait_for_no_holds_or_leases(cluster.database, cluster.org)
    assert_nothing_lost_or_doubled(cluster, received)
    assert cluster.one(1).status_code == 200


def test_a_killed_worker_loses_nothing_and_its_lease_returns_after_expiry_on_sqlite(
    sqlite_cluster: ClusterFactory,
) -> None:
    cluster = sqlite_cluster(credit="1000", lease_ttl=3.0)
    [server] = cluster.servers
    assert server.process is not None
    # The supervisor's children: its two workers (and multiprocessing's resource tracker).
    children = psutil.Process(server.process.pid).children()
    workers = [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2
    killed: list[int] = []

    def kill_a_holder() -> None:
        """SIGKILL a worker that holds a lease (lease holders name their pid)."""
        victim = next(pid for pid in workers if open_leases(cluster.database, f":{pid}:") > 0)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    received = _load_until(cluster, 150, kill_a_holder)
    # The dead worker's lease stays open until it expires and the surviving worker's
    # sweeper closes it.
    assert open_leases(cluster.database, f":{killed[0]}:") > 0
    wait_for_no_holds_or_leases(cluster.database, cluster.org)
    assert_nothing_lost_or_doubled(cluster, received)
    assert cluster.one(0).status_code == 200  # the supervisor started a new worker


def test_a_hard_budget_shared_by_two_processes_is_never_exceeded(
    cluster_of: ClusterFactory,
) -> None:
    limit = D("2.00")
    cluster = cluster_of(budget=f"{limit}")
    responses = cluster.fire(200)
    count = served(responses, "monthly budget")
    assert 0 < count < 200
    with cluster.database.session() as session:
        charges = session.scalars(
            select(UsageRecord.charge).where(UsageRecord.status_code != 402)
        ).all()
        refused = session.scalars(select(UsageRecord.charge).where(UsageRecord.status_code == 402))
        assert len([c for c in refused if c is None]) == 200 - count  # recorded, never charged
        spent = sum((c for c in charges if c is not None), D(0))
        spend = session.scalar(
            select(BillingSpend.amount).where(
                BillingSpend.organization_id == cluster.org, BillingSpend.api_key_id == ""
            )
        )
    assert len(charges) == count
    assert spent == spend == count * CHARGE
    assert spent <= limit  # never exceeded, not by one unit
    wait_for_no_holds_or_leases(cluster.database, cluster.org)
