"""Billing from the `modelmint` command line: real processes, real exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from modelmint.billing import Period, draft_invoice
from modelmint.billing.store import BillingStore
from modelmint.config import Settings
from modelmint.storage import Database, migrate
from tests.support.processes import cli, cli_json

PLAN: dict[str, Any] = {
    "kind": "subscription",
    "code": "pro",
    "version": 1,
    "fee": {"amount": "30.00", "currency": "USD"},
    "included": {},
    "price_book": {
        "currency": "USD",
        "prices": [
            {
                "target": "*",
                "metric": "output_tokens",
                "charge": {"type": "flat", "amount": "0.60", "per_units": 1_000_000},
            }
        ],
        "model_groups": {},
    },
}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MODELMINT_HOME": str(tmp_path)}


@pytest.fixture(scope="module")
def acme_only(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A home with organisation acme and nothing else; bad input must leave it so."""
    env = {"MODELMINT_HOME": str(tmp_path_factory.mktemp("billing-cli"))}
    cli(env, "orgs", "create", "acme")
    return env


def write(tmp_path: Path, name: str, document: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def test_plans_subscriptions_and_wallets_from_the_command_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert cli_json(env, "plans", "publish", write(tmp_path, "pro.json", PLAN)) == PLAN
    [plan] = cli_json(env, "plans", "list")
    assert (plan["code"], plan["version"], plan["fixed_fee"]) == ("pro", 1, "30.00")
    cli(env, "orgs", "create", "acme")
    subscribed = cli_json(
        env, "subscriptions", "subscribe", "--org", "acme", "--plan", "pro", "--at", "2026-11-01"
    )
    assert (subscribed["plan"], subscribed["starts_at"]) == ("pro@v1", "2026-11-01T00:00:00+00:00")

    granted = cli_json(env, "wallets", "grant", "--org", "acme", "--amount", "12.50", "--paid")
    assert (granted["grant"]["kind"], granted["wallet"]["balance"]) == ("paid", "12.50")
    balance = cli_json(env, "wallets", "balance", "--org", "acme")
    assert (balance["available"], balance["currency"]) == ("12.50", "USD")
    shown = cli(env, "wallets", "ledger", "--org", "acme").stdout
    assert "top_up" in shown and "12.50" in shown


def test_invoices_are_shown_as_csv_paid_and_guarded(env: dict[str, str], tmp_path: Path) -> None:
    cli(env, "plans", "publish", write(tmp_path, "pro.json", PLAN))
    cli(env, "orgs", "create", "acme")
    cli(env, "subscriptions", "subscribe", "--org", "acme", "--plan", "pro", "--at", "2026-11-01")
    org_id = cli_json(env, "subscriptions", "list", "--org", "acme")[0]["organization_id"]
    # Invoices come from period close, which is not a command of this part: draft one here.
    database = Database(Settings(home=tmp_path).resolved_database_url)
    migrate(database)
    try:
        with database.session() as session:
            store = BillingStore(session)
            invoice = draft_invoice(
                invoice_id="inv_cli",
                period=Period.month(2026, 11),
                timeline=store.subscriptions.timeline(org_id),
                usage=[],
                request_charges={},
            )
            invoice.finalize(datetime(2026, 12, 1, tzinfo=UTC))
            store.invoices.save_invoice(invoice)
    finally:
        database.dispose()

    csv = cli(env, "invoices", "show", "inv_cli", "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("kind,description,") and csv[1].startswith("fixed_fee,pro@v1 fee")
    no_file = cli(env, "invoices", "show", "inv_cli", "--format", "pdf", check=False)
    assert no_file.returncode == 2 and "give --output FILE" in no_file.stderr
    assert no_file.stdout == ""
    pdf_path = tmp_path / "inv_cli.pdf"
    cli(env, "invoices", "show", "inv_cli", "--format", "pdf", "--output", str(pdf_path))
    pages = PdfReader(pdf_path).pages
    text = " ".join(" ".join(page.extract_text() for page in pages).split())
    assert "Organisation acme" in text and "Total 30.00 USD" in text
    [listed] = cli_json(env, "invoices", "list", "--org", "acme")
    assert (listed["id"], listed["status"], listed["total"]) == ("inv_cli", "finalized", "30.00")
    assert cli_json(env, "invoices", "pay", "inv_cli")["status"] == "paid"
    refused = cli(env, "invoices", "void", "inv_cli", check=False)
    assert refused.returncode == 5 and "cannot become void" in refused.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("wallets", "grant", "--org", "acme", "--amount=-5"), 2, "must be positive"),
        (("wallets", "grant", "--org", "acme", "--amount", "lots"), 2, "not a decimal number"),
        (("wallets", "grant", "--org", "ghost", "--amount", "5"), 4, "no organisation"),
        (("wallets", "balance", "--org", "acme"), 4, "has no wallet"),
        (("plans", "show", "ghost"), 4, "no plan 'ghost'"),
        (("subscriptions", "subscribe", "--org", "acme", "--plan", "ghost"), 4, "no plan"),
        (("tax", "set", "--org", "acme", "--percent", "150"), 2, "between 0 and 100"),
        (("invoices", "pay", "inv_missing"), 4, "no invoice"),
        (("invoices", "list", "--status", "open"), 2, "is not one of"),
        (("coupons", "redeem", "X", "--org", "acme", "--period", "26-11"), 2, "not a month"),
        (("budgets", "set", "--org", "acme", "--amount", "-1"), 2, "must be positive"),
        (("budgets", "set", "--org", "acme", "--amount", "ten"), 2, "not a decimal number"),
        (("budgets", "set", "--org", "acme", "--amount", "5", "--thresholds", "5O"), 2, "percents"),
        (
            ("budgets", "set", "--org", "acme", "--amount", "5", "--thresholds", "50,150"),
            2,
            "percents of the limit, 1 to 100; got 150",
        ),
        (("budgets", "set", "--org", "acme", "--amount", "5", "--key", "key_x"), 4, "no API key"),
        (("budgets", "remove", "--org", "acme"), 4, "no such budget"),
        (("alerts", "webhook", "--org", "acme", "--url", "ftp://x"), 2, "http(s) URL"),
        (("alerts", "list", "--status", "lost"), 2, "alert status is one of"),
        (("invoices", "close", "--period", "2026-13"), 2, "month must be 1..12"),
        (("invoices", "close", "--period", "2999-01"), 2, "has not ended"),
    ],
)
def test_bad_billing_input_gives_a_message_and_exit_code(
    acme_only: dict[str, str], args: tuple[str, ...], code: int, message: str
) -> None:
    result = cli(acme_only, *args, check=False)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_plan_file_is_checked_before_anything_is_stored(
    env: dict[str, str], tmp_path: Path
) -> None:
    float_fee = {**PLAN, "fee": {"amount": 30.0, "currency": "USD"}}
    result = cli(env, "plans", "publish", write(tmp_path, "bad.json", float_fee), check=False)
    assert result.returncode == 2 and "floats are not exact" in result.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = cli(env, "plans", "publish", str(broken), check=False)
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    cli(env, "plans", "publish", write(tmp_path, "pro.json", PLAN))
    again = cli(env, "plans", "publish", write(tmp_path, "pro.json", PLAN), check=False)
    assert again.returncode == 5 and "the next version is 2" in again.stderr
    assert [p["versions"] for p in cli_json(env, "plans", "list")] == [1]


