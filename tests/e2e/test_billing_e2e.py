"""The billing demo end to end: `modelmint up`, real models, the openai SDK, `invoices close`.

The two seeded customers send traffic; the invoices the CLI closes are then
recomputed here from the usage rows and the published demo prices alone (not from
the totals the writer keeps), to the last unit.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from openai import OpenAI
from sqlalchemy import select

from modelmint import accounts
from modelmint.billing import Metric, Money
from modelmint.charging.quantities import measured
from modelmint.config import Settings
from modelmint.demo.billing import demo_plans
from modelmint.storage import Database
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
    cut_stream(server, key)


def cut_stream(server: Server, key: str) -> None:
    """A stream the client walks away from: it is still metered, and charged, for what was made."""
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Write a long essay."}],
            "max_tokens": 300,
            "stream": True,
        },
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        pieces = 0
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                pieces += 1
                if pieces == 3:
                    break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        row = _usage_row(server, request_id)
        if row is not None:
            assert row.finish_reason == "cancelled" and 0 < row.output_tokens < 300
            assert row.charge is not None
            return
        time.sleep(0.05)
    raise AssertionError("the cut stream left no usage row")


def _usage_row(server: Server, request_id: str) -> UsageRecord | None:
    database = Database.from_settings(Settings(home=server.home))
    try:
        with database.session() as session:
            return session.get(UsageRecord, request_id)
    finally:
        database.dispose()


def usage_by_line(server: Server, organization: str) -> dict[tuple[str, Metric], Decimal]:
    """Quantities per (model, metric) summed from the raw usage rows."""
    database = Database.from_settings(Settings(home=server.home))
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


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it is sent."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[tuple[dict[str, str], Any]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()


def test_demo_customers_are_invoiced_to_the_last_unit(server: Server) -> None:
    receiver = Receiver()
    env = server.env
    cli(env, "alerts", "webhook", "--org", "demo-prepaid", "--url", receiver.url)
    # A soft budget the first paid request passes: alerts, never refuses.
    cli(env, "budgets", "set", "--org", "demo-prepaid", "--amount", "0.000001", "--soft",
        "--thresholds", "50,100")  # fmt: skip
    traffic(server, "demo-subscription")
    traffic(server, "demo-prepaid")
    receiver.wait_for(2)
    receiver.close()
    kinds = sorted((body["type"], body["threshold_percent"]) for _, body in receiver.received)
    assert kinds == [("budget.threshold", 50), ("budget.threshold", 100)]
    assert all(h["X-ModelMint-Alert-Id"] == b["id"] for h, b in receiver.received)
    recorded = cli_json(env, "alerts", "list", "--org", "demo-prepaid", "--json")
    assert sorted(a["status"] for a in recorded) == ["delivered", "delivered"]
    balance = cli_json(server.env, "wallets", "balance", "--org", "demo-prepaid", "--json")

    period = f"{datetime.now(UTC):%Y-%m}"
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
