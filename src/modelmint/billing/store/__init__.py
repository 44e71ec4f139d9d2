"""The billing store: the domain of ``modelmint.billing`` mapped to storage tables.

The only code that names the ``Billing*`` tables (a test reads the imports to hold
that rule). It works inside the caller's unit of work (``Database.session()``): it
flushes but never commits. One part per aggregate:

    store = BillingStore(session)
    plan = store.plans.publish_plan(SubscriptionPlan(...))   # plan versions: insert only
    store.subscriptions.subscribe(org_id, plan.ref, at)      # the organisation's timeline
    wallet = store.wallets.load_wallet(org_id, "USD", for_update=True)
    wallet.grant(...); store.wallets.save_wallet(wallet)     # appends ledger rows

    plans          price books and plan versions
    subscriptions  each organisation's timeline of plan versions
    wallets        wallets, their credit grants and reservations; loading and saving
    ledger         reading a wallet's ledger back: a page, its sum, an audit
    holds          per-request holds on a wallet (admission without a lease)
    leases         credit lease rows and the wallet rows they are taken from
    usage          running usage totals per period, and the per-organisation rating lock
    budgets        monthly budgets and month-to-date spend
    alerts         alert rows: raised once, listed, and their delivery state
    coupons        coupon definitions and redemptions
    invoices       invoices, their lines, and organisations' tax rates

Rules it keeps:

* Plan versions, price books, grants and ledger entries are only ever inserted.
  There is no API that updates or deletes a ledger entry; ``save_wallet`` appends
  the entries the domain wallet made since it was loaded, and refuses (``Conflict``)
  if another writer appended first (compare-and-set on ``last_sequence``).
* Unknown organisations raise ``NotFound``, unknown plans ``PlanNotFound``,
  duplicates ``Conflict`` (or its billing subclasses).

Parts are made on first use, so a store costs only what the caller touches.
"""

from __future__ import annotations

from functools import cached_property

from sqlalchemy.orm import Session

from modelmint.billing.store.alerts import AlertStore
from modelmint.billing.store.budgets import BudgetStore
from modelmint.billing.store.coupons import CouponStore
from modelmint.billing.store.holds import HoldStore
from modelmint.billing.store.invoices import InvoiceStore
from modelmint.billing.store.leases import LeaseStore
from modelmint.billing.store.ledger import LedgerStore
from modelmint.billing.store.plans import PlanStore
from modelmint.billing.store.subscriptions import SubscriptionStore
from modelmint.billing.store.usage import UsageStore
from modelmint.billing.store.wallets import WalletStore

__all__ = ["BillingStore"]


class BillingStore:
    """Billing's persistence, one instance per unit of work (``Session``)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @cached_property
    def plans(self) -> PlanStore:
        return PlanStore(self.session)

    @cached_property
    def subscriptions(self) -> SubscriptionStore:
        return SubscriptionStore(self.session)

    @cached_property
    def wallets(self) -> WalletStore:
        # Holds what it loaded of each wallet: one per store, so load and save pair up.
        return WalletStore(self.session)

    @cached_property
    def ledger(self) -> LedgerStore:
        return LedgerStore(self.session)

    @cached_property
    def holds(self) -> HoldStore:
        return HoldStore(self.session)

    @cached_property
    def leases(self) -> LeaseStore:
        return LeaseStore(self.session)

    @cached_property
    def usage(self) -> UsageStore:
        return UsageStore(self.session)

    @cached_property
    def budgets(self) -> BudgetStore:
        return BudgetStore(self.session)

    @cached_property
    def alerts(self) -> AlertStore:
        return AlertStore(self.session)

    @cached_property
    def coupons(self) -> CouponStore:
        return CouponStore(self.session)

    @cached_property
    def invoices(self) -> InvoiceStore:
        return InvoiceStore(self.session)