def test_budgets_and_alert_webhooks_from_the_command_line(acme_only: dict[str, str]) -> None:
    budget = cli_json(
        acme_only, "budgets", "set", "--org", "acme", "--amount", "25.00", "--soft",
        "--thresholds", "80,50", "--json",
    )  # fmt: skip
    assert (budget["limit"], budget["hard"], budget["thresholds"]) == ("25.00", False, [50, 80])
    assert budget["spent"] == "0"
    listed = cli_json(acme_only, "budgets", "list", "--org", "acme", "--json")
    assert [b["limit"] for b in listed] == ["25.00"]
    hook = cli_json(
        acme_only, "alerts", "webhook", "--org", "acme", "--url", "https://example.test/h",
        "--json",
    )  # fmt: skip
    assert hook["alert_webhook_url"] == "https://example.test/h"
    cli(acme_only, "budgets", "remove", "--org", "acme")
    assert cli_json(acme_only, "budgets", "list", "--org", "acme", "--json") == []
    assert cli_json(acme_only, "alerts", "list", "--json") == []


def test_a_soft_budget_set_again_stays_soft_and_alerts_list_their_metric(
    env: dict[str, str], tmp_path: Path
) -> None:
    cli(env, "orgs", "create", "acme")
    cli(env, "budgets", "set", "--org", "acme", "--amount", "25.00", "--soft")
    again = cli_json(env, "budgets", "set", "--org", "acme", "--amount", "40.00")
    assert (again["limit"], again["hard"]) == ("40.00", False)
    said = cli(env, "budgets", "set", "--org", "acme", "--amount", "40.00", "--hard").stdout
    assert said.startswith("Hard budget of 40.00 USD")
    database = Database(Settings(home=tmp_path).resolved_database_url)
    migrate(database)
    try:
        with database.session() as session:
            org_id = cli_json(env, "budgets", "list", "--org", "acme")[0]["organization_id"]
            BillingStore(session).alerts.raise_alert(
                org_id, api_key_id="", kind="allowance", subject="output_tokens",
                period=Period.month(2026, 11), threshold=80, payload={},
            )  # fmt: skip
    finally:
        database.dispose()
    header, row = (
        [cell.strip() for cell in line.strip("┃│ ").replace("┃", "│").split("│")]
        for line in cli(env, "alerts", "list").stdout.splitlines()[1:4:2]
    )
    assert dict(zip(header, row, strict=True)) | {"created": "-"} == {
        "created": "-", "organisation": "acme", "kind": "allowance", "metric": "output_tokens",
        "threshold": "80%", "status": "pending", "attempts": "0",
    }  # fmt: skip


def test_a_month_is_previewed_before_it_is_closed_for_good(
    env: dict[str, str], tmp_path: Path
) -> None:
    cli(env, "plans", "publish", write(tmp_path, "pro.json", PLAN))
    cli(env, "orgs", "create", "acme")
    cli(env, "subscriptions", "subscribe", "--org", "acme", "--plan", "pro", "--at", "2026-11-01")
    month = f"{datetime.now(UTC):%Y-%m}"  # still running: a preview needs no --allow-open
    [draft] = cli_json(env, "invoices", "close", "--period", month, "--dry-run")
    assert (draft["status"], draft["created"], draft["stored"]) == ("draft", True, False)
    assert draft["total"] == "30.00"
    shown = cli(env, "invoices", "close", "--period", month, "--dry-run").stdout
    assert "would be created" in shown and "nothing was stored" in shown
    assert cli_json(env, "invoices", "list") == []
    [closed] = cli_json(env, "invoices", "close", "--period", month, "--allow-open")
    assert (closed["id"], closed["status"], closed["stored"]) == (draft["id"], "finalized", True)
