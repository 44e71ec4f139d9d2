"""Collecting money through Stripe, played by localstripe, on SQLite and PostgreSQL.

The Stripe adapter talks to a real localstripe process over HTTP; the clock of the
collection rules is the test's, so dunning schedules measured in days run at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from modelmint import accounts, billing_admin
from modelmint.accounts.keys import hash_secret, lookup_key_by_hash
from modelmint.billing.invoices import InvoiceStatus
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.billing_admin import close_period
from modelmint.errors import Conflict, InvalidRequest
from modelmint.payments.collection import Payments
from modelmint.payments.dunning import DunningSchedule
from modelmint.payments.provider import InvalidSignature
from modelmint.payments.stripe_provider import StripeProvider
from modelmint.storage.db import Database
from modelmint.storage.tables import BillingAlert, Payment, PaymentEvent
from tests.support.localstripe import (
    AUTHENTICATION_CARD,
    DECLINED_CARD,
    GOOD_CARD,
    MONTHLY_PLAN,
    SECRET_KEY,
    WEBHOOK_SECRET,
    LocalStripe,
    intent_event,
    signed_event,
)

pytestmark = pytest.mark.slow

NOVEMBER = Period.month(2026, 11)
CLOSED_AT = datetime(2026, 12, 1, 9, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(CLOSED_AT)


@pytest.fixture
def payments(database: Database, localstripe: LocalStripe, clock: Clock) -> Payments:
    provider = StripeProvider(
        SECRET_KEY, webhook_secret=WEBHOOK_SECRET, api_base=localstripe.api_base
    )
    schedule = DunningSchedule.parse("1,3", grace_days=5)
    return Payments(database, provider, schedule=schedule, clock=clock)


def closed_month(database: Database, org: str) -> tuple[str, str]:
    """``org`` on a 30.00 USD monthly plan since November, its November invoice
    finalized; returns (organisation id, invoice id)."""
    with database.session() as session:
        org_id = accounts.ensure_org(session, org).id
        billing_admin.publish_plan(session, MONTHLY_PLAN)
        billing_admin.subscribe(session, org, "pro", at=NOVEMBER.start)
    [closed] = close_period(database, NOVEMBER, organization=org, now=CLOSED_AT)
    assert closed.invoice.status.value == "finalized"
    return org_id, closed.invoice.id


def invoice_status(database: Database, invoice_id: str) -> str:
    with database.session() as session:
        return BillingStore(session).invoices.load_invoice(invoice_id).status.value


def save_card(payments: Payments, localstripe: LocalStripe, org: str, number: str) -> None:
    """As the portal does: a SetupIntent confirmed with the card in the browser."""
    setup = payments.start_setup(org)
    localstripe.confirm_setup(setup["setup_intent"], localstripe.card(number))
    saved = payments.save_method(org, setup_intent=setup["setup_intent"])
    assert saved["payment_method_label"].endswith(number[-4:])


def paid_credit(database: Database, org: str) -> Decimal:
    with database.session() as session:
        return Decimal(billing_admin.wallet_balance(session, org, "USD")["balance"])


def test_a_saved_card_pays_the_closed_month_to_the_cent(
    database: Database, payments: Payments, localstripe: LocalStripe
) -> None:
    _, invoice_id = closed_month(database, "acme")
    save_card(payments, localstripe, "acme", GOOD_CARD)

    payment = payments.collect_invoice(invoice_id)

    assert payment["status"] == "succeeded"
    assert invoice_status(database, invoice_id) == "paid"
    with database.session() as session:
        total = BillingStore(session).invoices.load_invoice(invoice_id).total
    assert payment["amount_minor"] == total.to_minor_units() == 3000
    intent = localstripe.client.v1.payment_intents.retrieve(payment["intent_id"])
    account = payments.account("acme")
    assert (intent.amount, intent.currency, intent.status) == (3000, "usd", "succeeded")
    assert intent.customer == account["customer_id"]
    assert intent.metadata["modelmint_payment"] == payment["id"]
    # Collecting a paid invoice again neither charges nor fails.
    with pytest.raises(Exception, match="only a finalized invoice"):
        payments.collect_invoice(invoice_id)
    assert [p["status"] for p in account["payments"]] == ["succeeded"]


def test_a_declined_card_is_retried_on_schedule_then_blocked_until_paid(
    database: Database, payments: Payments, localstripe: LocalStripe, clock: Clock
) -> None:
    org_id, invoice_id = closed_month(database, "acme")
    with database.session() as session:
        key, secret = accounts.create_key(session, accounts.get_org(session, "acme"), name="k")
    digest = hash_secret(secret)
    save_card(payments, localstripe, "acme", DECLINED_CARD)

    first = payments.collect_invoice(invoice_id)

    assert first["status"] == "failed" and "declined" in first["failure"]
    assert invoice_status(database, invoice_id) == "finalized"
    assert first["next_attempt_at"] == (CLOSED_AT + timedelta(days=1)).isoformat()

    clock.advance(hours=12)
    assert payments.run_dunning() == {"retried": [], "blocked": []}  # not due yet
    clock.advance(hours=12)
    [second] = payments.run_dunning()["retried"]
    assert (second["attempts"], second["status"]) == (2, "failed")
    assert second["next_attempt_at"] == (CLOSED_AT + timedelta(days=3)).isoformat()
    clock.now = CLOSED_AT + timedelta(days=3)
    [third] = payments.run_dunning()["retried"]
    assert (third["attempts"], third["next_attempt_at"]) == (3, None)  # retries spent

    with database.session() as session:
        alerts = list(session.scalars(select(BillingAlert).where(BillingAlert.kind == "payment")))
        assert sorted(a.payload["attempt"] for a in alerts) == [1, 2, 3]
        assert all(a.payload["invoice_id"] == invoice_id for a in alerts)
        key_info = lookup_key_by_hash(session, digest)
        assert key_info is not None and not key_info.payment_blocked  # grace not over

    clock.now = CLOSED_AT + timedelta(days=5)
    assert payments.run_dunning()["blocked"] == [org_id]
    with database.session() as session:
        key_info = lookup_key_by_hash(session, digest)
        assert key_info is not None and key_info.payment_blocked

    save_card(payments, localstripe, "acme", GOOD_CARD)
    paid = payments.retry(first["id"])

    assert (paid["status"], paid["attempts"]) == ("succeeded", 4)
    assert invoice_status(database, invoice_id) == "paid"
    assert payments.account("acme")["blocked_at"] is None
    with database.session() as session:
        key_info = lookup_key_by_hash(session, digest)
        assert key_info is not None and not key_info.payment_blocked
        assert key_info.id == key.id


def test_a_top_up_is_credited_once_however_its_events_arrive(
    database: Database, payments: Payments, localstripe: LocalStripe
) -> None:
    with database.session() as session:
        accounts.ensure_org(session, "acme")
    with pytest.raises(InvalidRequest, match="no saved payment method"):
        payments.top_up("acme", "25.00", "USD")
    # A card whose bank wants the customer present: off session it waits for action,
    # and the money arrives later, announced by webhook.
    payments.save_method("acme", payment_method=localstripe.card(AUTHENTICATION_CARD))
    waiting = payments.top_up("acme", "25.00", "USD")
    assert waiting["status"] == "requires_action"
    with database.session() as session:
        assert billing_admin.wallet_currencies(session, waiting["organization_id"]) == []

    def deliver(event_id: str, kind: str) -> str:
        event = intent_event(event_id, kind, waiting["intent_id"], waiting["id"], 2500)
        payload, signature = signed_event(event)
        return payments.apply_event(payments.provider.event(payload, signature))

    # Out of order and repeated: a failure reported late, successes delivered several
    # times, under their own id and under new ones, some at the same moment.
    assert deliver("evt_fail_early", "payment_intent.payment_failed") == "applied"
    assert deliver("evt_ok", "payment_intent.succeeded") == "applied"
    assert deliver("evt_ok", "payment_intent.succeeded") == "duplicate"
    outcomes: list[str] = []
    threads = [
        threading.Thread(
            target=lambda i=i: outcomes.append(
                deliver(f"evt_ok_{i % 3}", "payment_intent.succeeded")
            )
        )
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(outcomes)) == ["already_final", "duplicate"]
    assert deliver("evt_fail_late", "payment_intent.payment_failed") == "already_final"

    assert paid_credit(database, "acme") == Decimal("25.00")
    with database.session() as session:
        ledger = billing_admin.wallet_ledger(session, "acme", "USD")
        grants = [entry for entry in ledger["entries"] if entry.get("reference") == waiting["id"]]
        assert len(grants) == 1
        events = {e.id: e.outcome for e in session.scalars(select(PaymentEvent))}
    assert events["evt_ok"] == "applied" and len(events) == 6
    assert payments.payment(waiting["id"])["status"] == "succeeded"


def test_a_card_charged_at_once_credits_a_top_up_without_waiting_for_the_webhook(
    database: Database, payments: Payments, localstripe: LocalStripe
) -> None:
    with database.session() as session:
        accounts.ensure_org(session, "acme")
    method = localstripe.card(GOOD_CARD)
    payments.save_method("acme", payment_method=method)

    paid = payments.top_up("acme", "12.34", "USD")

    assert (paid["status"], paid["amount_minor"]) == ("succeeded", 1234)
    assert paid_credit(database, "acme") == Decimal("12.34")
    # The provider's own webhook for the same success then changes nothing.
    event = intent_event(
        "evt_late", "payment_intent.succeeded", paid["intent_id"], paid["id"], 1234
    )
    payload, signature = signed_event(event)
    assert payments.apply_event(payments.provider.event(payload, signature)) == "already_final"
    assert paid_credit(database, "acme") == Decimal("12.34")
    with pytest.raises(Exception, match="positive amount in whole minor units"):
        payments.top_up("acme", "0.001", "USD")


def test_an_event_that_does_not_verify_is_refused(
    database: Database, payments: Payments, localstripe: LocalStripe
) -> None:
    event = intent_event("evt_x", "payment_intent.succeeded", "pi_x", "pay_x", 100)
    payload, _ = signed_event(event, secret="whsec_someone_else")
    _, stale = signed_event(event, at=int(CLOSED_AT.timestamp()) - 3600)
    _, good = signed_event(event)
    for signature in (signed_event(event, secret="whsec_someone_else")[1], stale, None, "t=1"):
        with pytest.raises(InvalidSignature):
            payments.provider.event(payload, signature)
    tampered = payload.replace(b"100", b"999")
    with pytest.raises(InvalidSignature):
        payments.provider.event(tampered, good)
    with database.session() as session:
        assert session.scalars(select(PaymentEvent)).first() is None
        assert session.scalars(select(Payment)).first() is None


def test_a_paid_invoice_is_refunded_in_full_and_voided_once(
    database: Database, payments: Payments, localstripe: LocalStripe
) -> None:
    _, invoice_id = closed_month(database, "acme")
    with pytest.raises(Conflict, match="only a paid invoice"):
        payments.refund_invoice(invoice_id)
    payments.save_method("acme", payment_method=localstripe.card(GOOD_CARD))
    paid = payments.collect_invoice(invoice_id)

    refunded = payments.refund_invoice(invoice_id)

    assert (refunded["status"], refunded["id"]) == ("refunded", paid["id"])
    refund = localstripe.client.v1.refunds.retrieve(refunded["refund_id"])
    assert (refund.amount, refund.payment_intent, refund.status) == (
        3000,
        paid["intent_id"],
        "succeeded",
    )
    with database.session() as session:
        invoice = BillingStore(session).invoices.load_invoice(invoice_id)
    assert invoice.status.value == "void" and invoice.stamp(InvoiceStatus.PAID) is not None
    assert invoice.total.to_minor_units() == 3000  # the bill itself is unchanged
    with pytest.raises(Conflict, match="only a paid invoice"):
        payments.refund_invoice(invoice_id)
    assert payments.invoice_payment(invoice_id)["status"] == "refunded"  # type: ignore[index]


def test_an_invoice_paid_by_hand_is_not_refunded_through_the_provider(
    database: Database, payments: Payments
) -> None:
    _, invoice_id = closed_month(database, "acme")
    with database.session() as session:
        billing_admin.pay_invoice(session, invoice_id)
    with pytest.raises(Conflict, match="marked paid by hand"):
        payments.refund_invoice(invoice_id)
    assert invoice_status(database, invoice_id) == "paid"
    assert payments.invoice_payment(invoice_id) is None
