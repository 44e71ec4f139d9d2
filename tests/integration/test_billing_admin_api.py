"""The billing admin API (/admin/billing) in-process over HTTP, on a real SQLite database.

Status codes and the error body are what a client sees; the rules behind them are
held by test_billing_operations.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from pypdf import PdfReader

from modelmint.app import create_app
from modelmint.billing import Period, draft_invoice
from modelmint.billing.store import BillingStore
from modelmint.config import Settings
from modelmint.platform import Platform
from modelmint.storage import Database

ADMIN_TOKEN = "billing-admin-token"
T0 = datetime(2026, 11, 1, tzinfo=UTC)

STARTER: dict[str, Any] = {
    "kind": "subscription",
    "code": "starter",
    "version": 1,
    "fee": {"amount": "20.00", "currency": "USD"},
    "included": {"input_tokens": 1000},
    "price_book": {
        "currency": "USD",
        "prices": [
            {
                "target": "*",
                "metric": "input_tokens",
                "charge": {"type": "flat", "amount": "0.15", "per_units": 1_000_000},
            }
        ],
        "model_groups": {},
    },
}


@pytest.fixture
async def admin(sqlite_database: Database, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    url = sqlite_database.url.render_as_string(hide_password=False)
    settings = Settings(
        home=tmp_path,
        database_url=url,
        load_bundled_models=False,
        admin_token=SecretStr(ADMIN_TOKEN),
        log_json=False,
    )
    platform = Platform.build(settings, Database(url))
    await platform.start()
    app = create_app(settings, platform)
    app.state.platform = platform
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw/admin/billing", headers=headers
        ) as client:
            yield client
    finally:
        await platform.close()


@pytest.fixture
async def acme(admin: httpx.AsyncClient) -> str:
    """An organisation on starter@v1 since November 2026."""
    created = await admin.post("http://gw/admin/organizations", json={"name": "acme"})
    assert created.status_code == 201, created.text
    assert (await admin.post("/plans", json=STARTER)).status_code == 201
    subscribed = await admin.post(
        "/organizations/acme/subscriptions", json={"plan": "starter", "at": T0.isoformat()}
    )
    assert subscribed.status_code == 201, subscribed.text
    return str(created.json()["id"])


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error body, after checking the status and the shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


async def test_billing_needs_the_admin_token(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/plans", headers={"Authorization": "Bearer wrong"})
    assert error_of(response, 401)["code"] == "invalid_admin_token"


async def test_plans_are_published_listed_and_shown(admin: httpx.AsyncClient) -> None:
    published = await admin.post("/plans", json=STARTER)
    assert published.status_code == 201 and published.json() == STARTER
    await admin.post(
        "/plans", json={**STARTER, "version": 2, "fee": {"amount": "25", "currency": "USD"}}
    )

    [listed] = (await admin.get("/plans")).json()
    assert (listed["code"], listed["version"], listed["versions"]) == ("starter", 2, 2)
    assert (await admin.get("/plans/starter", params={"version": 1})).json() == STARTER
    assert (await admin.get("/plans/starter")).json()["fee"]["amount"] == "25"

    again = error_of(await admin.post("/plans", json=STARTER), 409)
    assert again["code"] == "plan_version_conflict" and "next version is 3" in again["message"]
    assert error_of(await admin.get("/plans/ghost"), 404)["code"] == "plan_not_found"
    assert error_of(await admin.get("/plans/starter?version=0"), 400)["param"] == "query.version"


async def test_a_json_number_in_a_plan_is_refused(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/plans", json={**STARTER, "fee": {"amount": 20.0, "currency": "USD"}}
    )
    error = error_of(response, 400)
    assert (error["code"], error["param"]) == ("invalid_plan", "plan.fee.amount")
    assert "floats are not exact" in error["message"]
    assert error_of(await admin.post("/plans", json=[STARTER]), 400)["type"] == (
        "invalid_request_error"
    )


async def test_subscriptions_change_and_cancel(admin: httpx.AsyncClient, acme: str) -> None:
    await admin.post("/plans", json={**STARTER, "code": "pro"})
    changed = await admin.post(
        f"/organizations/{acme}/subscription/change",
        json={"plan": "pro", "version": 1, "at": "2026-11-16T00:00:00+00:00"},
    )
    assert changed.status_code == 200 and changed.json()["plan"] == "pro@v1"
    cancelled = await admin.post(
        "/organizations/acme/subscription/cancel", json={"at": "2026-11-20T00:00:00Z"}
    )
    assert cancelled.json()["ends_at"] == "2026-11-20T00:00:00+00:00"
    listed = (await admin.get("/organizations/acme/subscriptions")).json()
    assert [s["plan"] for s in listed] == ["starter@v1", "pro@v1"]

    naive = await admin.post(
        "/organizations/acme/subscriptions", json={"plan": "pro", "at": "2026-12-01T00:00:00"}
    )
    assert error_of(naive, 400)["code"] == "invalid_period"
    unknown = await admin.post("/organizations/ghost/subscriptions", json={"plan": "pro"})
    assert error_of(unknown, 404)["param"] == "organization"
    extra = await admin.post("/organizations/acme/subscriptions", json={"plan": "pro", "when": 1})
    assert error_of(extra, 400)["param"] == "when"


async def test_credit_is_granted_and_shown(admin: httpx.AsyncClient, acme: str) -> None:
    granted = await admin.post(
        "/organizations/acme/wallet/grants",
        json={"amount": "7.50", "currency": "USD", "kind": "paid", "reference": "pay_42"},
    )
    assert granted.status_code == 201, granted.text
    assert granted.json()["grant"]["kind"] == "paid"

    wallet = (await admin.get("/organizations/acme/wallet")).json()
    assert (wallet["balance"], wallet["available"], wallet["currency"]) == ("7.50", "7.50", "USD")
    ledger = (await admin.get("/organizations/acme/wallet/ledger", params={"limit": 5})).json()
    assert [(e["kind"], e["amount"], e["reference"]) for e in ledger["entries"]] == [
        ("top_up", "7.50", "pay_42")
    ]
    opened = await admin.post("/organizations/acme/wallet", json={"currency": "EUR"})
    assert opened.status_code == 201 and opened.json()["balance"] == "0"
    twice = await admin.post("/organizations/acme/wallet", json={"currency": "EUR"})
    assert error_of(twice, 409)["code"] == "conflict"


@pytest.mark.parametrize(
    ("amount", "status", "code", "param"),
    [
        (7.5, 400, None, "amount"),  # a JSON number: inexact by the time it is parsed
        (7, 400, None, "amount"),
        ("-7", 400, "invalid_wallet_operation", "amount"),
        ("seven", 400, "invalid_money", None),
    ],
)
async def test_bad_amounts_are_a_400_in_the_error_shape(
    admin: httpx.AsyncClient,
    acme: str,
    amount: Any,
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    response = await admin.post(
        "/organizations/acme/wallet/grants", json={"amount": amount, "currency": "USD"}
    )
    error = error_of(response, status)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    if isinstance(amount, int | float):
        assert "strings" in error["message"]
    assert error_of(await admin.get("/organizations/acme/wallet"), 404)["param"] == "wallet"


async def test_coupons_and_tax(admin: httpx.AsyncClient, acme: str) -> None:
    coupon = {
        "code": "WELCOME",
        "discount": {"type": "percent_off", "percent": "10"},
        "duration": {"kind": "once", "periods": None},
    }
    assert (await admin.post("/coupons", json=coupon)).status_code == 201
    redeemed = await admin.post(
        "/organizations/acme/coupons", json={"code": "WELCOME", "period": "2026-11"}
    )
    assert redeemed.status_code == 201 and redeemed.json()["first_period"] == "2026-11"
    [listed] = (await admin.get("/coupons")).json()
    assert (listed["code"], listed["redemptions"]) == ("WELCOME", 1)
    again = await admin.post(
        "/organizations/acme/coupons", json={"code": "WELCOME", "period": "2026-12"}
    )
    assert error_of(again, 409)["code"] == "conflict"

    tax = await admin.put("/organizations/acme/tax", json={"name": "VAT", "percent": "20"})
    assert tax.status_code == 200 and tax.json()["percent"] == "20"
    assert (
        error_of(await admin.put("/organizations/acme/tax", json={"percent": 20}), 400)["param"]
        == "percent"
    )
    assert (
        error_of(await admin.put("/organizations/acme/tax", json={"percent": "101"}), 400)["code"]
        == "invalid_tax_rate"
    )


async def test_invoices_are_listed_exported_paid_and_guarded(
    admin: httpx.AsyncClient, acme: str, sqlite_database: Database
) -> None:
    with sqlite_database.session() as session:  # period close is not this API's job
        store = BillingStore(session)
        for invoice_id in ("inv_a", "inv_b"):
            invoice = draft_invoice(
                invoice_id=invoice_id,
                period=Period.month(2026, 11),
                timeline=store.subscriptions.timeline(acme),
                usage=[],
                request_charges={},
            )
            invoice.finalize(datetime(2026, 12, 1, tzinfo=UTC))
            store.invoices.save_invoice(invoice)

    listed = (
        await admin.get("/invoices", params={"organization": "acme", "period": "2026-11"})
    ).json()
    assert [(i["id"], i["status"], i["total"]) for i in listed] == [
        ("inv_a", "finalized", "20.00"),
        ("inv_b", "finalized", "20.00"),
    ]
    shown = await admin.get("/invoices/inv_a")
    assert shown.json()["lines"][0]["kind"] == "fixed_fee"
    exported = await admin.get("/invoices/inv_a", params={"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.text.splitlines()[0].startswith("kind,description,")

    paid = await admin.post("/invoices/inv_a/pay", json={"at": "2026-12-02T00:00:00Z"})
    assert paid.status_code == 200 and paid.json()["status"] == "paid"
    voided = await admin.post("/invoices/inv_b/void")
    assert voided.status_code == 200 and voided.json()["status"] == "void"

    refused = error_of(await admin.post("/invoices/inv_b/pay"), 409)
    assert refused["code"] == "invalid_invoice_transition" and "is void" in refused["message"]
    assert error_of(await admin.post("/invoices/inv_a/void"), 409)["code"] == (
        "invalid_invoice_transition"
    )
    assert [i["status"] for i in (await admin.get("/invoices")).json()] == ["paid", "void"]
    assert error_of(await admin.get("/invoices/inv_missing"), 404)["code"] == "not_found"
    assert error_of(await admin.get("/invoices?status=open"), 400)["param"] == "status"
    assert error_of(await admin.get("/invoices/inv_a?format=xml"), 400)["param"] == "query.format"
    assert error_of(await admin.get("/invoices/inv_missing?format=pdf"), 404)["code"] == (
        "not_found"
    )


async def test_an_invoice_is_served_as_a_pdf_with_its_json_figures(
    admin: httpx.AsyncClient, acme: str
) -> None:
    coupon = {
        "code": "HALF",
        "discount": {"type": "percent_off", "percent": "50"},
        "duration": {"kind": "once", "periods": None},
    }
    assert (await admin.post("/coupons", json=coupon)).status_code == 201
    redeemed = await admin.post(
        "/organizations/acme/coupons", json={"code": "HALF", "period": "2026-11"}
    )
    assert redeemed.status_code == 201, redeemed.text
    taxed = await admin.put("/organizations/acme/tax", json={"name": "VAT", "percent": "19"})
    assert taxed.status_code == 200, taxed.text
    closed = await admin.post("/invoices/close", json={"period": "2026-11", "allow_open": True})
    assert closed.status_code == 200, closed.text
    [invoice_id] = [invoice["id"] for invoice in closed.json()]

    data = (await admin.get(f"/invoices/{invoice_id}")).json()
    response = await admin.get(f"/invoices/{invoice_id}", params={"format": "pdf"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == f'attachment; filename="{invoice_id}.pdf"'
    reader = PdfReader(io.BytesIO(response.content))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert (data["subtotal"], data["discount"], data["tax"], data["total"]) == (
        "20.00", "10.00", "1.90", "11.90",
    )  # fmt: skip
    assert "Organisation acme" in text
    for line in data["lines"]:
        assert f"{line['kind']} {line['description']} {line['amount']} USD" in text
    assert "Subtotal 20.00 USD" in text
    assert "Discount: coupon HALF (50% off) -10.00 USD" in text
    assert "Tax: VAT 19% 1.90 USD" in text
    assert "Total 11.90 USD" in text


async def test_budgets_alert_webhooks_and_period_close_over_http(
    admin: httpx.AsyncClient, acme: str
) -> None:
    set_budget = await admin.put(
        "/organizations/acme/budget",
        json={"amount": "50.00", "currency": "USD", "hard": True, "thresholds": [90]},
    )
    assert set_budget.status_code == 200, set_budget.text
    assert set_budget.json()["thresholds"] == [90] and set_budget.json()["held"] == "0"
    as_number = await admin.put(
        "/organizations/acme/budget", json={"amount": 50, "currency": "USD"}
    )
    assert as_number.status_code == 400
    assert as_number.json()["error"]["param"] == "amount"
    past_the_limit = await admin.put(
        "/organizations/acme/budget",
        json={"amount": "50.00", "currency": "USD", "thresholds": [50, 150]},
    )
    assert past_the_limit.status_code == 400
    assert past_the_limit.json()["error"]["param"] == "thresholds"
    assert [b["limit"] for b in (await admin.get("/organizations/acme/budgets")).json()] == [
        "50.00"
    ]
    removed = await admin.delete("/organizations/acme/budget")
    assert removed.status_code == 204
    again = await admin.delete("/organizations/acme/budget")
    assert again.status_code == 404 and again.json()["error"]["message"] == "no such budget"

    hook = await admin.put("/organizations/acme/alert-webhook", json={"url": "file:///etc"})
    assert hook.status_code == 400 and hook.json()["error"]["param"] == "url"
    assert (await admin.get("/alerts", params={"status": "pending"})).json() == []

    future = await admin.post("/invoices/close", json={"period": "2999-01"})
    assert future.status_code == 400 and "has not ended" in future.json()["error"]["message"]
    closed = await admin.post("/invoices/close", json={"period": "2026-10"})
    assert closed.status_code == 200 and closed.json() == []  # nobody subscribed in October
