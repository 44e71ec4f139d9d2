"""`GET /v1/usage` and `GET /v1/balance` through the gateway, checked against the usage
rows summed independently here, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select

from modelmint import accounts, billing_admin
from modelmint.billing import PrepaidPlan
from modelmint.clock import utcnow
from modelmint.storage.tables import PaymentAccount, UsageRecord
from tests.integration.test_gateway_billing import PRICES, subscribe
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    MESSAGES,
    Gateway,
    gateway,
    upstream,
)
from tests.support.mock_upstream import MockUpstream


def other_client(gateway: Gateway, secret: str) -> httpx.AsyncClient:  # noqa: F811
    return httpx.AsyncClient(
        transport=gateway.http._transport,
        base_url="http://gw",
        headers={"Authorization": f"Bearer {secret}"},
    )


async def ask(client: httpx.AsyncClient, model: str = "mock") -> None:
    answer = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 10}
    )
    assert answer.status_code == 200, answer.text


def independent_sums(rows: list[UsageRecord]) -> dict[tuple[str, str, str], dict[str, Any]]:
    sums: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "input_tokens": 0, "output_tokens": 0, "spend": Decimal(0)}
    )
    for row in rows:
        line = sums[(row.created_at.date().isoformat(), row.model, row.api_key_id)]
        line["requests"] += 1
        line["input_tokens"] += row.input_tokens
        line["output_tokens"] += row.output_tokens
        line["spend"] += row.charge or Decimal(0)
    return dict(sums)


async def test_usage_and_balance_are_the_callers_own_and_exact(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    await gateway.serve("mock-b", upstream)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit="5.00")
    with gateway.database.session() as session:
        acme = accounts.get_org(session, gateway.org_id)
        second, second_secret = accounts.create_key(session, acme, name="second")
        globex = accounts.ensure_org(session, "globex")
        _, globex_secret = accounts.create_key(session, globex, name="g")
        billing_admin.set_budget(session, "acme", "3.00", "USD")
        billing_admin.set_budget(session, "acme", "1.00", "USD", key=second.id)
        billing_admin.set_budget(session, "acme", "2.00", "USD", key=gateway.key_id)
    for model in ("mock", "mock", "mock-b"):
        await ask(gateway.http, model)
    async with other_client(gateway, second_secret) as second_http:
        await ask(second_http)
    async with other_client(gateway, globex_secret) as globex_http:
        for _ in range(3):
            await ask(globex_http)
        globex_usage = (await globex_http.get("/v1/usage", params={"group_by": "key"})).json()
    await gateway.usage_rows()

    answer = await gateway.http.get("/v1/usage", params={"group_by": "day,model,key"})

    assert answer.status_code == 200, answer.text
    usage = answer.json()
    with gateway.database.session() as session:
        rows = list(
            session.scalars(
                select(UsageRecord).where(UsageRecord.organization_id == gateway.org_id)
            )
        )
    expected = independent_sums(rows)
    got = {
        (line["day"], line["model"], line["api_key_id"]): {
            "requests": line["requests"],
            "input_tokens": line["input_tokens"],
            "output_tokens": line["output_tokens"],
            "spend": Decimal(line["spend"]),
        }
        for line in usage["data"]
    }
    assert got == expected and sum(v["requests"] for v in got.values()) == 4
    assert {line["currency"] for line in usage["data"]} == {"USD"}
    assert usage["organization_id"] == gateway.org_id
    # Another organisation sees only its own three requests, on no plan.
    [globex_line] = globex_usage["data"]
    assert (globex_line["requests"], globex_line["spend"], globex_line["currency"]) == (
        3,
        "0",
        None,
    )
    assert globex_line["api_key_id"] not in {gateway.key_id, second.id}
    ungrouped = (await gateway.http.get("/v1/usage")).json()["data"]
    assert [line["requests"] for line in ungrouped] == [4]

    balance = (await gateway.http.get("/v1/balance")).json()

    spent = sum((row.charge or Decimal(0) for row in rows), Decimal(0))
    [credit] = balance["credit"]
    assert Decimal(credit["balance"]) == Decimal("5.00") - spent
    scopes = {(b["scope"], b["api_key_id"]): b for b in balance["budgets"]}
    # The organisation's budget and the caller's key's own; never the other key's.
    assert set(scopes) == {("organization", None), ("key", gateway.key_id)}
    assert Decimal(scopes[("organization", None)]["spent"]) == spent
    assert Decimal(scopes[("organization", None)]["remaining"]) == Decimal("3.00") - spent
    assert balance["limits"]["key"]["api_key_id"] == gateway.key_id


async def test_bad_ranges_and_groups_are_refused_and_a_blocked_customer_still_sees_its_account(
    gateway: Gateway,  # noqa: F811
) -> None:
    for params, param in (
        ({"group_by": "week"}, "group_by"),
        ({"start": "2026-12-05", "end": "2026-12-01"}, "end"),
        ({"start": "2020-01-01", "end": "2026-01-01"}, "start"),
        ({"start": "yesterday"}, "start"),
    ):
        refused = await gateway.http.get("/v1/usage", params=params)
        assert refused.status_code == 400, params
        assert refused.json()["error"]["param"] == param
    with gateway.database.session() as session:
        now = utcnow()
        session.add(
            PaymentAccount(
                organization_id=gateway.org_id,
                provider="stripe",
                blocked_at=now,
                created_at=now,
                updated_at=now,
            )
        )

    gateway.platform.keys.forget(gateway.key_id)  # as if cache_ttl_s had passed
    models = await gateway.http.get("/v1/models")
    balance = await gateway.http.get("/v1/balance")

    assert models.status_code == 402 and models.json()["error"]["code"] == "payment_required"
    assert balance.status_code == 200 and balance.json()["credit"] == []
