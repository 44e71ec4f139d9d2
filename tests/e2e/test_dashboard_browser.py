"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
`modelmint up` whose data came in through the real API and CLI.

Every page is checked for console errors and for requests that leave the server (the
dashboard must work offline: plotly.js comes from the installed package). Screenshots
are kept under var/test-artifacts/dashboard/ (laptop and phone widths).

Chromium comes from Debian (scripts/ensure-command.sh chromium installs it); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from modelmint.clock import utcnow
from tests.support.processes import Server, cli_json

pytestmark = pytest.mark.slow

playwright_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "dashboard"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
EMBED_MODEL = "all-minilm-l6-v2"
CHAT_MODEL = "smollm2-135m-instruct"
CUSTOMERS = ("demo-subscription", "demo-prepaid")


@dataclass
class Seeded:
    server: Server
    month: str
    invoices: list[dict[str, Any]]


def _traffic(server: Server, organization: str, requests: int) -> None:
    created = httpx.post(
        server.url + "/admin/keys",
        json={"organization": organization, "name": "traffic"},
        headers={"Authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    client = OpenAI(base_url=server.url + "/v1", api_key=created.json()["key"], max_retries=0)
    for n in range(requests):
        client.embeddings.create(model=EMBED_MODEL, input=[f"dashboard {organization} {n}"] * 3)
    client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A server with the demo customers' traffic and this month's invoices closed."""
    server = Server(home=tmp_path_factory.mktemp("dashboard-e2e"))
    server.start()
    try:
        for count, organization in enumerate(CUSTOMERS):
            _traffic(server, organization, requests=4 + 3 * count)
        month = f"{utcnow():%Y-%m}"
        invoices = cli_json(server.env, "invoices", "close", "--period", month, "--allow-open")
        assert invoices, "the demo customers should have been invoiced"
        yield Seeded(server, month, invoices)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        message = "Debian's chromium is not installed: run scripts/ensure-command.sh chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A browser page that records console errors and any request leaving the server."""

    page: Any
    base_url: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.page.goto(self.base_url + path)
        self.page.wait_for_load_state("load")

    def login(self, token: str) -> None:
        self.open("/dashboard")
        assert "/dashboard/login" in self.page.url
        self.page.fill("#token", token)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")
        assert self.page.url.rstrip("/").endswith("/dashboard"), self.page.url

    def charts_drawn(self) -> int:
        """Waits until every chart on the page is drawn by plotly.js; returns how many."""
        count: int = self.page.locator(".chart").count()
        if count:
            # Locator assertions run in Playwright's own world: the pages' CSP forbids
            # the eval that wait_for_function would need.
            drawn = self.page.locator('.chart[data-drawn="true"]')
            playwright_api.expect(drawn).to_have_count(count, timeout=15_000)
            assert self.page.locator(".chart .main-svg").count() >= count
        return count

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.foreign == [], f"requests left the server: {self.foreign}"


def _tab(browser: Any, seeded: Seeded, viewport: dict[str, int]) -> Iterator[Tab]:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    tab = Tab(page, seeded.server.url)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: tab.errors.append(str(exc)))

    def guard(route: Any) -> None:
        if route.request.url.startswith(seeded.server.url):
            route.continue_()
        else:
            tab.foreign.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def tab(browser: Any, seeded: Seeded) -> Iterator[Tab]:
    yield from _tab(browser, seeded, LAPTOP)


@pytest.fixture
def phone(browser: Any, seeded: Seeded) -> Iterator[Tab]:
    yield from _tab(browser, seeded, PHONE)


def _amount(text: str) -> Decimal:
    found = re.search(r"-?[\d,]+\.\d+", text)
    assert found is not None, f"no amount in {text!r}"
    return Decimal(found.group(0).replace(",", ""))


def test_login_leads_to_an_overview_with_drawn_charts(tab: Tab, seeded: Seeded) -> None:
    tab.login(seeded.server.admin_token)
    assert tab.charts_drawn() >= 2
    # The charts hold the seeded traffic, not empty axes.
    requests = tab.page.evaluate(
        "document.getElementById('chart-requests').data[0].y.reduce((a, b) => a + b, 0)"
    )
    assert requests >= 2 * (len(CUSTOMERS) + 4)
    assert _amount(tab.page.locator("#overview-stats .stat").first.inner_text()) > 0
    tab.screenshot("overview-laptop")
    tab.assert_clean()


def test_a_wrong_token_does_not_log_in(tab: Tab) -> None:
    tab.open("/dashboard/login")
    tab.page.fill("#token", "not-the-admin-token")
    tab.page.click("button[type=submit]")
    tab.page.wait_for_selector(".alert-error")
    assert "/dashboard/login" in tab.page.url
    tab.open("/dashboard/keys")
    assert "/dashboard/login" in tab.page.url
    # The refused login logs a 401 resource error in the console; nothing else may.
    assert all("401" in error for error in tab.errors), tab.errors


def test_models_customers_and_usage_pages_show_the_traffic(tab: Tab, seeded: Seeded) -> None:
    tab.login(seeded.server.admin_token)
    tab.open("/dashboard/models")
    assert tab.charts_drawn() == 1
    models_table = tab.page.locator("#models-table").inner_text()
    assert EMBED_MODEL in models_table and CHAT_MODEL in models_table
    assert tab.page.locator("#deployments-table tbody tr").count() >= 2
    tab.screenshot("models-laptop")

    tab.open("/dashboard/customers")
    row = tab.page.locator("#customers-table tr", has_text="demo-prepaid")
    assert row.count() == 1
    with tab.page.expect_navigation():
        row.locator("a").first.click()
    assert tab.charts_drawn() == 2
    assert EMBED_MODEL in tab.page.locator("#customer-usage").inner_text()
    tab.screenshot("customer-laptop")

    tab.open("/dashboard/usage?organization=demo-prepaid&status=ok&page_size=25")
    rows = tab.page.locator("#usage-table tbody tr")
    assert rows.count() >= 8
    for text in rows.all_inner_texts():
        assert "demo-prepaid" in text and "200" in text
    tab.screenshot("usage-laptop")
    tab.assert_clean()


def test_create_a_key_see_its_secret_once_and_revoke_it(tab: Tab, seeded: Seeded) -> None:
    tab.login(seeded.server.admin_token)
    tab.open("/dashboard/keys")
    if not tab.page.locator("#create-key").is_visible():
        tab.page.click("details.card > summary")
    tab.page.select_option("#create-key select[name=organization]", "demo-subscription")
    tab.page.fill("#create-key input[name=name]", "from-the-browser")
    with tab.page.expect_navigation():
        tab.page.click("#create-key button[type=submit]")
    secret = tab.page.locator("#new-key-secret").inner_text().strip()
    assert secret.startswith("mm-")
    tab.screenshot("key-created-laptop")

    api = httpx.Client(base_url=seeded.server.url + "/v1", timeout=30)
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": EMBED_MODEL, "input": "the new key works"}
    assert api.post("/embeddings", json=body, headers=headers).status_code == 200

    tab.open("/dashboard/keys")
    assert secret not in tab.page.content()
    row = tab.page.locator("#keys-table tr", has_text=secret[:11])
    tab.page.once("dialog", lambda dialog: dialog.accept())
    with tab.page.expect_navigation():
        row.locator("button", has_text="Revoke").click()
    assert secret[:11] in tab.page.locator("#revoked-notice").inner_text()
    assert "revoked" in tab.page.locator("#keys-table tr", has_text=secret[:11]).inner_text()

    deadline = time.monotonic() + 5
    while api.post("/embeddings", json=body, headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)
    tab.assert_clean()


def test_an_invoice_opens_as_a_printable_page(tab: Tab, seeded: Seeded) -> None:
    invoice = max(seeded.invoices, key=lambda i: Decimal(i["total"]))
    tab.login(seeded.server.admin_token)
    tab.open("/dashboard/invoices")
    with tab.page.expect_navigation():
        tab.page.click(f"a:text-is('{invoice['id']}')")
    total = tab.page.locator("#invoice-total").inner_text()
    assert _amount(total) == Decimal(invoice["total"]) and invoice["currency"] in total
    lines = tab.page.locator(".invoice-lines tbody tr")
    assert lines.count() == len(invoice["lines"])
    tab.screenshot("invoice-laptop")
    tab.page.emulate_media(media="print")
    assert not tab.page.locator(".topbar").is_visible()
    tab.screenshot("invoice-print")
    tab.assert_clean()


FEE_ONLY = """
[plans.starter]
kind = "subscription"
fee = "30.00"
included = { input_tokens = 1_000_000, output_tokens = 1_000_000 }
"""


def _simulated_row(tab: Tab, organization: str) -> list[Decimal]:
    """Actual revenue, simulated revenue and change of one organisation's result row."""
    cells = tab.page.locator("#simulation-table tr", has_text=organization).locator("td")
    return [_amount(cells.nth(n).inner_text()) for n in (3, 4, 5)]


def test_simulate_the_sample_prices_and_an_uploaded_file(
    tab: Tab, seeded: Seeded, tmp_path: Path
) -> None:
    tab.login(seeded.server.admin_token)
    tab.open("/dashboard/simulator")
    assert "[prices." in tab.page.input_value("#prices")  # the sample is there to start from
    with tab.page.expect_navigation():
        tab.page.click("#simulator-form button[type=submit]")
    assert tab.charts_drawn() == 1
    table = tab.page.locator("#simulation-table").inner_text()
    assert all(name in table for name in CUSTOMERS)
    assert "pro" in tab.page.locator("#plan-options").inner_text()
    tab.screenshot("simulator-laptop")

    # A file picked from disk lands in the text area and is what gets simulated.
    candidate = tmp_path / "fee-only.toml"
    candidate.write_text(FEE_ONLY)
    tab.page.set_input_files("input[type=file][data-into=prices]", str(candidate))
    playwright_api.expect(tab.page.locator("#prices")).to_have_value(re.compile(r"30\.00"))
    with tab.page.expect_navigation():
        tab.page.click("#simulator-form button[type=submit]")
    actual, simulated, change = _simulated_row(tab, "demo-subscription")
    assert change == simulated - actual and change > 0
    # The fee goes from 20.00 to 30.00 and usage stays within the allowance.
    assert abs(simulated / actual - Decimal("1.5")) < Decimal("0.01")
    prepaid = _simulated_row(tab, "demo-prepaid")
    assert prepaid[2] == 0

    tab.page.fill("#prices", "this is = not toml [")
    with tab.page.expect_navigation():
        tab.page.click("#simulator-form button[type=submit]")
    assert "not valid TOML" in tab.page.locator("#simulation-error").inner_text()
    # The refused form answers 400; the console reports that resource error only.
    assert all("400" in error for error in tab.errors), tab.errors


PHONE_PAGES = (
    "/dashboard",
    "/dashboard/models",
    "/dashboard/customers",
    "/dashboard/customers/demo-subscription",
    "/dashboard/keys",
    "/dashboard/invoices",
    "/dashboard/usage",
    "/dashboard/simulator",
    "/dashboard/compare",
)


def test_pages_fit_a_phone_without_sideways_scrolling(phone: Tab, seeded: Seeded) -> None:
    phone.login(seeded.server.admin_token)
    for path in PHONE_PAGES:
        phone.open(path)
        phone.charts_drawn()
        overflow = phone.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390px"
        name = path.strip("/").replace("/", "-") or "dashboard"
        phone.screenshot(f"{name}-phone")
    phone.assert_clean()
