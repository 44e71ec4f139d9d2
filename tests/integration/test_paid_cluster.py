"""Prepaid credit under fire: two gateway processes, one PostgreSQL, one Redis, one wallet.

The wallet covers only some of the requests fired at it at once. Whatever the
interleaving, the balance must stay >= 0, every refused request must get a 402,
and the money consumed must be exactly the charges of the requests that got 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from modelmint import accounts
from modelmint.billing import FlatRate, Metric, Money, PrepaidPlan, PriceBook
from modelmint.billing.repository import BillingRepository
from modelmint.storage.db import Database
from modelmint.storage.tables import BillingReservation, UsageRecord
from tests.support.processes import MockUpstreamProcess, Server, cli

ADMIN = "paid-cluster-admin"
CREDIT = Decimal("2.00")
REQUESTS = 240
# The mock upstream reports 13 prompt and 9 completion tokens for every request.
PRICES = {
    Metric.INPUT_TOKENS: FlatRate(Decimal("0.0001")),
    Metric.OUTPUT_TOKENS: FlatRate(Decimal("0.001")),
    Metric.REQUESTS: FlatRate(Decimal("0.01")),
}
CHARGE = Decimal("0.0001") * 13 + Decimal("0.001") * 9 + Decimal("0.01")


@pytest.fixture
def paid_cluster(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str
) -> Iterator[tuple[list[Server], str, Database]]:
    upstream = MockUpstreamProcess()
    env = {
        "MODELMINT_DATABASE_URL": fresh_postgres_url,
        "MODELMINT_REDIS_URL": redis_url,
        "MODELMINT_LOAD_BUNDLED_MODELS": "false",
        "MODELMINT_ADMIN_TOKEN": ADMIN,
    }
    servers = [Server(home=tmp_path / f"gw{i}", admin_token=ADMIN, extra_env=env) for i in range(2)]
    cli(servers[0].env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
    database = Database(fresh_postgres_url)
    with database.session() as session:
        org = accounts.create_org(session, "prepaid-customer")
        _, key = accounts.create_key(session, org)
        repo = BillingRepository(session)
        book = PriceBook("USD", {("*", metric): charge for metric, charge in PRICES.items()})
        plan = repo.publish_plan(PrepaidPlan("payg", 1, book))
        now = datetime.now(UTC)
        repo.subscribe(org.id, plan.ref, now)
        wallet = repo.open_wallet(org.id, "USD")
        wallet.top_up(Money(CREDIT, "USD"), at=now, reference="test payment")
        repo.save_wallet(wallet)
        organization_id = org.id
    for server in servers:
        server.start(ready_timeout=60)
    yield servers, key, database
    for server in servers:
        server.stop()
    upstream.stop()
    database.dispose()
    _ = organization_id


def test_two_processes_never_overdraw_one_wallet(
    paid_cluster: tuple[list[Server], str, Database],
) -> None:
    servers, key, database = paid_cluster

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=REQUESTS)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        servers[i % 2].url + "/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={
                            "model": "mock",
                            "max_tokens": 20,
                            "messages": [{"role": "user", "content": f"request {i}"}],
                        },
                    )
                    for i in range(REQUESTS)
                )
            )

    responses = asyncio.run(fire())
    statuses = [r.status_code for r in responses]
    served = statuses.count(200)
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 402 for r in refused), sorted(set(statuses))
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    # The wallet covered some, not all: the test exercised the boundary.
    assert 0 < served < REQUESTS, statuses
    assert served <= CREDIT / CHARGE

    with database.session() as session:
        repo = BillingRepository(session)
        org = accounts.get_org(session, "prepaid-customer")
        wallet = repo.load_wallet(org.id, "USD")
        balance = repo.audit_wallet(wallet.id)  # the ledger explains the running columns
        assert balance.amount >= 0
        assert balance == wallet.balance
        open_holds = session.scalars(
            select(BillingReservation).where(BillingReservation.closed_at.is_(None))
        ).all()
        assert open_holds == []
        assert CREDIT - balance.amount == served * CHARGE
        rows = session.scalars(
            select(UsageRecord).where(UsageRecord.organization_id == org.id)
        ).all()
        assert len(rows) == served  # refused requests never reached a model
        assert all(r.charge == CHARGE and r.plan_code == "payg" for r in rows)
