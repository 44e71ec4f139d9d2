"""The billing demo end to end: `modelmint up`, real models, the openai SDK, `invoices close`.

The two seeded customers send traffic; the invoices the CLI closes are then
recomputed here from the usage rows and the published demo prices alone (not from
the totals the writer keeps), to the last unit.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from openai import OpenAI
from sqlalchemy import select

from modelmint import accounts
from modelmint.billing import Metric, Money
from modelmint.charging.demo import demo_plans
from modelmint.charging.quantities import measured
from modelmint.config import Settings
from modelmint.storage.tables import UsageRecord
from tests.support.processes import Server, cli, cli_json

D = Decimal


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    running = Server(home=tmp_path_factory.mktemp("billing-demo"))
    running.start()
    yield running  # type: ignore[misc]
    running.stop()


def traffic(server: Server, organization: str) -> None:
    key = cli_json(server.env, "keys", "create", "--org", organization)["key"]
    client = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    for prompt in ("Say hello", "Name a colour", "Count to three"):
        client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=8,
        )
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert any(chunk.usage for chunk in stream)
    client.embeddings.create(model="all-minilm-l6-v2", input=["billing", "is exact"])


def usage_by_line(server: Server, organization: str) -> dict[tuple[str, Metric], Decimal]:
    """Quantities per (model, metric) summed from the raw usage rows."""
    database = Settings(home=server.home).database()
    try:
        with database.session() as session:
            org = accounts.get_org(session, organization)
            rows = session.scalars(
                select(UsageRecord).where(UsageRecord.organization_id == org.id)
            ).all()
    finally:
        database.dispose()
    totals: dict[tuple[str, Metric], Decimal] = defaultdict(Decimal)
    for row in rows:
        assert row.status_code == 200
        used = measured(row.endpoint, row.input_tokens, row.output_tokens, row.engine_ms)
        for metric, quantity in used.items():
            totals[(row.model, metric)] += D(quantity)
    return totals


def test_demo_customers_are_invoiced_to_the_last_unit(server: Server) -> None:
    traffic(server, "demo-subscription")
    traffic(server, "demo-prepaid")
    balance = cli_json(server.env, "wallets", "balance", "--org", "demo-prepaid", "--json")

    period = f"{datetime.now(UTC):%Y-%m}"
    env = server.env
    refused = cli(env, "invoices", "close", "--period", period, check=False)
    assert refused.returncode != 0 and "has not ended" in refused.stderr + refused.stdout
    closed = cli_json(env, "invoices", "close", "--period", period, "--allow-open", "--json")
    by_org = {invoice["organization_id"]: invoice for invoice in closed}
    assert len(by_org) == 2 and all(i["created"] and i["status"] == "finalized" for i in closed)

    plans = {plan.code: plan for plan in demo_plans()}
    for organization, plan_code in (("demo-subscription", "starter"), ("demo-prepaid", "payg")):
        plan = plans[plan_code]
        invoice = _invoice_of(env, organization, closed)
        usage = usage_by_line(server, organization)
        lines = {
            (line["model"], Metric(line["metric"])): line
            for line in invoice["lines"]
            if line["kind"] == "usage"
        }
        assert set(lines) == set(usage)
        expected_total = D(0)
        for (model, metric), quantity in usage.items():
            line = lines[(model, metric)]
            included = D(plan.allowance(metric) or 0)
            overage = max(quantity - included, D(0))
            charge = plan.overage_charge(model, metric)
            assert charge is not None
            exact = charge.price(overage if metric.fractional else int(overage))
            assert D(line["quantity"]) == quantity
            assert D(line["exact_amount"]) == exact
            assert D(line["amount"]) == Money.rounded(exact, "USD").amount
            expected_total += Money.rounded(exact, "USD").amount
        if plan_code == "starter":
            # Subscribed from the start of the month: the whole fee, usage inside the allowance.
            assert D(invoice["total"]) == D("20.00") + expected_total
        else:
            # Paid from the wallet as it went: the invoice credits it all back.
            assert D(invoice["total"]) == 0
            spent = sum(
                (
                    plan.overage_charge(model, metric).price(  # type: ignore[union-attr]
                        q if metric.fractional else int(q)
                    )
                    for (model, metric), q in usage.items()
                ),
                D(0),
            )
            assert spent > 0
            assert D(balance["balance"]) == D("5.00") - spent

    again = cli_json(env, "invoices", "close", "--period", period, "--allow-open", "--json")
    assert [i["created"] for i in again] == [False, False]
    assert [i["total"] for i in again] == [i["total"] for i in closed]
    csv = cli(env, "invoices", "show", closed[0]["id"], "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("kind,")


def _invoice_of(
    env: dict[str, str], organization: str, closed: list[dict[str, Any]]
) -> dict[str, Any]:
    org_id = next(
        o["id"] for o in cli_json(env, "orgs", "list", "--json") if o["name"] == organization
    )
    return next(i for i in closed if i["organization_id"] == org_id)
