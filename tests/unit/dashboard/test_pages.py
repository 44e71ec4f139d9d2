"""The dashboard's pages over a real SQLite database: keys, customers, invoices, reports and
the simulator, each reached through HTTP with a logged-in session."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from modelmint import accounts
from modelmint.app import create_app
from modelmint.billing.periods import Period
from modelmint.billing_admin import close_period
from modelmint.clock import utcnow
from modelmint.config import Settings
from modelmint.dashboard.assets import plotly_js_path
from modelmint.dashboard.pages.simulator import sample_prices
from modelmint.demo.billing import seed_demo_billing
from modelmint.storage import Database
from modelmint.storage.tables import ApiKey, Payment, PaymentAccount
from tests.unit.dashboard.conftest import Dashboard, build_app

PAGES = (
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


@pytest.fixture(scope="module")
def seeded(shared_database: Database) -> Database:
    """Demo plans and customers, an extra organisation, and this month's invoices."""
    with shared_database.session() as session:
        seed_demo_billing(session)
        accounts.create_org(session, "acme")
    close_period(shared_database, Period.containing(utcnow()), now=utcnow(), allow_open=True)
    return shared_database


@pytest.fixture
def admin(seeded: Database) -> Iterator[tuple[Dashboard, str]]:
    app = build_app(seeded)
    with TestClient(app) as client:
        dashboard = Dashboard(app, client)
        yield dashboard, dashboard.login()


def _invoice_ids(html: str) -> list[str]:
    return re.findall(r'href="/dashboard/invoices/(inv_[^"/]+)"', html)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_with_scripts_from_this_server_only(
    admin: tuple[Dashboard, str], path: str
) -> None:
    dashboard, _ = admin
    response = dashboard.client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    sources = re.findall(r'<script[^>]*\ssrc="([^"]+)"', response.text)
    assert sources and all(src.startswith("/dashboard/static/") for src in sources)
    assert "cdn" not in response.text.lower()
    assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\"))[^>]*>", response.text)


def test_chart_pages_load_plotly_and_carry_figures_as_data(admin: tuple[Dashboard, str]) -> None:
    dashboard, _ = admin
    html = dashboard.client.get("/dashboard").text
    assert '<script src="/dashboard/static/vendor/plotly.min.js" defer>' in html
    assert 'id="chart-money-figure"' in html and 'type="application/json"' in html


