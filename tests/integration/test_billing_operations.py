"""Billing operations (what the admin API and CLI call) on SQLite and PostgreSQL.

Each operation runs in its own unit of work, as the API and CLI run it; a failed one
must leave the database as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint import billing_admin as ops
from modelmint.billing import (
    CurrencyMismatch,
    InvalidCoupon,
    InvalidInvoiceTransition,
    InvalidMoney,
    InvalidPeriod,
    InvalidPlan,
    InvalidTaxRate,
    InvalidWalletOperation,
    Period,
    PlanNotFound,
    PlanVersionConflict,
    SubscriptionConflict,
    draft_invoice,
)
from modelmint.billing.store import BillingStore
from modelmint.demo import billing as demo_billing
from modelmint.errors import Conflict, InvalidRequest, ModelMintError, NotFound
from modelmint.storage import Database
from modelmint.storage.tables import (
    ApiKey,
    BillingCouponRedemption,
    BillingLedgerEntry,
    BillingPlanVersion,
    BillingSubscription,
    BillingWallet,
)

T = TypeVar("T")
T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOVEMBER = Period.month(2026, 11)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def run(database: Database, work: Callable[[Session], T]) -> T:
    with database.session() as session:
        return work(session)


def count(database: Database, table: Any) -> int:
    return run(database, lambda s: s.scalar(select(func.count()).select_from(table)) or 0)


def plan_document(
    code: str = "pro", version: int = 1, fee: Any = "30.00", currency: str = "USD"
) -> dict[str, Any]:
    return {
        "kind": "subscription",
        "code": code,
        "version": version,
        "fee": {"amount": fee, "currency": currency},
        "included": {"input_tokens": 1000},
        "price_book": {
            "currency": currency,
            "prices": [
                {
                    "target": "*",
                    "metric": "input_tokens",
                    "charge": {"type": "flat", "amount": "0.15", "per_units": 1_000_000},
                },
                {
                    "target": "*",
                    "metric": "output_tokens",
                    "charge": {
                        "type": "graduated",
                        "tiers": [
                            {
                                "start": 0,
                                "up_to": 1000,
                                "price": "0.001",
                                "flat_fee": "0",
                                "per_units": 1,
                            },
                            {
                                "start": 1000,
                                "up_to": None,
                                "price": "0.0005",
                                "flat_fee": "0",
                                "per_units": 1,
                            },
                        ],
                    },
                },
            ],
            "model_groups": {},
        },
    }


@pytest.fixture
def acme(database: Database) -> str:
    return run(database, lambda s: accounts.create_org(s, "acme").id)


@pytest.fixture
def subscribed(database: Database, acme: str) -> str:
    """acme on pro@v1 since the start of November 2026."""
    run(database, lambda s: ops.publish_plan(s, plan_document()))
    run(database, lambda s: ops.subscribe(s, "acme", "pro", at=T0))
    return acme


def save_invoice(database: Database, org_id: str, invoice_id: str, *, finalize: bool) -> None:
    """An invoice for November as period close would draft it (close is not ours to call)."""

    def work(session: Session) -> None:
        store = BillingStore(session)
        invoice = draft_invoice(
            invoice_id=invoice_id,
            period=NOVEMBER,
            timeline=store.subscriptions.timeline(org_id),
            usage=[],
            request_charges={},
            tax_rate=store.invoices.tax_rate(org_id),
        )
        if finalize:
            invoice.finalize(day(30))
        store.invoices.save_invoice(invoice)

    run(database, work)


# -- plans ----------------------------------------------------------------------------------


def test_plans_are_published_listed_and_shown_by_version(database: Database) -> None:
    published = run(database, lambda s: ops.publish_plan(s, plan_document()))
    assert published == plan_document()  # the stored document is the one given, exactly
    run(database, lambda s: ops.publish_plan(s, plan_document(version=2, fee="35.50")))
    run(database, lambda s: ops.publish_plan(s, plan_document("basic")))

    assert run(database, ops.list_plans) == [
        {
            "code": "basic",
            "kind": "subscription",
            "version": 1,
            "versions": 1,
            "currency": "USD",
            "fixed_fee": "30.00",
        },
        {
            "code": "pro",
            "kind": "subscription",
            "version": 2,
            "versions": 2,
            "currency": "USD",
            "fixed_fee": "35.50",
        },
    ]
    assert run(database, lambda s: ops.show_plan(s, "pro"))["fee"]["amount"] == "35.50"
    assert run(database, lambda s: ops.show_plan(s, "pro", 1)) == plan_document()
    with pytest.raises(PlanNotFound):
        run(database, lambda s: ops.show_plan(s, "pro", 3))
    with pytest.raises(PlanNotFound):
        run(database, lambda s: ops.show_plan(s, "ghost"))


@pytest.mark.parametrize(
    ("code", "version"), [("pro", 1), ("pro", 3), ("new", 2)], ids=["again", "skip", "new-at-2"]
)
def test_a_plan_version_out_of_sequence_is_refused_and_stores_nothing(
    database: Database, code: str, version: int
) -> None:
    run(database, lambda s: ops.publish_plan(s, plan_document()))
    with pytest.raises(PlanVersionConflict, match="next version is"):
        run(database, lambda s: ops.publish_plan(s, plan_document(code, version)))
    assert count(database, BillingPlanVersion) == 1


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        (plan_document(fee=30.0), InvalidPlan, "floats are not exact"),
        ({**plan_document(), "kind": "barter"}, InvalidPlan, "is not one of"),
        ({**plan_document(), "version": 0}, InvalidPlan, "starts at 1"),
        (plan_document(code="x" * 101), InvalidPlan, "longer than"),
        (plan_document(fee="-1"), InvalidPlan, "must not be negative"),
        (
            {**plan_document(), "fee": {"amount": "30", "currency": "EUR"}},
            CurrencyMismatch,
            "fee in EUR",
        ),
    ],
    ids=["float", "kind", "version", "long-code", "negative-fee", "currency"],
)
def test_malformed_plan_documents_are_refused(
    database: Database, document: dict[str, Any], error: type[ModelMintError], message: str
) -> None:
    with pytest.raises(error, match=message):
        run(database, lambda s: ops.publish_plan(s, document))
    assert count(database, BillingPlanVersion) == 0


# -- subscriptions --------------------------------------------------------------------------


def test_an_organisation_subscribes_changes_plan_and_cancels(database: Database, acme: str) -> None:
    run(database, lambda s: ops.publish_plan(s, plan_document()))
    run(database, lambda s: ops.publish_plan(s, plan_document("basic", fee="10.00")))
    started = run(database, lambda s: ops.subscribe(s, acme, "pro", at=T0))  # by id
    assert (started["organization"], started["plan"], started["starts_at"]) == (
        "acme",
        "pro@v1",
        T0.isoformat(),
    )
    changed = run(database, lambda s: ops.change_plan(s, "acme", "basic", 1, at=day(10)))
    assert (changed["plan"], changed["starts_at"], changed["ends_at"]) == (
        "basic@v1",
        day(10).isoformat(),
        None,
    )
    ended = run(database, lambda s: ops.cancel(s, "acme", at=day(20)))
    assert ended["ends_at"] == day(20).isoformat()

    listed = run(database, lambda s: ops.list_subscriptions(s, "acme"))
    assert [(r["plan"], r["starts_at"], r["ends_at"], r["status"]) for r in listed] == [
        ("pro@v1", T0.isoformat(), day(10).isoformat(), "ended"),
        ("basic@v1", day(10).isoformat(), day(20).isoformat(), "ended"),
    ]


def test_subscribe_takes_the_latest_version_unless_told(database: Database, acme: str) -> None:
    run(database, lambda s: ops.publish_plan(s, plan_document()))
    run(database, lambda s: ops.publish_plan(s, plan_document(version=2)))
    assert run(database, lambda s: ops.subscribe(s, "acme", "pro"))["plan"] == "pro@v2"
    listed = run(database, lambda s: ops.list_subscriptions(s, "acme"))
    assert [r["status"] for r in listed] == ["active"]


def test_subscription_mistakes_are_refused_and_change_nothing(
    database: Database, subscribed: str
) -> None:
    run(database, lambda s: ops.publish_plan(s, plan_document("euro", currency="EUR")))
    before = run(database, lambda s: ops.list_subscriptions(s, "acme"))
    mistakes: list[tuple[Callable[[Session], object], type[ModelMintError]]] = [
        (lambda s: ops.subscribe(s, "acme", "ghost"), PlanNotFound),
        (lambda s: ops.subscribe(s, "acme", "pro", 7), PlanNotFound),
        (lambda s: ops.subscribe(s, "nobody", "pro"), NotFound),
        (lambda s: ops.subscribe(s, "acme", "pro", at=day(3)), SubscriptionConflict),
        (lambda s: ops.change_plan(s, "acme", "euro", at=day(5)), CurrencyMismatch),
        (
            lambda s: ops.cancel(s, "acme", at=datetime(2026, 11, 5)),
            InvalidPeriod,
        ),  # naive
    ]
    for work, error in mistakes:
        with pytest.raises(error):
            run(database, work)
    assert run(database, lambda s: ops.list_subscriptions(s, "acme")) == before
    assert count(database, BillingSubscription) == 1


# -- wallets --------------------------------------------------------------------------------


def test_granting_credit_opens_a_wallet_and_the_balance_lists_grants(
    database: Database, acme: str
) -> None:
    first = run(database, lambda s: ops.grant_credit(s, "acme", "5.00", "usd"))
    assert first["grant"]["kind"] == "promotional"
    assert first["wallet"]["currency"] == "USD"
    expiry = datetime(2099, 1, 1, tzinfo=UTC)
    run(
        database,
        lambda s: ops.grant_credit(
            s, "acme", "10.005", "USD", kind="paid", expires_at=expiry, reference="pay_1"
        ),
    )

    wallet = run(database, lambda s: ops.wallet_balance(s, "acme"))
    assert (wallet["balance"], wallet["reserved"], wallet["available"]) == (
        "15.005",
        "0",
        "15.005",
    )
    assert [(g["kind"], g["amount"], g["remaining"], g["priority"]) for g in wallet["grants"]] == [
        ("promotional", "5.00", "5.00", 0),  # spent first
        ("paid", "10.005", "10.005", 10),
    ]
    assert wallet["grants"][1]["expires_at"] == expiry.isoformat()

    ledger = run(database, lambda s: ops.wallet_ledger(s, "acme", "USD"))
    assert ledger["balance"] == "15.005"
    assert [(e["sequence"], e["kind"], e["amount"], e["reference"]) for e in ledger["entries"]] == [
        (1, "grant", "5.00", None),
        (2, "top_up", "10.005", "pay_1"),
    ]
    newest = run(database, lambda s: ops.wallet_ledger(s, "acme", limit=1))
    assert [e["sequence"] for e in newest["entries"]] == [2]


@pytest.mark.parametrize(
    ("amount", "currency", "error", "message"),
    [
        ("-1", "USD", InvalidWalletOperation, "must be positive"),
        ("0", "USD", InvalidWalletOperation, "must be positive"),
        ("abc", "USD", InvalidMoney, "not a decimal number"),
        ("NaN", "USD", InvalidMoney, "not a finite number"),
        ("1e30", "USD", InvalidMoney, "integer digits"),
        (1.5, "USD", InvalidMoney, "floats are not exact"),
        (5, "USD", InvalidMoney, "decimal string"),
        ("5", "US", InvalidMoney, "currency code"),
    ],
    ids=["negative", "zero", "text", "nan", "huge", "float", "int", "currency"],
)
def test_bad_amounts_are_refused_before_a_wallet_is_opened(
    database: Database, acme: str, amount: Any, currency: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        run(database, lambda s: ops.grant_credit(s, "acme", amount, currency))
    assert count(database, BillingWallet) == 0


def test_a_grant_that_fails_after_opening_the_wallet_leaves_no_wallet(
    database: Database, acme: str
) -> None:
    past = datetime(2001, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidWalletOperation, match="before it starts"):
        run(database, lambda s: ops.grant_credit(s, "acme", "5", "USD", expires_at=past))
    assert count(database, BillingWallet) == 0
    assert count(database, BillingLedgerEntry) == 0


def test_wallet_mistakes_are_named(database: Database, acme: str) -> None:
    with pytest.raises(NotFound, match="has no wallet"):
        run(database, lambda s: ops.wallet_balance(s, "acme"))
    with pytest.raises(NotFound, match="no organisation"):
        run(database, lambda s: ops.grant_credit(s, "ghost", "5", "USD"))
    with pytest.raises(InvalidWalletOperation, match="kind"):
        run(database, lambda s: ops.grant_credit(s, "acme", "5", "USD", kind="gift"))
    run(database, lambda s: ops.open_wallet(s, "acme", "USD"))
    with pytest.raises(Conflict, match="already has a USD wallet"):
        run(database, lambda s: ops.open_wallet(s, "acme", "usd"))
    run(database, lambda s: ops.grant_credit(s, "acme", "3", "EUR", kind="paid"))
    with pytest.raises(InvalidRequest, match="EUR, USD; name a currency"):
        run(database, lambda s: ops.wallet_balance(s, "acme"))
    assert run(database, lambda s: ops.wallet_balance(s, "acme", "EUR"))["balance"] == "3"
    assert run(database, lambda s: ops.wallet_ledger(s, "acme", "USD"))["entries"] == []
    with pytest.raises(InvalidRequest, match="limit"):
        run(database, lambda s: ops.wallet_ledger(s, "acme", "USD", limit=0))


# -- coupons and tax ------------------------------------------------------------------------

TEN_OFF = {
    "code": "TEN",
    "discount": {"type": "amount_off", "amount": {"amount": "10.00", "currency": "USD"}},
    "duration": {"kind": "repeating", "periods": 3},
}


def test_coupons_are_created_listed_and_redeemed_once(database: Database, subscribed: str) -> None:
    assert run(database, lambda s: ops.create_coupon(s, TEN_OFF)) == TEN_OFF
    with pytest.raises(Conflict, match="already exists"):
        run(database, lambda s: ops.create_coupon(s, TEN_OFF))
    [listed] = run(database, ops.list_coupons)
    assert (listed["code"], listed["redemptions"]) == ("TEN", 0)

    redeemed = run(database, lambda s: ops.redeem_coupon(s, "acme", "TEN", "2026-11"))
    assert (redeemed["organization"], redeemed["first_period"]) == ("acme", "2026-11")
    assert redeemed["coupon"] == TEN_OFF
    with pytest.raises(Conflict, match="already redeemed"):
        run(database, lambda s: ops.redeem_coupon(s, "acme", "TEN", "2026-12"))
    assert run(database, ops.list_coupons)[0]["redemptions"] == 1


def test_coupon_mistakes_are_refused_and_redeem_nothing(
    database: Database, subscribed: str
) -> None:
    euro_off = {"type": "amount_off", "amount": {"amount": "5", "currency": "EUR"}}
    euro = {**TEN_OFF, "code": "EURO", "discount": euro_off}
    too_much = {**TEN_OFF, "code": "P", "discount": {"type": "percent_off", "percent": "150"}}
    run(database, lambda s: ops.create_coupon(s, euro))
    mistakes: list[tuple[Callable[[Session], object], type[ModelMintError], str]] = [
        (
            lambda s: ops.redeem_coupon(s, "acme", "EURO", "2026-11"),
            CurrencyMismatch,
            "in USD",
        ),
        (
            lambda s: ops.redeem_coupon(s, "acme", "GHOST", "2026-11"),
            NotFound,
            "no coupon",
        ),
        (
            lambda s: ops.redeem_coupon(s, "acme", "EURO", "2026-13"),
            InvalidPeriod,
            "1..12",
        ),
        (
            lambda s: ops.redeem_coupon(s, "acme", "EURO", "November"),
            InvalidPeriod,
            "a month",
        ),
        (
            lambda s: ops.redeem_coupon(s, "ghost", "EURO", "2026-11"),
            NotFound,
            "organisation",
        ),
        (lambda s: ops.create_coupon(s, too_much), InvalidCoupon, "percent off"),
    ]
    for work, error, message in mistakes:
        with pytest.raises(error, match=message):
            run(database, work)
    assert count(database, BillingCouponRedemption) == 0


def test_a_tax_rate_is_set_from_a_decimal_string(database: Database, acme: str) -> None:
    result = run(database, lambda s: ops.set_tax_rate(s, "acme", "VAT", "20.5"))
    assert (result["name"], result["percent"]) == ("VAT", "20.5")
    for percent, message in [("120", "between 0 and 100"), ("x", "not a decimal"), (20.0, "float")]:
        with pytest.raises(InvalidTaxRate, match=message):
            run(database, lambda s, p=percent: ops.set_tax_rate(s, "acme", "VAT", p))
    with pytest.raises(InvalidTaxRate, match="tax name"):
        run(database, lambda s: ops.set_tax_rate(s, "acme", " ", "5"))
    rate = run(database, lambda s: BillingStore(s).invoices.tax_rate(acme))
    assert rate is not None and (rate.name, str(rate.percent)) == ("VAT", "20.5")


# -- invoices -------------------------------------------------------------------------------


def test_invoices_are_listed_shown_exported_and_paid(database: Database, subscribed: str) -> None:
    run(database, lambda s: ops.set_tax_rate(s, "acme", "VAT", "20"))
    save_invoice(database, subscribed, "inv_nov", finalize=True)
    save_invoice(database, subscribed, "inv_draft", finalize=False)

    listed = run(database, lambda s: ops.list_invoices(s, "acme", "2026-11"))
    assert [(r["id"], r["status"], r["total"]) for r in listed] == [
        ("inv_nov", "finalized", "36.00"),
        ("inv_draft", "draft", "36.00"),
    ]
    assert run(database, lambda s: ops.list_invoices(s, status="draft"))[0]["id"] == "inv_draft"
    assert run(database, lambda s: ops.list_invoices(s, period="2026-12")) == []

    shown = run(database, lambda s: ops.show_invoice(s, "inv_nov"))
    assert (shown["subtotal"], shown["tax"], shown["total"]) == ("30.00", "6.00", "36.00")
    csv = run(database, lambda s: ops.invoice_csv(s, "inv_nov")).splitlines()
    assert csv[0].startswith("kind,description,") and len(csv) == 3  # header, fee, tax

    paid = run(database, lambda s: ops.pay_invoice(s, "inv_nov", at=day(31)))
    assert (paid["status"], paid["paid_at"]) == ("paid", day(31).isoformat())
    assert run(database, lambda s: ops.list_invoices(s, status="paid"))[0]["id"] == "inv_nov"


def test_illegal_invoice_transitions_are_refused_and_change_nothing(
    database: Database, subscribed: str
) -> None:
    save_invoice(database, subscribed, "inv_paid", finalize=True)
    save_invoice(database, subscribed, "inv_void", finalize=True)
    save_invoice(database, subscribed, "inv_draft", finalize=False)
    run(database, lambda s: ops.pay_invoice(s, "inv_paid"))
    run(database, lambda s: ops.void_invoice(s, "inv_void"))

    for work in [
        lambda s: ops.pay_invoice(s, "inv_void"),
        lambda s: ops.void_invoice(s, "inv_paid"),
        lambda s: ops.pay_invoice(s, "inv_paid"),
        lambda s: ops.pay_invoice(s, "inv_draft"),
    ]:
        with pytest.raises(InvalidInvoiceTransition, match="cannot become"):
            run(database, work)
    statuses = {r["id"]: r["status"] for r in run(database, ops.list_invoices)}
    assert statuses == {"inv_paid": "paid", "inv_void": "void", "inv_draft": "draft"}
    assert run(database, lambda s: ops.show_invoice(s, "inv_void"))["paid_at"] is None
    assert run(database, lambda s: ops.void_invoice(s, "inv_draft"))["status"] == "void"

    with pytest.raises(NotFound):
        run(database, lambda s: ops.pay_invoice(s, "inv_missing"))
    with pytest.raises(InvalidRequest, match="status 'open'"):
        run(database, lambda s: ops.list_invoices(s, status="open"))
    with pytest.raises(NotFound):
        run(database, lambda s: ops.list_invoices(s, org="ghost"))


# -- demo data ------------------------------------------------------------------------------


def test_seeding_the_demo_twice_creates_everything_once(database: Database) -> None:
    first = run(database, demo_billing.seed_demo_billing)
    assert first["plans_published"] == ["free@v1", "starter@v1", "payg@v1", "enterprise@v1"]
    assert sorted(k["organization"] for k in first["keys"]) == ["demo-prepaid", "demo-subscription"]
    assert all(k["key"].startswith(k["prefix"]) for k in first["keys"])
    plans = run(database, ops.list_plans)

    second = run(database, demo_billing.seed_demo_billing)
    assert (second["plans_published"], second["keys"]) == ([], [])
    assert second["organizations"] == first["organizations"]
    assert run(database, ops.list_plans) == plans
    assert count(database, ApiKey) == 2
    assert count(database, BillingSubscription) == 2
    on = {
        org: [r["plan"] for r in run(database, lambda s, o=org: ops.list_subscriptions(s, o))]
        for org in ("demo-subscription", "demo-prepaid")
    }
    assert on == {"demo-subscription": ["starter@v1"], "demo-prepaid": ["payg@v1"]}
    wallet = run(database, lambda s: ops.wallet_balance(s, "demo-prepaid"))
    assert (wallet["balance"], len(wallet["grants"])) == ("5.00", 1)


def test_the_demo_plans_price_the_bundled_models_with_tiers_for_the_rest(
    database: Database,
) -> None:
    run(database, demo_billing.seed_demo_billing)
    starter = run(database, lambda s: ops.show_plan(s, "starter"))
    prices = {(p["target"], p["metric"]): p["charge"] for p in starter["price_book"]["prices"]}
    assert prices[("smollm2-135m-instruct", "input_tokens")]["amount"] == "0.15"
    assert prices[("all-minilm-l6-v2", "embedding_tokens")]["amount"] == "0.02"
    assert prices[("*", "output_tokens")]["type"] == "graduated"
    payg = run(database, lambda s: ops.show_plan(s, "payg"))
    assert payg["price_book"] == starter["price_book"]
    summary = {p["code"]: (p["kind"], p["fixed_fee"]) for p in run(database, ops.list_plans)}
    assert summary == {
        "enterprise": ("enterprise", "2000.00"),
        "free": ("free", "0"),
        "payg": ("prepaid", "0"),
        "starter": ("subscription", "20.00"),
    }


def test_seeding_keeps_an_organisation_s_own_key_and_wallet(database: Database) -> None:
    def existing(session: Session) -> None:
        org = accounts.create_org(session, demo_billing.DEMO_PREPAID_ORG)
        accounts.create_key(session, org, name="mine")

    run(database, existing)
    run(database, lambda s: ops.open_wallet(s, demo_billing.DEMO_PREPAID_ORG, "USD"))
    seeded = run(database, demo_billing.seed_demo_billing)
    assert [k["organization"] for k in seeded["keys"]] == [demo_billing.DEMO_SUBSCRIPTION_ORG]
    wallet = run(database, lambda s: ops.wallet_balance(s, demo_billing.DEMO_PREPAID_ORG))
    assert wallet["balance"] == "0"  # an existing wallet is not topped up behind one's back
