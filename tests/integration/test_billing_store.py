"""The billing store on SQLite and PostgreSQL: exact money, versions, append-only ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import get_type_hints

import pytest
from sqlalchemy import func, select, text

from modelmint.accounts.orgs import create_org
from modelmint.billing import (
    AmountOff,
    Coupon,
    CouponDuration,
    EntryKind,
    FlatRate,
    GraduatedTiers,
    InvalidInvoiceTransition,
    Metric,
    Money,
    PercentOff,
    Period,
    PlanNotFound,
    PlanRef,
    PlanVersionConflict,
    PriceBook,
    SubscriptionConflict,
    SubscriptionPlan,
    TaxRate,
    UsageKey,
    UsageTotal,
    draft_invoice,
    tiers_up_to,
)
from modelmint.billing.store import BillingStore
from modelmint.errors import Conflict, NotFound
from modelmint.storage import Database
from modelmint.storage.tables import BillingLedgerEntry, BillingWallet

TINY = Decimal("0.000000150000000001")
# 0.15 per 2**20 tokens, times 3 tokens: 22 decimals, more than NUMERIC(38, 18) keeps.
DEEP = Decimal("0.0000004291534423828125")
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def usd(text_: str) -> Money:
    return Money.parse(text_, "USD")


def new_org(database: Database, name: str = "acme") -> str:
    with database.session() as session:
        return create_org(session, name).id


def pro_plan(version: int = 1, fee: str = "30.00") -> SubscriptionPlan:
    book = PriceBook(
        "USD",
        {
            ("*", Metric.INPUT_TOKENS): FlatRate(TINY),
            ("*", Metric.OUTPUT_TOKENS): GraduatedTiers(
                tiers_up_to((1000, Decimal("0.001")), (None, DEEP))
            ),
        },
    )
    return SubscriptionPlan("pro", version, usd(fee), book)


def test_money_columns_are_exact_on_both_databases(database: Database) -> None:
    org = new_org(database)
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.open_wallet(org, "USD")
        wallet.top_up(Money(TINY, "USD"), at=at(0))
        wallet.grant(Money(DEEP, "USD"), at=at(1))
        store.wallets.save_wallet(wallet)
    with database.session() as session:
        amounts = list(
            session.scalars(select(BillingLedgerEntry.amount).order_by(BillingLedgerEntry.sequence))
        )
        assert amounts == [TINY, DEEP]
        balance = session.scalar(select(BillingWallet.balance))
        assert balance == Decimal("0.0000005791534423838125")
        if database.is_sqlite:  # text, not REAL: SQLite has no exact numeric storage
            kinds = session.execute(
                text("SELECT DISTINCT typeof(amount) FROM billing_ledger_entries")
            )
            assert [k for (k,) in kinds] == ["text"]
        else:  # PostgreSQL sums NUMERIC exactly in SQL too
            assert session.scalar(select(func.sum(BillingLedgerEntry.amount))) == TINY + DEEP


def test_price_books_are_stored_once_and_load_back_exactly(database: Database) -> None:
    with database.session() as session:
        store = BillingStore(session)
        book = pro_plan().price_book
        first = store.plans.save_price_book(book)
        assert store.plans.save_price_book(pro_plan().price_book) == first  # same content, same row
        loaded = store.plans.load_price_book(first)
        assert dict(loaded.prices) == dict(book.prices)
        assert loaded.price("any", Metric.OUTPUT_TOKENS, 1003) == Decimal(
            "1.0000012874603271484375"
        )  # 1 + 3 * DEEP
        with pytest.raises(NotFound):
            store.plans.load_price_book("pb_missing")


def test_plan_changes_are_new_versions_and_old_versions_never_change(database: Database) -> None:
    with database.session() as session:
        store = BillingStore(session)
        store.plans.publish_plan(pro_plan(1, "30.00"))
        store.plans.publish_plan(pro_plan(1, "30.00").revised(fee=usd("45.00")))
        with pytest.raises(PlanVersionConflict, match="the next version is 3"):
            store.plans.publish_plan(pro_plan(4))
        with pytest.raises(PlanVersionConflict):
            store.plans.publish_plan(pro_plan(2))
    with database.session() as session:
        store = BillingStore(session)
        assert store.plans.load_plan("pro", 1).fixed_fee == usd("30.00")
        assert store.plans.load_plan("pro", 2).fixed_fee == usd("45.00")
        assert store.plans.load_plan("pro").ref == PlanRef("pro", 2)
        assert [p.version for p in store.plans.plan_catalog().versions("pro")] == [1, 2]
        with pytest.raises(PlanNotFound):
            store.plans.load_plan("pro", 3)
        with pytest.raises(PlanNotFound):
            store.plans.load_plan("gold")


def test_subscriptions_keep_their_plan_version_through_a_change(database: Database) -> None:
    org = new_org(database)
    with database.session() as session:
        store = BillingStore(session)
        store.plans.publish_plan(pro_plan(1, "30.00"))
        store.plans.publish_plan(pro_plan(2, "45.00"))
        store.subscriptions.subscribe(org, PlanRef("pro", 1), T0)
        with pytest.raises(SubscriptionConflict):
            store.subscriptions.subscribe(org, PlanRef("pro", 2), at(5))
    with database.session() as session:
        store = BillingStore(session)
        store.subscriptions.change_plan(org, PlanRef("pro", 2), at(24 * 15))
    with database.session() as session:
        store = BillingStore(session)
        spans = store.subscriptions.timeline(org).subscriptions
        assert [(s.plan.ref, s.start, s.end) for s in spans] == [
            (PlanRef("pro", 1), T0, at(24 * 15)),
            (PlanRef("pro", 2), at(24 * 15), None),
        ]
        fees = store.subscriptions.timeline(org).fee_charges(Period.month(2026, 11))
        assert [f.amount for f in fees] == [usd("30.00"), usd("-15.00"), usd("22.50")]
        store.subscriptions.cancel(org, at(24 * 20))
        assert store.subscriptions.timeline(org).subscriptions[-1].end == at(24 * 20)
        with pytest.raises(NotFound):
            store.subscriptions.subscribe("org_missing", PlanRef("pro", 1), T0)
        with pytest.raises(PlanNotFound):
            store.subscriptions.subscribe(org, PlanRef("pro", 9), at(24 * 40))


def test_wallet_reloads_from_its_rows_and_the_ledger_explains_the_balance(
    database: Database,
) -> None:
    org = new_org(database)
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.open_wallet(org, "USD")
        wallet.top_up(usd("10.00"), at=at(0), reference="pay_1")
        wallet.grant(usd("2.50"), at=at(1), expires_at=at(48))
        reservation = wallet.reserve(usd("3.000000000000000001"), at=at(2), reference="req_1")
        store.wallets.save_wallet(wallet)
        expected_ledger = wallet.ledger
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.load_wallet(org, "USD", for_update=True)
        # A load restores running balances, not history: the ledger is read on its own.
        assert wallet.ledger == ()
        assert tuple(reversed(store.ledger.ledger(wallet.id))) == expected_ledger
        assert store.ledger.audit_wallet(wallet.id) == wallet.balance
        assert wallet.balance == usd("9.499999999999999999")
        assert wallet.open_reservations == (reservation,)
        wallet.settle(reservation.id, Money(TINY, "USD"), at=at(3))
        wallet.consume(usd("0.000000000000000001"), at=at(4), reference="req_2")
        second = wallet.reserve(usd("1"), at=at(5))
        assert second.id == "res_2"  # ids continue after a reload
        store.wallets.save_wallet(wallet)
        balance = wallet.balance
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.load_wallet(org, "USD")
        assert wallet.balance == balance == store.ledger.ledger_balance(wallet.id)
        assert balance == usd("11.499999849999999998")  # 12.50 - 1 held - 0.00000015... spent
        assert [r.id for r in wallet.open_reservations] == ["res_2"]
        spent = sum(
            (
                e.amount.amount
                for e in store.ledger.ledger(wallet.id)
                if e.kind is EntryKind.CONSUMPTION
            ),
            Decimal(0),
        )
        assert spent == -(TINY + Decimal("0.000000000000000001"))
        # The grant expires at 48h: the write-off is appended, the rest still adds up.
        wallet.expire(at(49))
        store.wallets.save_wallet(wallet)
        assert (
            store.ledger.ledger_balance(wallet.id)
            == wallet.balance
            == store.ledger.audit_wallet(wallet.id)
        )
        assert wallet.ledger[-1].kind is EntryKind.EXPIRY
        # An expired grant is still loaded while an open reservation holds its credit,
        # and no longer once nothing does; its history stays in the ledger.
        assert [g.id for g in store.wallets.load_wallet(org, "USD").grants] == [
            "grant_1",
            "grant_2",
        ]
        wallet.release("res_2", at=at(50))
        store.wallets.save_wallet(wallet)
        assert [g.id for g in store.wallets.load_wallet(org, "USD").grants] == ["grant_1"]
        assert store.ledger.audit_wallet(wallet.id) == wallet.balance


def test_a_stale_wallet_cannot_overwrite_a_newer_ledger(database: Database) -> None:
    org = new_org(database)
    with database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.open_wallet(org, "USD")
        wallet.top_up(usd("5"), at=at(0))
        store.wallets.save_wallet(wallet)
    with database.session() as session:
        first = BillingStore(session)
        second = BillingStore(session)
        a = first.wallets.load_wallet(org, "USD")
        b = second.wallets.load_wallet(org, "USD")
        a.consume(usd("1"), at=at(1))
        first.wallets.save_wallet(a)
        b.consume(usd("4.5"), at=at(1))  # would overspend once a's consumption is counted
        with pytest.raises(Conflict, match="changed concurrently"):
            second.wallets.save_wallet(b)
    with database.session() as session:
        assert BillingStore(session).wallets.load_wallet(org, "USD").balance == usd("4")


def test_wallet_errors(database: Database) -> None:
    org = new_org(database)
    with database.session() as session:
        store = BillingStore(session)
        store.wallets.open_wallet(org, "USD")
        with pytest.raises(Conflict):
            store.wallets.open_wallet(org, "usd")
        with pytest.raises(NotFound):
            store.wallets.load_wallet(org, "EUR")
        with pytest.raises(NotFound):
            store.wallets.open_wallet("org_missing", "USD")
    parts = [
        get_type_hints(part.func)["return"]
        for part in vars(BillingStore).values()
        if isinstance(part, cached_property)
    ]
    assert len(parts) >= 10
    assert not [n for part in parts for n in dir(part) if "update" in n or "delete" in n]


def test_coupons_redemptions_and_tax_rates(database: Database) -> None:
    org = new_org(database)
    half = Coupon("HALF", PercentOff(Decimal("50")), CouponDuration.repeating(2))
    with database.session() as session:
        store = BillingStore(session)
        store.coupons.create_coupon(half)
        store.coupons.create_coupon(Coupon("TEN", AmountOff(usd("10")), CouponDuration.once()))
        with pytest.raises(Conflict):
            store.coupons.create_coupon(half)
        store.coupons.redeem_coupon(org, "HALF", Period.month(2026, 11))
        with pytest.raises(Conflict):
            store.coupons.redeem_coupon(org, "HALF", Period.month(2026, 12))
        with pytest.raises(NotFound):
            store.coupons.redeem_coupon(org, "NOPE", Period.month(2026, 11))
        with pytest.raises(NotFound):
            store.coupons.redeem_coupon("org_missing", "HALF", Period.month(2026, 11))
        assert store.invoices.tax_rate(org) is None
        store.invoices.set_tax_rate(org, TaxRate(Decimal("19.6"), "VAT"))
        store.invoices.set_tax_rate(org, TaxRate(Decimal("20.000000000000000001"), "VAT"))
    with database.session() as session:
        store = BillingStore(session)
        assert store.coupons.load_coupon("HALF") == half
        assert store.coupons.redemption_for(org, Period.month(2026, 12)) is not None
        assert store.coupons.redemption_for(org, Period.month(2027, 1)) is None
        assert store.invoices.tax_rate(org) == TaxRate(Decimal("20.000000000000000001"), "VAT")


def test_invoices_round_trip_and_follow_their_life_cycle(database: Database) -> None:
    org = new_org(database)
    period = Period.month(2026, 11)
    key = UsageKey(PlanRef("pro", 1), "smollm2", Metric.INPUT_TOKENS)
    charges = [TINY * 400, TINY * 600]
    with database.session() as session:
        store = BillingStore(session)
        store.plans.publish_plan(pro_plan())
        store.subscriptions.subscribe(org, PlanRef("pro", 1), T0)
        store.coupons.create_coupon(Coupon("TEN", AmountOff(usd("10")), CouponDuration.once()))
        store.invoices.set_tax_rate(org, TaxRate(Decimal("20"), "VAT"))
        invoice = draft_invoice(
            invoice_id="inv_1",
            period=period,
            timeline=store.subscriptions.timeline(org),
            usage=[UsageTotal(key, 1000, 0)],
            request_charges={key: charges},
            coupon=store.coupons.redeem_coupon(org, "TEN", period),
            tax_rate=store.invoices.tax_rate(org),
        )
        invoice.add_adjustment("goodwill", usd("-0.015"))
        store.invoices.save_invoice(invoice)
        expected = invoice.to_dict()
    assert expected["usage_exact_total"] == "0.000150000000001000"
    assert (expected["subtotal"], expected["discount"], expected["tax"], expected["total"]) == (
        "29.98",
        "10.00",
        "4.00",
        "23.98",
    )
    with database.session() as session:
        store = BillingStore(session)
        loaded = store.invoices.load_invoice("inv_1")
        assert loaded.to_dict() == expected
        loaded.finalize(at(24 * 30))
        store.invoices.save_invoice(loaded)
    with database.session() as session:
        store = BillingStore(session)
        loaded = store.invoices.load_invoice("inv_1")
        assert loaded.status.value == "finalized"
        loaded.mark_paid(at(24 * 31))
        store.invoices.save_invoice(loaded)
        stale = store.invoices.load_invoice("inv_1")
    with database.session() as session:
        store = BillingStore(session)
        assert [i.status.value for i in store.invoices.invoices(org)] == ["paid"]
        assert store.invoices.load_invoice("inv_1").stamp(stale.status) == at(24 * 31)
        draft = draft_invoice(
            invoice_id="inv_1",
            period=period,
            timeline=store.subscriptions.timeline(org),
            usage=[],
            request_charges={},
        )
        with pytest.raises(InvalidInvoiceTransition):
            store.invoices.save_invoice(draft)  # a draft cannot overwrite a paid invoice
        with pytest.raises(NotFound):
            store.invoices.load_invoice("inv_missing")
