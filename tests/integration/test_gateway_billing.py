"""Spend control through the whole gateway (in-process, SQLite and PostgreSQL), openai SDK client.

The mock upstream reports 13 prompt and 9 completion tokens for every answer.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from modelmint.billing import (
    Budget,
    FlatRate,
    FreeTierPlan,
    Metric,
    Money,
    Plan,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
)
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.storage.tables import BillingReservation
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    MESSAGES,
    Gateway,
    gateway,
    upstream,
)
from tests.support.mock_upstream import MockUpstream

D = Decimal
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
PRICES = PriceBook(
    "USD",
    {
        ("*", Metric.OUTPUT_TOKENS): FlatRate(D("0.01")),
        ("*", Metric.REQUESTS): FlatRate(D("0.05")),
    },
)
CHARGE = D("0.01") * 9 + D("0.05")  # what every answer of the mock costs


def subscribe(gw: Gateway, plan: Plan, credit: str | None = None) -> None:
    with gw.database.session() as session:
        store = BillingStore(session)
        store.plans.publish_plan(plan)
        start = Period.containing(datetime.now(UTC)).start
        store.subscriptions.subscribe(gw.org_id, plan.ref, start)
        if credit is not None:
            wallet = store.wallets.open_wallet(gw.org_id, "USD")
            wallet.top_up(Money(D(credit), "USD"), at=datetime.now(UTC))
            store.wallets.save_wallet(wallet)


def hard_key_budget(gw: Gateway, amount: str, thresholds: tuple[int, ...]) -> None:
    """Put the organisation on a monthly plan with a hard budget of ``amount`` on its key."""
    subscribe(gw, SubscriptionPlan("pro", 1, Money(D("10"), "USD"), PRICES))
    with gw.database.session() as session:
        budget = Budget(Money(D(amount), "USD"), hard=True, thresholds=thresholds)
        BillingStore(session).budgets.set_budget(gw.org_id, gw.key_id, budget)


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("modelmint_billing_refusals_total", {"reason": reason}) or 0.0


async def ask(gw: Gateway) -> None:
    await gw.sdk.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=10)


async def test_a_prepaid_wallet_pays_until_it_cannot_cover_the_worst_case(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit="0.50")
    # Worst case 10 output tokens + 1 request = 0.15; each answer costs 0.14.
    for _ in range(3):
        await ask(gateway)
    refusals_before = refusals("credit")
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(gateway)  # 0.08 left
    assert refused.value.status_code == 402
    assert refusals("credit") == refusals_before + 1
    assert refused.value.body["code"] == "insufficient_quota"  # type: ignore[index]
    assert len(upstream.requests) == 3  # refused before any model work

    rows = await gateway.usage_rows()
    assert (
        sorted((r.status_code, r.charge) for r in rows if r.status_code == 200)
        == [(200, CHARGE)] * 3
    )
    assert [r.charge for r in rows if r.status_code != 200] == [None]  # the refusal's record
    with gateway.database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.load_wallet(gateway.org_id, "USD")
        assert store.ledger.audit_wallet(wallet.id) == Money(D("0.50") - 3 * CHARGE, "USD")
        assert (
            session.scalars(
                select(BillingReservation).where(BillingReservation.closed_at.is_(None))
            ).all()
            == []
        )


async def test_an_unpriced_model_is_refused_before_it_runs(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    book = PriceBook("USD", {("other-model", Metric.OUTPUT_TOKENS): FlatRate(D("0.01"))})
    subscribe(gateway, SubscriptionPlan("pro", 1, Money(D("10"), "USD"), book))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await ask(gateway)
    assert refused.value.body["code"] == "model_not_priced"  # type: ignore[index]
    assert upstream.requests == []


async def test_a_free_tier_refuses_what_its_allowance_cannot_take(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    allowances = {Metric.INPUT_TOKENS: None, Metric.OUTPUT_TOKENS: 30, Metric.REQUESTS: None}
    subscribe(gateway, FreeTierPlan("free", 1, "USD", allowances))
    # 30 output tokens: the worst case of 10 fits three times (9 are used each time).
    for _ in range(3):
        await ask(gateway)
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(gateway)  # 27 used, 10 more might not fit
    assert refused.value.status_code == 402
    assert "free plan includes 30 output_tokens" in refused.value.message
    rows = await gateway.usage_rows()
    assert [r.charge for r in rows if r.status_code == 200] == [D(0)] * 3
    assert [r.charge for r in rows if r.status_code == 402] == [None]  # recorded, not charged
    assert len(upstream.requests) == 3


async def test_a_hard_key_budget_refuses_once_its_month_is_spent(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    hard_key_budget(gateway, "0.40", (50,))
    # Each request holds 0.15 and costs 0.14: 0.14 + 0.14 + 0.15 > 0.40 refuses the third.
    await ask(gateway)
    await ask(gateway)
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(gateway)
    assert refused.value.status_code == 402
    assert "this API key's monthly budget of 0.40 USD is reached" in refused.value.message
    await gateway.usage_rows()
    with gateway.database.session() as session:
        store = BillingStore(session)
        period = Period.containing(datetime.now(UTC)).start
        spend = store.budgets.lock_spend(gateway.org_id, [gateway.key_id], period, "USD")
    assert spend[gateway.key_id] == (2 * CHARGE, D(0))  # the refused hold was given back


async def test_a_refusal_for_want_of_max_tokens_says_to_set_it(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit="1.00")
    # Without max_tokens the worst case is the default 4,096 output tokens: 41.01 > 1.00.
    with pytest.raises(openai.APIStatusError) as refused:
        await gateway.sdk.chat.completions.create(model="mock", messages=MESSAGES)
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "insufficient_quota"  # type: ignore[index]
    message = refused.value.body["message"]  # type: ignore[index]
    assert "max_tokens" in message and "4096" in message and "worst case" in message
    # With max_tokens set too high the refusal is the plain one: the client chose it.
    with pytest.raises(openai.APIStatusError) as too_high:
        await gateway.sdk.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=500)
    assert too_high.value.status_code == 402
    assert "max_tokens" not in too_high.value.body["message"]  # type: ignore[index]
    await ask(gateway)  # max_tokens=10: the worst case fits
    assert len(upstream.requests) == 1


async def test_admin_usage_shows_money_as_plain_decimals(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    tiny = PriceBook("USD", {("*", Metric.OUTPUT_TOKENS): FlatRate(D("0.0000001"))})
    subscribe(gateway, PrepaidPlan("payg", 1, tiny), credit="1")
    await ask(gateway)
    await gateway.usage_rows()

    response = await gateway.http.get(
        "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )

    assert response.status_code == 200, response.text
    [row] = response.json()
    # 9 output tokens at 0.0000001: in plain notation, never "9E-7"; likewise the cost.
    assert PLAIN_DECIMAL.fullmatch(row["charge"]) and D(row["charge"]) == D("0.0000009")
    assert row["cost"] is None or PLAIN_DECIMAL.fullmatch(row["cost"])
