"""Taking the money: invoices and top-ups charged to a saved method, outcomes applied once.

One ``Payment`` row per sum to collect. An attempt is three steps, so that no database
transaction waits on the provider and a crash between them loses nothing:

1. a transaction marks the payment ``processing`` and counts the attempt;
2. the provider is called with the idempotency key ``<payment id>-<attempt>``, so a
   repeated call cannot take the money twice;
3. a transaction applies the answer (``_apply``).

The provider's webhook events go through the same ``_apply``, matched to the payment
by the id every intent carries in its metadata. ``_apply`` is what makes the effects
exactly-once, whatever the order and number of deliveries: ``succeeded`` is final (a
later failure of the same intent is ignored, a repeated success does nothing), and the
effect of success (the invoice marked paid, the top-up's credit granted with the
payment id as its reference) happens only on the move into ``succeeded``, under the
payment row's lock. Events already seen are skipped by their id (``payment_events``).

A failed invoice payment is retried on the dunning schedule (``run_dunning``), raises
a ``payment`` alert at each failure, and blocks the organisation's keys once the grace
period has passed; success anywhere lifts the block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelmint import accounts, billing_admin
from modelmint.billing.invoices import InvoiceStatus
from modelmint.billing.money import Money
from modelmint.billing.serialization import Json
from modelmint.billing.store import BillingStore
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.payments import status
from modelmint.payments.customers import PaymentCustomers, find_account, positive_money
from modelmint.payments.provider import (
    PAYMENT_METADATA_KEY,
    Charge,
    ChargeStatus,
    ProviderEvent,
)
from modelmint.storage.tables import Payment, PaymentAccount, PaymentEvent

__all__ = ["INVOICE", "TOP_UP", "Payments"]

log = logging.getLogger(__name__)


INVOICE = "invoice"
TOP_UP = "top_up"
AUTO_TOP_UP = "auto_top_up"

PENDING = "pending"
PROCESSING = "processing"
SUCCEEDED = "succeeded"
FAILED = "failed"
REQUIRES_ACTION = "requires_action"
REFUNDED = "refunded"
# An attempt still "processing" this long after it began lost its process mid-call (the
# provider answers in seconds): it is sent again under the same idempotency key.
STALE_ATTEMPT = timedelta(minutes=10)
# After a declined auto top-up, how long before the next one may be tried.
AUTO_TOP_UP_COOLDOWN = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class _Attempt:
    payment_id: str
    attempt: int
    customer_id: str
    method_id: str
    amount_minor: int
    currency: str
    description: str


class Payments(PaymentCustomers):
    """Collection through one provider, on one database. Thread-safe; holds no state.

    The customers and their saved methods are the base class's (``customers``)."""

    # -- collecting ------------------------------------------------------------------------

    def collect_invoice(self, invoice_id: str) -> Json:
        """Charge a finalised invoice's total to the saved method, off session."""
        with self._db.session() as session:
            invoice = BillingStore(session).invoices.load_invoice(invoice_id)
            if invoice.status is not InvoiceStatus.FINALIZED:
                raise Conflict(
                    f"invoice {invoice_id} is {invoice.status.value}: only a finalized "
                    "invoice is collected"
                )
            total = invoice.total
            payment = session.scalar(
                select(Payment)
                .where(Payment.invoice_id == invoice_id, Payment.kind == INVOICE)
                .with_for_update()
            )
            if payment is None:
                payment = self._new_payment(
                    session, invoice.organization_id, INVOICE, total, invoice_id=invoice_id
                )
            payment_id = payment.id
        if total.is_zero:
            return self._settle_free(payment_id)
        return self._attempt(payment_id)

    def top_up(self, org: str, amount: str, currency: str) -> Json:
        """Buy prepaid credit now with the saved method; credited when the payment succeeds."""
        value = positive_money(amount, currency)
        with self._db.session() as session:
            organization = accounts.get_org(session, org)
            account = find_account(session, organization.id)
            if account is None or not account.payment_method_id:
                raise InvalidRequest(
                    f"{organization.name} has no saved payment method: save one first "
                    "(`modelmint payments save-method`, or the admin API's payment-method)",
                    param="organization",
                )
            payment_id = self._new_payment(session, organization.id, TOP_UP, value).id
        return self._attempt(payment_id)

    def retry(self, payment_id: str) -> Json:
        """Try a failed payment again now (the operator's or the customer's choice)."""
        return self._attempt(payment_id)

    def run_dunning(self) -> Json:
        """Resume attempts whose process died mid-call, retry the failed invoice payments
        that are due, and block the organisations whose grace period has passed. Run it
        periodically (the gateway does, every minute)."""
        now = self._clock()
        with self._db.session() as session:
            stale = list(
                session.scalars(
                    select(Payment.id).where(
                        Payment.status == PROCESSING, Payment.updated_at <= now - STALE_ATTEMPT
                    )
                )
            )
            due = list(
                session.scalars(
                    select(Payment.id).where(
                        Payment.status == FAILED,
                        Payment.kind == INVOICE,
                        Payment.next_attempt_at <= now,
                    )
                )
            )
        retried = [self._attempt(payment_id, resume=True) for payment_id in stale]
        retried += [self._attempt(payment_id, due_only=True) for payment_id in due]
        blocked = []
        with self._db.session() as session:
            overdue = session.execute(
                select(Payment.organization_id, Payment.first_failed_at).where(
                    Payment.kind == INVOICE, Payment.status.in_((FAILED, REQUIRES_ACTION))
                )
            ).all()
            for org_id, first_failed_at in overdue:
                if first_failed_at is None or self.schedule.blocks_at(first_failed_at) > now:
                    continue
                account = self._open_account(session, org_id, lock=True)
                if account.blocked_at is None:
                    account.blocked_at = now
                    account.updated_at = now
                    blocked.append(org_id)
                    log.warning("organisation %s blocked: invoice payment overdue", org_id)
        return {"retried": retried, "blocked": blocked}

    # -- refunds -----------------------------------------------------------------------------

    def refund_invoice(self, invoice_id: str) -> Json:
        """Refund a paid invoice's payment in full and void the invoice; the refund is its
        credit note. Repeating it after a crash refunds nothing twice (same key)."""
        with self._db.session() as session:
            invoice = BillingStore(session).invoices.load_invoice(invoice_id)
            if invoice.status is not InvoiceStatus.PAID:
                raise Conflict(
                    f"invoice {invoice_id} is {invoice.status.value}: only a paid invoice is "
                    "refunded (void an unpaid one with `modelmint invoices void`)"
                )
            payment = session.scalar(
                select(Payment).where(
                    Payment.invoice_id == invoice_id,
                    Payment.kind == INVOICE,
                    Payment.status == SUCCEEDED,
                )
            )
            if payment is None or payment.intent_id is None:
                raise Conflict(
                    f"invoice {invoice_id} was not paid through the payment provider (it was "
                    "marked paid by hand): refund it where it was paid"
                )
            payment_id, intent_id, amount = payment.id, payment.intent_id, payment.amount_minor
        refund_id = self.provider.refund(
            intent_id, amount_minor=amount, idempotency_key=f"refund-{payment_id}"
        )
        now = self._clock()
        with self._db.session() as session:
            payment = _locked_payment(session, payment_id)
            stored = BillingStore(session).invoices
            invoice = stored.load_invoice(invoice_id)
            if invoice.status is InvoiceStatus.PAID:
                invoice.void_refunded(now)
                stored.save_invoice(invoice)
            payment.status = REFUNDED
            payment.refund_id = refund_id
            payment.updated_at = now
            return status.payment_json(payment)

    def invoice_payment(self, invoice_id: str) -> Json | None:
        with self._db.session() as session:
            return status.invoice_payments(session, [invoice_id]).get(invoice_id)

    # -- auto top-up -------------------------------------------------------------------------

    def run_auto_top_ups(self) -> list[Json]:
        """Charge every organisation whose credit is below its threshold, at most one
        auto top-up in flight each. Run it periodically (the gateway does, every few
        seconds); several processes may run it at once."""
        with self._db.session() as session:
            candidates = list(
                session.scalars(
                    select(PaymentAccount.organization_id).where(
                        PaymentAccount.auto_top_up_below.is_not(None),
                        PaymentAccount.payment_method_id.is_not(None),
                    )
                )
            )
        fired = []
        for organization_id in candidates:
            payment_id = self._claim_auto_top_up(organization_id)
            if payment_id is not None:
                fired.append(self._attempt(payment_id))
        return fired

    def _claim_auto_top_up(self, organization_id: str) -> str | None:
        """The new auto top-up payment, if the credit is low and none is in flight."""
        now = self._clock()
        with self._db.session() as session:
            # The account row is written first: on PostgreSQL that locks it, on SQLite it
            # takes the write lock, so two processes never both see "none in flight".
            session.execute(
                update(PaymentAccount)
                .where(PaymentAccount.organization_id == organization_id)
                .values(updated_at=now)
            )
            account = find_account(session, organization_id)
            if account is None or account.auto_top_up_below is None:
                return None
            currency = account.auto_top_up_currency or "USD"
            if _credit_balance(session, organization_id, currency) >= account.auto_top_up_below:
                return None
            recent = session.scalar(
                select(Payment.id).where(
                    Payment.organization_id == organization_id,
                    Payment.kind == AUTO_TOP_UP,
                    or_(
                        Payment.status.in_((PENDING, PROCESSING, REQUIRES_ACTION)),
                        # A declined card is not charged again and again: wait a while.
                        and_(
                            Payment.status == FAILED,
                            Payment.updated_at > now - AUTO_TOP_UP_COOLDOWN,
                        ),
                    ),
                )
            )
            if recent is not None or account.auto_top_up_amount is None:
                return None
            amount = Money(account.auto_top_up_amount, currency)
            return self._new_payment(session, organization_id, AUTO_TOP_UP, amount).id

    def _new_payment(
        self,
        session: Session,
        organization_id: str,
        kind: str,
        amount: Money,
        *,
        invoice_id: str | None = None,
    ) -> Payment:
        now = self._clock()
        payment = Payment(
            id=new_id("pay"),
            organization_id=organization_id,
            kind=kind,
            invoice_id=invoice_id,
            amount_minor=amount.to_minor_units(),
            currency=amount.currency,
            status=PENDING,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        session.add(payment)
        session.flush()
        return payment

    def _attempt(self, payment_id: str, *, due_only: bool = False, resume: bool = False) -> Json:
        attempt = self._begin_attempt(payment_id, due_only=due_only, resume=resume)
        if attempt is None:  # already paid, in flight, or no longer due
            return self.payment(payment_id)
        metadata = {PAYMENT_METADATA_KEY: attempt.payment_id}
        try:
            charge = self.provider.charge(
                customer_id=attempt.customer_id,
                payment_method_id=attempt.method_id,
                amount_minor=attempt.amount_minor,
                currency=attempt.currency,
                description=attempt.description,
                metadata=metadata,
                idempotency_key=f"{attempt.payment_id}-{attempt.attempt}",
            )
        except Exception:
            # The provider's answer is unknown: leave the payment processing. Its webhook,
            # or a retry with the same key, settles it without charging twice.
            log.exception("payment %s: the provider call failed", payment_id)
            raise
        with self._db.session() as session:
            payment = _locked_payment(session, payment_id)
            self._apply(session, payment, charge, intent_id=charge.intent_id, current=True)
            return status.payment_json(payment)

    def _begin_attempt(
        self, payment_id: str, *, due_only: bool, resume: bool = False
    ) -> _Attempt | None:
        """Claim the next attempt, or (``resume``) the same attempt again: one whose
        process died before it recorded the provider's answer. Resuming sends the same
        idempotency key, so the provider answers with the first call's outcome."""
        now = self._clock()
        with self._db.session() as session:
            payment = _locked_payment(session, payment_id)
            if resume:
                if payment.status != PROCESSING or payment.updated_at > now - STALE_ATTEMPT:
                    return None
            elif payment.status in (SUCCEEDED, REFUNDED, PROCESSING):
                return None
            if due_only and (payment.next_attempt_at is None or payment.next_attempt_at > now):
                return None
            account = find_account(session, payment.organization_id)
            if account is None or not account.customer_id or not account.payment_method_id:
                payment.attempts += 1
                payment.status = FAILED
                payment.failure = "no saved payment method"
                payment.updated_at = now
                self._failed(session, payment, now)
                return None
            payment.status = PROCESSING
            if not resume:
                payment.attempts += 1
            payment.updated_at = now
            money = Money.from_minor_units(payment.amount_minor, payment.currency)
            what = f"invoice {payment.invoice_id}" if payment.invoice_id else "prepaid credit"
            return _Attempt(
                payment_id=payment.id,
                attempt=payment.attempts,
                customer_id=account.customer_id,
                method_id=account.payment_method_id,
                amount_minor=payment.amount_minor,
                currency=payment.currency,
                description=f"ModelMint {what}, {money}",
            )

    def _settle_free(self, payment_id: str) -> Json:
        with self._db.session() as session:
            payment = _locked_payment(session, payment_id)
            charge = Charge(ChargeStatus.SUCCEEDED, None)
            self._apply(session, payment, charge, intent_id=None, current=True)
            return status.payment_json(payment)

    # -- the provider's events ---------------------------------------------------------------

    def apply_event(self, event: ProviderEvent) -> str:
        """Apply a verified event once; returns what became of it (for logs and tests)."""
        try:
            return self._apply_event(event)
        except IntegrityError:
            # Two deliveries of one event raced: the second insert of its id failed and
            # its whole transaction, effect included, rolled back.
            return "duplicate"

    def _apply_event(self, event: ProviderEvent) -> str:
        with self._db.session() as session:
            # The event's id is claimed first: a delivery seen before fails here (and so
            # does the later of two racing ones, once the first commits). On SQLite the
            # insert also takes the write lock before anything is read.
            record = PaymentEvent(
                id=event.id, type=event.type, outcome="received", received_at=self._clock()
            )
            session.add(record)
            session.flush()
            payment = None
            if event.status is not None and event.payment_id:
                payment = session.get(Payment, event.payment_id, with_for_update=True)
            if payment is None or event.status is None:
                record.outcome = "ignored"
                return record.outcome
            charge = Charge(event.status, event.intent_id, event.failure)
            record.payment_id = payment.id
            record.outcome = self._apply(session, payment, charge, intent_id=event.intent_id)
            return record.outcome

    # -- one outcome, applied once ------------------------------------------------------------

    def _apply(
        self,
        session: Session,
        payment: Payment,
        charge: Charge,
        *,
        intent_id: str | None,
        current: bool = False,
    ) -> str:
        """Move ``payment`` by ``charge``; returns "applied" or why it was not.

        ``current``: the answer to the attempt just made, which replaces the payment's
        intent; an event about another intent than the payment's is an earlier attempt's.
        """
        now = self._clock()
        if payment.status in (SUCCEEDED, REFUNDED):
            return "already_final"
        stale = not current and intent_id is not None and payment.intent_id not in (None, intent_id)
        if stale and charge.status is not ChargeStatus.SUCCEEDED:
            # An earlier attempt's news: the current attempt decides. (Money taken by an
            # earlier intent is never ignored, so a success always applies.)
            return "stale"
        if intent_id is not None:
            payment.intent_id = intent_id
        payment.updated_at = now
        if charge.status is ChargeStatus.SUCCEEDED:
            payment.status = SUCCEEDED
            payment.succeeded_at = now
            payment.failure = None
            payment.next_attempt_at = None
            self._succeeded(session, payment, now)
        elif charge.status is ChargeStatus.PROCESSING:
            payment.status = PROCESSING
        elif charge.status is ChargeStatus.REQUIRES_ACTION:
            payment.status = REQUIRES_ACTION
            payment.failure = charge.failure
            self._failed(session, payment, now)
        else:
            payment.status = FAILED
            payment.failure = charge.failure or "declined"
            self._failed(session, payment, now)
        return "applied"

    def _succeeded(self, session: Session, payment: Payment, now: datetime) -> None:
        if payment.kind == INVOICE and payment.invoice_id is not None:
            stored = BillingStore(session).invoices.status(payment.invoice_id)
            if stored == InvoiceStatus.FINALIZED.value:
                billing_admin.pay_invoice(session, payment.invoice_id, now)
        elif payment.kind in (TOP_UP, AUTO_TOP_UP):
            money = Money.from_minor_units(payment.amount_minor, payment.currency)
            billing_admin.grant_credit(
                session,
                payment.organization_id,
                f"{money.amount:f}",
                payment.currency,
                kind="paid",
                reference=payment.id,
            )
        account = find_account(session, payment.organization_id, lock=True)
        if account is not None and account.blocked_at is not None:
            still_overdue = session.scalar(
                select(Payment.id).where(
                    Payment.organization_id == payment.organization_id,
                    Payment.kind == INVOICE,
                    Payment.status.in_((FAILED, REQUIRES_ACTION)),
                    Payment.id != payment.id,
                )
            )
            if still_overdue is None:
                account.blocked_at = None
                account.updated_at = now

    def _failed(self, session: Session, payment: Payment, now: datetime) -> None:
        if payment.first_failed_at is None:
            payment.first_failed_at = now
        if payment.kind == INVOICE:
            payment.next_attempt_at = self.schedule.next_attempt(
                payment.first_failed_at, payment.attempts
            )
        _raise_alert(session, payment, now)

    def payment(self, payment_id: str) -> Json:
        with self._db.session() as session:
            return status.payment(session, payment_id)

    def payments(self, *, org: str | None = None, state: str | None = None) -> list[Json]:
        with self._db.session() as session:
            return status.payments(session, org=org, state=state)


def _credit_balance(session: Session, organization_id: str, currency: str) -> Decimal:
    """What is left of the prepaid credit, consumption not yet posted included."""
    if currency not in billing_admin.wallet_currencies(session, organization_id):
        return Decimal(0)
    return Decimal(billing_admin.wallet_balance(session, organization_id, currency)["balance"])


def _locked_payment(session: Session, payment_id: str) -> Payment:
    payment = session.get(Payment, payment_id, with_for_update=True)
    if payment is None:
        raise NotFound(f"no payment {payment_id!r}", param="payment")
    return payment


def _raise_alert(session: Session, payment: Payment, now: datetime) -> None:
    """A ``payment`` alert per failed attempt, delivered like the billing alerts."""
    alert_id = f"payment:{payment.id}:{payment.attempts}"
    money = Money.from_minor_units(payment.amount_minor, payment.currency)
    BillingStore(session).alerts.add(
        alert_id,
        payment.organization_id,
        api_key_id="",
        kind="payment",
        subject=payment.id,
        period_start=payment.first_failed_at or now,
        threshold=payment.attempts,
        payload={
            "id": alert_id,
            "type": "payment.failed",
            "organization_id": payment.organization_id,
            "payment_id": payment.id,
            "invoice_id": payment.invoice_id,
            "amount": f"{money.amount:f}",
            "currency": payment.currency,
            "attempt": payment.attempts,
            "failure": payment.failure,
            "next_attempt_at": status.iso(payment.next_attempt_at),
            "raised_at": now.isoformat(),
        },
        now=now,
    )
