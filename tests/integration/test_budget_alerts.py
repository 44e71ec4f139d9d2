"""Budget and credit alerts that no charge crossing a threshold would raise: a
refusal short of 100 %, a budget set below the month's spend; and how budgets are
set again (kind and thresholds kept, thresholds past 100 % refused) and listed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest
from sqlalchemy import select

from modelmint import accounts, billing_admin
from modelmint.billing import InvalidBudget, Money, PrepaidPlan, SubscriptionPlan
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.charging.settlement import Charger
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.storage import Database
from modelmint.storage.tables import BillingAlert
from tests.integration.test_gateway_billing import PRICES, ask, hard_key_budget, subscribe
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    Gateway,
    gateway,
    upstream,
)
from tests.support.mock_upstream import MockUpstream

D = Decimal


def alerts(database: Database, kind: str) -> list[tuple[str, int, str]]:
    """(scope, threshold, reason) of the alerts of ``kind``, lowest first."""
    with database.session() as session:
        rows = session.scalars(select(BillingAlert).where(BillingAlert.kind == kind)).all()
        return sorted((a.api_key_id, a.threshold, a.payload.get("reason", "")) for a in rows)


# -- a refusal short of 100 % raises the 100 % alert ----------------------------------------


async def test_a_wallet_that_refuses_a_request_raises_its_exhausted_alert_once(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit="0.50")
    for _ in range(3):  # 0.42 of 0.50 consumed: 84 %
        await ask(gateway)
    await gateway.usage_rows()
    assert alerts(gateway.database, "credit") == [("", 50, ""), ("", 80, "")]
    for _ in range(2):  # a worst case of 0.15 no longer fits in 0.08
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(gateway)
        assert refused.value.status_code == 402
    assert alerts(gateway.database, "credit") == [("", 50, ""), ("", 80, ""), ("", 100, "refused")]
    with gateway.database.session() as session:
        [exhausted] = session.scalars(
            select(BillingAlert).where(BillingAlert.threshold == 100)
        ).all()
    payload = exhausted.payload
    assert (payload["type"], payload["used"], payload["limit"]) == (
        "credit.threshold",
        "0.42",
        "0.50",
    )
    assert exhausted.status == "pending"  # due for the webhook like any other


async def test_a_hard_budget_that_refuses_a_request_raises_its_exhausted_alert(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    hard_key_budget(gateway, "0.40", (50, 100))
    await ask(gateway)
    await ask(gateway)  # 0.28 of 0.40 charged (70 %); the next worst case, 0.15, does not fit
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(gateway)
    assert refused.value.status_code == 402
    await gateway.usage_rows()
    key = gateway.key_id
    assert alerts(gateway.database, "budget") == [(key, 50, ""), (key, 100, "refused")]


# -- setting, listing ------------------------------------------------------------------------


@pytest.fixture
def writer(database: Database) -> Iterator[UsageWriter]:
    usage_writer = UsageWriter(database, charging=Charger())
    usage_writer.start()
    yield usage_writer
    usage_writer.close()


@pytest.fixture
def spent(database: Database, writer: UsageWriter) -> str:
    """Organisation acme on a subscription, charged 0.90 USD this month (9 requests)."""
    with database.session() as session:
        org = accounts.create_org(session, "acme")
        store = BillingStore(session)
        plan = SubscriptionPlan("pro", 1, Money(D("10"), "USD"), PRICES)
        store.plans.publish_plan(plan)
        store.subscriptions.subscribe(org.id, plan.ref, Period.containing(datetime.now(UTC)).start)
        org_id = org.id
    for n in range(9):  # 0.05 a request + 5 output tokens at 0.01
        event = UsageEvent(
            id=f"req_{n}", created_at=datetime.now(UTC), organization_id=org_id,
            api_key_id="key_1", model="m", endpoint="chat.completions", status_code=200,
            output_tokens=5, plan_code="pro", plan_version=1, currency="USD",
        )  # fmt: skip
        writer.submit(event).result(timeout=30)
    return org_id


def test_a_budget_set_below_the_month_s_spend_raises_what_it_passed(
    database: Database, spent: str
) -> None:
    with database.session() as session:
        budget = billing_admin.set_budget(session, "acme", "1.00", "USD")
    assert (budget["spent"], budget["alerts_raised"]) == ("0.90", [50, 80])
    with database.session() as session:
        lower = billing_admin.set_budget(session, "acme", "0.50", "USD")
    assert lower["alerts_raised"] == [100]  # 50 and 80 % were raised this month already
    assert alerts(database, "budget") == [("", 50, ""), ("", 80, ""), ("", 100, "")]
    with database.session() as session:
        [listed] = billing_admin.list_alerts(session, "acme", limit=1)
    assert (listed["threshold"], listed["payload"]["used"]) == (100, "0.90")


def test_setting_a_budget_again_keeps_its_kind_and_thresholds(
    database: Database, spent: str
) -> None:
    with database.session() as session:
        billing_admin.set_budget(session, "acme", "5", "USD", hard=False, thresholds=[40])
    with database.session() as session:
        again = billing_admin.set_budget(session, "acme", "8", "USD")
    assert (again["limit"], again["hard"], again["thresholds"]) == ("8", False, [40])
    with database.session() as session:
        hard = billing_admin.set_budget(session, "acme", "8", "USD", hard=True)
    assert (hard["hard"], hard["thresholds"]) == (True, [40])
    with database.session() as session:
        key = accounts.create_key(session, accounts.get_org(session, "acme"), name="k")[0].id
        fresh = billing_admin.set_budget(session, "acme", "8", "USD", key=key)
    assert (fresh["hard"], fresh["thresholds"]) == (True, [50, 80, 100])  # a new budget


def test_thresholds_past_100_percent_are_refused_and_change_nothing(
    database: Database, spent: str
) -> None:
    with (
        pytest.raises(InvalidBudget, match=r"1 to 100; got 150") as refused,
        database.session() as session,
    ):
        billing_admin.set_budget(session, "acme", "5", "USD", thresholds=[50, 150])
    assert (refused.value.status_code, refused.value.exit_code) == (400, 2)
    with database.session() as session:
        assert billing_admin.list_budgets(session, "acme") == []


def test_listed_alerts_name_the_metric_an_allowance_alert_counts(
    database: Database, spent: str
) -> None:
    period = Period.containing(datetime.now(UTC))
    with database.session() as session:
        store = BillingStore(session)
        for kind, subject in (("allowance", "output_tokens"), ("credit", "USD")):
            store.alerts.raise_alert(
                spent, api_key_id="", kind=kind, subject=subject, period=period,
                threshold=80, payload={},
            )  # fmt: skip
        listed = billing_admin.list_alerts(session, "acme")
    assert {a["kind"]: a["metric"] for a in listed} == {
        "allowance": "output_tokens",
        "credit": None,
    }
