"""The organisations at the payment provider: customers, saved methods, auto top-up
settings and the dunning block, and the account row they all live on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from modelmint import accounts, billing_admin
from modelmint.billing.errors import InvalidMoney
from modelmint.billing.money import Money
from modelmint.billing.serialization import Json
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest
from modelmint.ids import new_id
from modelmint.payments import status
from modelmint.payments.dunning import DunningSchedule
from modelmint.payments.provider import PaymentProvider, SetupStart
from modelmint.storage.db import Database
from modelmint.storage.tables import PaymentAccount

__all__ = ["PaymentCustomers", "find_account", "positive_money"]

Clock = Callable[[], datetime]


class PaymentCustomers:
    """Who each organisation is at the provider, and how it pays."""

    def __init__(
        self,
        database: Database,
        provider: PaymentProvider,
        *,
        schedule: DunningSchedule | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._db = database
        self.provider = provider
        self.schedule = schedule or DunningSchedule()
        self._clock = clock

    # -- customers and saved methods -------------------------------------------------------

    def ensure_customer(self, org: str) -> str:
        """The organisation's customer id at the provider, created on first use."""
        with self._db.session() as session:
            organization = accounts.get_org(session, org)
            account = self._open_account(session, organization.id)
            if account.customer_id:
                return account.customer_id
            org_id, name = organization.id, organization.name
        # The key is the organisation's: two processes racing here get the same customer.
        customer_id = self.provider.create_customer(
            name=name, metadata={"modelmint_org": org_id}, idempotency_key=f"customer-{org_id}"
        )
        with self._db.session() as session:
            account = self._open_account(session, org_id, lock=True)
            if not account.customer_id:
                account.customer_id = customer_id
                account.updated_at = self._clock()
            return account.customer_id

    def start_setup(self, org: str) -> Json:
        """Begin saving a card: the portal confirms the SetupIntent with Stripe.js."""
        customer_id = self.ensure_customer(org)
        start: SetupStart = self.provider.start_setup(
            customer_id, idempotency_key=f"setup-{customer_id}-{new_id('s')}"
        )
        return {
            "setup_intent": start.setup_intent_id,
            "client_secret": start.client_secret,
            "publishable_key": self.provider.publishable_key,
        }

    def save_method(
        self, org: str, *, setup_intent: str | None = None, payment_method: str | None = None
    ) -> Json:
        """Make a confirmed SetupIntent's method (or a given method) the one charged."""
        if (setup_intent is None) == (payment_method is None):
            raise InvalidRequest("name either a confirmed setup intent or a payment method")
        customer_id = self.ensure_customer(org)
        if setup_intent is not None:
            saved = self.provider.finish_setup(customer_id, setup_intent)
        else:
            assert payment_method is not None
            saved = self.provider.attach_method(
                customer_id, payment_method, idempotency_key=f"attach-{payment_method}"
            )
        with self._db.session() as session:
            organization = accounts.get_org(session, org)
            account = self._open_account(session, organization.id, lock=True)
            account.payment_method_id = saved.payment_method_id
            account.method_label = saved.label
            account.updated_at = self._clock()
            return status.account_json(organization, account)

    def account(self, org: str) -> Json:
        with self._db.session() as session:
            return status.account(session, org)

    def unblock(self, org: str) -> Json:
        """Lift a dunning block by hand: the keys work again at once (within the cache)."""
        with self._db.session() as session:
            organization = accounts.get_org(session, org)
            account = find_account(session, organization.id, lock=True)
            if account is not None:
                account.blocked_at = None
                account.updated_at = self._clock()
            return status.account_json(organization, account)

    def set_auto_top_up(
        self, org: str, *, below: str | None, amount: str | None, currency: str = "USD"
    ) -> Json:
        """Top the prepaid credit up by ``amount`` whenever it falls below ``below``; both
        None turns it off. Needs a saved payment method to ever fire."""
        if (below is None) != (amount is None):
            raise InvalidRequest("give both the threshold and the amount, or neither")
        threshold = top_up = None
        if below is not None and amount is not None:
            threshold = Money(
                billing_admin.decimal_string(below, "below", InvalidMoney),
                billing_admin.currency_code(currency),
            )
            if threshold.is_negative:
                raise InvalidMoney("the threshold cannot be negative", param="below")
            top_up = positive_money(amount, currency)
        with self._db.session() as session:
            organization = accounts.get_org(session, org)
            account = self._open_account(session, organization.id, lock=True)
            account.auto_top_up_below = None if threshold is None else threshold.amount
            account.auto_top_up_amount = None if top_up is None else top_up.amount
            account.auto_top_up_currency = None if top_up is None else top_up.currency
            account.updated_at = self._clock()
            return status.account_json(organization, account)

    def _open_account(
        self, session: Session, organization_id: str, *, lock: bool = False
    ) -> PaymentAccount:
        """The organisation's payment account, made if it has none."""
        account = find_account(session, organization_id, lock=lock)
        if account is None:
            now = self._clock()
            account = PaymentAccount(
                organization_id=organization_id,
                provider=self.provider.name,
                created_at=now,
                updated_at=now,
            )
            session.add(account)
            session.flush()
        return account


def find_account(
    session: Session, organization_id: str, *, lock: bool = False
) -> PaymentAccount | None:
    return session.get(PaymentAccount, organization_id, with_for_update=lock or None)


def positive_money(amount: str, currency: str) -> Money:
    value = Money(
        billing_admin.decimal_string(amount, "amount", InvalidMoney),
        billing_admin.currency_code(currency),
    )
    if value.is_negative or value.is_zero or not value.is_quantized:
        raise InvalidMoney(
            f"a top-up must be a positive amount in whole minor units, got {value}",
            param="amount",
        )
    return value
