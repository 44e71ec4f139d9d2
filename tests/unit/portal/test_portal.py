"""The customer portal over HTTP on a real SQLite database: sign-in links, the scope of a
session, keys, invoices, and its separation from the operator's dashboard."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import delete

from modelmint import accounts, billing_admin
from modelmint.billing.periods import Period
from modelmint.billing_admin import close_period
from modelmint.clock import utcnow
from modelmint.config import Settings
from modelmint.dashboard import mount_dashboard
from modelmint.errors import InvalidRequest
from modelmint.payments.collection import Payments
from modelmint.payments.stripe_provider import StripeProvider
from modelmint.platform import Platform
from modelmint.portal import mount_portal
from modelmint.portal.links import LinkRefused, create_link, parse_ttl, use_link
from modelmint.storage import Database, migrate
from modelmint.storage.tables import UsageRecord
from modelmint.web.errors import install_error_handlers
from tests.support.localstripe import (
    GOOD_CARD,
    MONTHLY_PLAN,
    SECRET_KEY,
    WEBHOOK_SECRET,
    LocalStripe,
)
from tests.unit.dashboard.conftest import ADMIN_TOKEN, Dashboard, form_token

NOVEMBER = Period.month(2026, 11)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """acme and globex, each on a 30.00 plan with November's invoice finalized."""
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('portal') / 'modelmint.db'}")
    migrate(db)
    with db.session() as session:
        billing_admin.publish_plan(session, MONTHLY_PLAN)
        for name in ("acme", "globex"):
            org = accounts.ensure_org(session, name)
            accounts.create_key(session, org, name=f"{name}-main")
            billing_admin.subscribe(session, name, "pro", at=NOVEMBER.start)
    close_period(db, NOVEMBER, now=datetime(2026, 12, 1, tzinfo=UTC))
    yield db
    db.dispose()


def build_app(database: Database) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    mount_dashboard(app)
    mount_portal(app)
    settings = Settings(admin_token=ADMIN_TOKEN, load_bundled_models=False)
    app.state.platform = Platform.build(settings, database)
    return app


@pytest.fixture
def client(database: Database) -> Iterator[TestClient]:
    with TestClient(build_app(database)) as test_client:
        yield test_client


def link(database: Database, org: str, ttl: timedelta = timedelta(hours=1)) -> str:
    with database.session() as session:
        return create_link(session, org, ttl, utcnow()).token


