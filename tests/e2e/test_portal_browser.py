"""The customer portal in Debian's Chromium (Playwright) against a real `modelmint up`,
with localstripe as Stripe and its stand-in Stripe.js for the card form."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from tests.e2e.test_dashboard_browser import browser  # noqa: F401 - fixture
from tests.support.localstripe import MONTHLY_PLAN, SECRET_KEY, WEBHOOK_SECRET, LocalStripe
from tests.support.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def portal_server(
    tmp_path_factory: pytest.TempPathFactory, localstripe: LocalStripe
) -> Iterator[dict[str, Any]]:
    """acme and globex with November invoiced; payments through localstripe."""
    home = tmp_path_factory.mktemp("portal-e2e")
    server = Server(
        home=home,
        extra_env={
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "MODELMINT_STRIPE_API_BASE": localstripe.api_base,
            "MODELMINT_STRIPE_JS_URL": f"{localstripe.api_base}/js.stripe.com/v3/",
            "MODELMINT_LOAD_BUNDLED_MODELS": "false",
        },
    )
    server.start()
    try:
        plan = home / "pro.json"
        plan.write_text(json.dumps(MONTHLY_PLAN))
        cli(server.env, "plans", "publish", str(plan))
        for org in ("acme", "globex"):
            cli(server.env, "orgs", "create", org)
            cli(server.env, "keys", "create", "--org", org, "--name", f"{org}-main")
            cli(
                server.env,
                "subscriptions",
                "subscribe",
                "--org",
                org,
                "--plan",
                "pro",
                "--at",
                "2026-11-01",
            )
        invoices = cli_json(server.env, "invoices", "close", "--period", "2026-11")
        by_org = {i["organization_id"]: i["id"] for i in invoices}
        orgs = {o["name"]: o["id"] for o in cli_json(server.env, "orgs", "list")}
        yield {
            "server": server,
            "invoice": {name: by_org[org_id] for name, org_id in orgs.items() if org_id in by_org},
            "stripe": localstripe,
        }
    finally:
        server.stop()


def sign_in_link(server: Server, org: str, ttl: str = "1h") -> str:
    issued = cli_json(
        server.env, "portal", "link", "--org", org, "--ttl", ttl, "--base-url", server.url
    )
    return str(issued["url"])


def open_tab(browser: Any, stripe_origin: str) -> tuple[Any, Any, list[str]]:  # noqa: F811
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"{m.text} {m.location}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    return context, page, problems


def test_a_customer_signs_in_manages_keys_downloads_an_invoice_and_saves_a_card(
    browser: Any,  # noqa: F811
    portal_server: dict[str, Any],
    tmp_path: Path,
) -> None:
    server: Server = portal_server["server"]
    stripe: LocalStripe = portal_server["stripe"]
    url = sign_in_link(server, "acme")
    context, page, problems = open_tab(browser, stripe.api_base)
    try:
        page.goto(url)
        with page.expect_navigation():
            page.click("#sign-in")
        assert page.url.rstrip("/").endswith("/portal")
        assert page.locator(".brand").inner_text() == "acme"

        page.goto(server.url + "/portal/invoices")
        acme, globex = portal_server["invoice"]["acme"], portal_server["invoice"]["globex"]
        assert page.locator("#portal-invoices").inner_text().count(acme) == 1
        assert globex not in page.content()
        with page.expect_download() as download:
            page.click(".invoice-csv")
        saved = tmp_path / "invoice.csv"
        download.value.save_as(saved)
        assert saved.read_text().startswith("kind,description")
        with page.expect_download() as download:
            page.click(".invoice-pdf")
        pdf = tmp_path / "invoice.pdf"
        download.value.save_as(pdf)
        text = "".join(p.extract_text() for p in PdfReader(str(pdf)).pages)
        assert acme in text and "30.00" in text

        page.goto(server.url + "/portal/keys")
        page.fill("#create-key input[name=name]", "from-the-browser")
        with page.expect_navigation():
            page.click("#create-key button[type=submit]")
        secret = page.locator("#new-secret").inner_text()
        assert secret.startswith("mm-")
        row = page.locator("#portal-keys tr", has_text="from-the-browser")
        with page.expect_navigation():
            row.locator("button", has_text="Revoke").click()
        row = page.locator("#portal-keys tr", has_text="from-the-browser")
        assert "inactive" in row.inner_text()
        assert "globex-main" not in page.content()

        page.goto(server.url + "/portal/billing")
        with page.expect_navigation():
            page.click("#add-card")
        card = page.locator("#card-element input")
        playwright_api.expect(card).to_have_count(5, timeout=15_000)
        for placeholder, value in (
            ("number", "4242424242424242"),
            ("exp_month", "12"),
            ("exp_year", "34"),
            ("cvc", "123"),
            ("postal_code", "75001"),
        ):
            page.fill(f"#card-element input[placeholder={placeholder}]", value)
        with page.expect_navigation(timeout=30_000):
            page.click("#save-card")
        assert "done=card" in page.url
        assert page.locator("#payment-method").inner_text() == "visa 4242"
        assert problems == [], problems

        # Another organisation's invoice, and the operator's dashboard, stay out of reach.
        response = page.goto(f"{server.url}/portal/invoices/{globex}.csv")
        assert response is not None and response.status == 404
        page.goto(server.url + "/dashboard")
        assert "/dashboard/login" in page.url
    finally:
        context.close()
    status = cli_json(server.env, "payments", "status", "--org", "acme")
    assert status["payment_method_label"] == "visa 4242"


def test_a_reused_or_expired_link_is_refused(
    browser: Any,  # noqa: F811
    portal_server: dict[str, Any],
) -> None:
    server: Server = portal_server["server"]
    used = sign_in_link(server, "globex")
    expired = sign_in_link(server, "globex", ttl="1s")
    context, page, _ = open_tab(browser, "")
    try:
        page.goto(used)
        with page.expect_navigation():
            page.click("#sign-in")
        assert page.url.rstrip("/").endswith("/portal")
    finally:
        context.close()
    time.sleep(1.5)  # let the one-second link's lifetime pass (a fixed lifetime, not a race)
    for url in (used, expired):
        context, page, _ = open_tab(browser, "")
        try:
            page.goto(url)
            with page.expect_navigation():
                page.click("#sign-in")
            assert "already used" in page.content() or "expired" in page.content()
            page.goto(server.url + "/portal")
            assert page.locator("#signed-out").count() == 1
        finally:
            context.close()