def test_plotly_is_served_from_the_installed_package(admin: tuple[Dashboard, str]) -> None:
    dashboard, _ = admin
    response = dashboard.client.get("/dashboard/static/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response.content == plotly_js_path().read_bytes()
    again = dashboard.client.get(
        "/dashboard/static/vendor/plotly.min.js",
        headers={"If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304
    # Nothing else of the plotly package is reachable.
    assert dashboard.client.get("/dashboard/static/vendor/widgetbundle.js").status_code == 404
    assert dashboard.client.get("/dashboard/static/../templates/base.html").status_code == 404


def test_a_new_key_is_shown_once_and_works(admin: tuple[Dashboard, str], seeded: Database) -> None:
    dashboard, token = admin
    response = dashboard.client.post(
        "/dashboard/keys",
        data={"csrf_token": token, "organization": "acme", "name": "ci", "rpm": "60"},
    )
    assert response.status_code == 201
    secret = re.search(r'id="new-key-secret">(mm-[^<]+)<', response.text)
    assert secret is not None
    with seeded.session() as session:
        found = accounts.lookup_key(session, secret.group(1))
        assert found is not None and found.rpm_limit == 60
    assert secret.group(1) not in dashboard.client.get("/dashboard/keys").text


def test_a_bad_key_form_says_why_and_creates_nothing(
    admin: tuple[Dashboard, str], seeded: Database
) -> None:
    dashboard, token = admin
    with seeded.session() as session:
        before = len(session.scalars(select(ApiKey)).all())
    response = dashboard.client.post(
        "/dashboard/keys", data={"csrf_token": token, "organization": "acme", "rpm": "lots"}
    )
    assert response.status_code == 400
    assert "rpm must be a whole number" in response.text
    with seeded.session() as session:
        assert len(session.scalars(select(ApiKey)).all()) == before


def test_key_names_are_escaped(admin: tuple[Dashboard, str]) -> None:
    dashboard, token = admin
    name = '<script>alert("x")</script>'
    dashboard.client.post(
        "/dashboard/keys", data={"csrf_token": token, "organization": "acme", "name": name}
    )
    html = dashboard.client.get("/dashboard/keys").text
    assert name not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_revoking_a_key_marks_it_revoked(admin: tuple[Dashboard, str], seeded: Database) -> None:
    dashboard, token = admin
    with seeded.session() as session:
        row, _ = accounts.create_key(session, accounts.get_org(session, "acme"), name="doomed")
        key_id = row.id
    response = dashboard.client.post(
        f"/dashboard/keys/{key_id}/revoke", data={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/keys?revoked={key_id}"
    with seeded.session() as session:
        assert session.get(ApiKey, key_id).revoked_at is not None  # type: ignore[union-attr]
    page = dashboard.client.get(response.headers["location"]).text
    assert 'id="revoked-notice"' in page


def test_an_invoice_has_a_printable_view_and_a_csv(admin: tuple[Dashboard, str]) -> None:
    dashboard, _ = admin
    listing = dashboard.client.get("/dashboard/invoices?organization=demo-subscription").text
    [invoice_id] = set(_invoice_ids(listing))
    page = dashboard.client.get(f"/dashboard/invoices/{invoice_id}")
    assert page.status_code == 200
    assert "starter@v1 fee" in page.text
    assert re.search(
        r'id="invoice-total"><span class="amount" title="20\.00 USD">20\.00', page.text
    )
    assert "@media print" in dashboard.client.get("/dashboard/static/dashboard.css").text
    pdf = dashboard.client.get(f"/dashboard/invoices/{invoice_id}/pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    csv = dashboard.client.get(f"/dashboard/invoices/{invoice_id}/csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("kind,description,plan")


def test_payment_state_is_shown_per_invoice_and_per_customer(
    admin: tuple[Dashboard, str], seeded: Database
) -> None:
    dashboard, _ = admin
    listing = dashboard.client.get("/dashboard/invoices?organization=demo-subscription").text
    [invoice_id] = set(_invoice_ids(listing))
    now = utcnow()
    with seeded.session() as session:
        org = accounts.get_org(session, "demo-subscription")
        session.add(
            PaymentAccount(
                organization_id=org.id,
                provider="stripe",
                customer_id="cus_1",
                payment_method_id="pm_1",
                method_label="visa 0341",
                blocked_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        session.add(
            Payment(
                id="pay_dashboard",
                organization_id=org.id,
                kind="invoice",
                invoice_id=invoice_id,
                amount_minor=2000,
                currency="USD",
                status="failed",
                attempts=2,
                failure="Your card was declined.",
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )
    try:
        listing = dashboard.client.get("/dashboard/invoices?organization=demo-subscription").text
        invoice = dashboard.client.get(f"/dashboard/invoices/{invoice_id}").text
        customers = dashboard.client.get("/dashboard/customers").text
        customer = dashboard.client.get("/dashboard/customers/demo-subscription").text
    finally:
        with seeded.session() as session:
            session.execute(delete(Payment).where(Payment.id == "pay_dashboard"))
            session.execute(delete(PaymentAccount).where(PaymentAccount.customer_id == "cus_1"))
    failed = 'badge-payment-failed" title="Your card was declined.">failed</span>'
    assert failed in listing and "attempt 2" in listing
    assert failed in invoice and failed in customer
    assert "badge-blocked" in customers and "visa 0341" in customers
    assert "BLOCKED since" in customer and "visa 0341" in customer


def test_an_unknown_invoice_is_an_html_404(admin: tuple[Dashboard, str]) -> None:
    dashboard, _ = admin
    response = dashboard.client.get("/dashboard/invoices/inv_nothing_here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def test_closing_a_month_from_the_invoices_page(admin: tuple[Dashboard, str]) -> None:
    dashboard, token = admin
    response = dashboard.client.post(
        "/dashboard/invoices/close",
        data={"csrf_token": token, "period": "2020-01"},
        follow_redirects=False,
    )
    # Nobody had a plan in 2020: the month closes with no invoice.
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/invoices?period=2020-01&closed=0"


def test_a_bad_window_is_a_400_page(admin: tuple[Dashboard, str]) -> None:
    dashboard, _ = admin
    for query in ("period=2026-13", "days=0", "start=2026-11-05&end=2026-11-01"):
        response = dashboard.client.get(f"/dashboard?{query}")
        assert response.status_code == 400, query
        assert response.headers["content-type"].startswith("text/html")


def test_the_usage_explorer_refuses_a_bad_status_filter(admin: tuple[Dashboard, str]) -> None:
    dashboard, _ = admin
    assert dashboard.client.get("/dashboard/usage?status=okay").status_code == 400
    assert dashboard.client.get("/dashboard/usage?status=4xx&since=2026-11-01").status_code == 200


def test_simulating_the_sample_shows_each_customer(admin: tuple[Dashboard, str]) -> None:
    dashboard, token = admin
    month = f"{utcnow():%Y-%m}"
    response = dashboard.client.post(
        "/dashboard/simulator",
        data={"csrf_token": token, "period": month, "prices": sample_prices()},
    )
    assert response.status_code == 200, response.text
    assert 'id="simulation-table"' in response.text
    assert "demo-subscription" in response.text and "demo-prepaid" in response.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prices": "nonsense = = ["}, "not valid TOML"),
        ({"prices": "[plans.x]\nkind = 'gold'"}, "kind"),
        ({"prices": ""}, "paste a candidate"),
        ({"elasticity": "steep"}, "elasticity must be a number"),
        ({"elasticity": "-50"}, "elasticity must be between"),
    ],
)
def test_a_bad_simulation_form_keeps_the_text_and_says_why(
    admin: tuple[Dashboard, str], fields: dict[str, str], message: str
) -> None:
    dashboard, token = admin
    data = {"csrf_token": token, "prices": "[plans.starter]\nkind = 'free'", **fields}
    response = dashboard.client.post("/dashboard/simulator", data=data)
    assert response.status_code == 400
    assert message in response.text
    assert 'id="simulation-error"' in response.text


def test_the_dashboard_stays_out_of_the_openapi_document(seeded: Database) -> None:
    app = create_app(Settings(admin_token="x", load_bundled_models=False))
    assert not [path for path in app.openapi()["paths"] if path.startswith("/dashboard")]


def test_customers_page_shows_growth_and_cohorts_up_to_this_month(
    admin: tuple[Dashboard, str],
) -> None:
    dashboard, _ = admin
    html = dashboard.client.get("/dashboard/customers").text
    growth = html[html.index('id="growth-table"') : html.index('id="cohort-table"')]
    assert f"<td>{utcnow():%Y-%m}</td>" in growth
    assert growth.count("<tr>") == 1 + 6  # the header and six months