def sign_in(client: TestClient, token: str) -> TestClient:
    page = client.get(f"/portal/login?token={token}")
    assert page.status_code == 200 and "works once" in page.text
    answer = client.post(
        "/portal/login",
        data={"csrf_token": form_token(page.text), "token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"].lower()
    assert all(flag in cookie for flag in ("httponly", "samesite=strict", "path=/portal"))
    return client


def org_id(database: Database, name: str) -> str:
    with database.session() as session:
        return accounts.get_org(session, name).id


def test_a_link_signs_in_once_and_only_to_its_own_organisation(
    client: TestClient, database: Database
) -> None:
    token = link(database, "acme")
    sign_in(client, token)

    overview = client.get("/portal")
    invoices = client.get("/portal/invoices")

    assert overview.status_code == 200 and "acme" in overview.text
    assert "globex" not in overview.text
    acme_invoice = f"inv_{org_id(database, 'acme')}_202611"
    globex_invoice = f"inv_{org_id(database, 'globex')}_202611"
    assert acme_invoice in invoices.text and globex_invoice not in invoices.text
    csv = client.get(f"/portal/invoices/{acme_invoice}.csv")
    assert csv.status_code == 200 and csv.text.startswith("kind,description")
    assert client.get(f"/portal/invoices/{globex_invoice}.csv").status_code == 404
    pdf = client.get(f"/portal/invoices/{acme_invoice}.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert acme_invoice in text and "30.00" in text and "globex" not in text
    assert client.get(f"/portal/invoices/{globex_invoice}.pdf").status_code == 404
    # The portal session is no operator: the dashboard sends it to its own login.
    dashboard = client.get("/dashboard", follow_redirects=False)
    assert dashboard.status_code == 303 and "/dashboard/login" in dashboard.headers["location"]

    again = TestClient(client.app)
    page = again.get(f"/portal/login?token={token}")
    reused = again.post("/portal/login", data={"csrf_token": form_token(page.text), "token": token})
    assert reused.status_code == 401 and "already used" in reused.text
    assert again.get("/portal").status_code == 401


def test_expired_forged_and_unknown_links_are_refused(database: Database) -> None:
    with database.session() as session:
        issued = create_link(session, "acme", timedelta(seconds=5), utcnow())
    link_id, _, secret = issued.token.partition(".")
    with database.session() as session, pytest.raises(LinkRefused):
        use_link(session, issued.token, utcnow() + timedelta(seconds=6))
    for token in (f"{link_id}.{secret[:-1]}x", f"pl_nothing.{secret}", link_id, ""):
        with database.session() as session, pytest.raises(LinkRefused):
            use_link(session, token, utcnow())
    with database.session() as session:  # still unused after all that: it works once
        assert use_link(session, issued.token, utcnow()) == org_id(database, "acme")
    for bad in ("soon", "nan", "inf", "1e308d", "-5m", "8d", ""):
        with pytest.raises(InvalidRequest):
            parse_ttl(bad)
    assert parse_ttl("2d") == timedelta(days=2) and parse_ttl("90") == timedelta(seconds=90)
    with database.session() as session, pytest.raises(InvalidRequest, match="between"):
        create_link(session, "acme", timedelta(days=8), utcnow())


def test_a_customer_creates_and_revokes_its_own_keys_only(
    client: TestClient, database: Database
) -> None:
    sign_in(client, link(database, "acme"))
    keys = client.get("/portal/keys")
    token = form_token(keys.text)
    assert "acme-main" in keys.text and "globex-main" not in keys.text

    created = client.post("/portal/keys", data={"csrf_token": token, "name": "ci", "days": "30"})

    secret = re.search(r'id="new-secret">([^<]+)<', created.text)
    assert created.status_code == 200 and secret is not None
    assert secret.group(1) not in client.get("/portal/keys").text  # shown once
    with database.session() as session:
        mine = {k.name: k for k in accounts.list_keys(session, accounts.get_org(session, "acme"))}
        theirs = accounts.list_keys(session, accounts.get_org(session, "globex"))[0].id
        assert mine["ci"].expires_at is not None
        assert mine["ci"].expires_at - utcnow() < timedelta(days=30, minutes=1)
    for refused in ({"days": "400"}, {"models": "no-such-model"}):
        answer = client.post("/portal/keys", data={"csrf_token": token, "name": "x", **refused})
        assert answer.status_code == 400
    forged = client.post(f"/portal/keys/{mine['ci'].id}/revoke", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert (
        client.post(f"/portal/keys/{theirs}/revoke", data={"csrf_token": token}).status_code == 404
    )

    revoked = client.post(f"/portal/keys/{mine['ci'].id}/revoke", data={"csrf_token": token})

    assert revoked.status_code == 200
    with database.session() as session:
        rows = {k.id: k for k in accounts.list_keys(session)}
    assert rows[mine["ci"].id].revoked_at is not None and rows[theirs].revoked_at is None


def test_a_dashboard_session_is_not_a_portal_session(database: Database) -> None:
    app = build_app(database)
    with TestClient(app) as client:
        Dashboard(app, client).login()
        assert client.get("/portal").status_code == 401
        assert client.get("/portal/billing").status_code == 401


def test_signing_out_ends_the_session(client: TestClient, database: Database) -> None:
    sign_in(client, link(database, "globex"))
    assert "does not take payments here" in client.get("/portal/billing").text
    token = form_token(client.get("/portal").text)
    assert client.post("/portal/logout", data={"csrf_token": token}).status_code == 200
    assert client.get("/portal").status_code == 401


def test_the_overview_charts_and_sums_the_months_usage_exactly(
    client: TestClient, database: Database
) -> None:
    now = utcnow()
    with database.session() as session:
        org = accounts.get_org(session, "globex")
        key = accounts.list_keys(session, org)[0]
        for n, (model, status, charge) in enumerate(
            [("chat", 200, "0.0000015"), ("chat", 200, "0.25"), ("embed", 429, None)]
        ):
            session.add(
                UsageRecord(
                    id=f"req_portal_{n}",
                    created_at=now,
                    organization_id=org.id,
                    api_key_id=key.id,
                    model=model,
                    endpoint="chat.completions",
                    status_code=status,
                    input_tokens=10,
                    output_tokens=5,
                    latency_ms=3,
                    charge=Decimal(charge) if charge else None,
                    currency="USD" if charge else None,
                )
            )
    try:
        sign_in(client, link(database, "globex"))
        page = client.get("/portal").text
    finally:
        with database.session() as session:
            session.execute(delete(UsageRecord).where(UsageRecord.id.like("req_portal_%")))
    for chart_id in ("chart-requests", "chart-spend", "chart-models", "chart-keys"):
        assert f'id="{chart_id}"' in page
    day_table = page[page.index('id="usage-by-day"') :]
    assert 'title="0.2500015 USD"' in day_table  # the exact sum, to the last digit
    assert "globex-main" in page and "acme" not in page


def test_failed_sign_ins_are_throttled_per_address(client: TestClient, database: Database) -> None:
    good = link(database, "acme")
    page = client.get(f"/portal/login?token={good}")
    nonce = form_token(page.text)
    for n in range(5):
        refused = client.post("/portal/login", data={"csrf_token": nonce, "token": f"pl_x.{n}"})
        assert refused.status_code == 401
    throttled = client.post("/portal/login", data={"csrf_token": nonce, "token": good})
    assert throttled.status_code == 429 and "too many failed sign-ins" in throttled.text
    # Refused while throttled: the right link was not spent and still works elsewhere.
    other = TestClient(client.app, client=("10.0.0.9", 40000))
    sign_in(other, good)
    assert other.get("/portal").status_code == 200


def test_a_customer_buys_credit_and_sets_auto_top_up_from_the_payment_page(
    client: TestClient, database: Database, localstripe: LocalStripe
) -> None:
    provider = StripeProvider(
        SECRET_KEY, webhook_secret=WEBHOOK_SECRET, api_base=localstripe.api_base
    )
    payments = Payments(database, provider)
    client.app.state.platform.payments = payments  # type: ignore[attr-defined]
    payments.save_method("acme", payment_method=localstripe.card(GOOD_CARD))
    sign_in(client, link(database, "acme"))
    page = client.get("/portal/billing")
    token = form_token(page.text)
    assert 'id="payment-method">visa 4242<' in page.text

    bought = client.post(
        "/portal/billing/top-up", data={"csrf_token": token, "amount": "15.00", "currency": "USD"}
    )
    rule = client.post(
        "/portal/billing/auto-top-up",
        data={"csrf_token": token, "below": "5.00", "amount": "20.00", "currency": "USD"},
    )

    assert "Done: top-up-succeeded" in bought.text
    with database.session() as session:
        assert billing_admin.wallet_balance(session, "acme", "USD")["balance"] == "15.00"
    assert "Buy 20.00 USD whenever credit falls below 5.00" in rule.text
    off = client.post("/portal/billing/auto-top-up", data={"csrf_token": token, "off": "on"})
    assert 'id="auto-top-up">Off.' in off.text
    refused = client.post("/portal/billing/top-up", data={"csrf_token": token, "amount": "1.001"})
    assert refused.status_code == 400
    add = client.get("/portal/billing?add=card")
    assert 'data-client-secret="seti_' in add.text  # a SetupIntent for Stripe Elements
