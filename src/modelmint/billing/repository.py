"""The billing repository: the domain of ``modelmint.billing`` mapped to storage tables.

The only module under ``billing/`` that imports SQLAlchemy. It works inside the
caller's unit of work (``Database.session()``): it flushes but never commits.

    repo = BillingRepository(session)
    plan = repo.publish_plan(SubscriptionPlan(...))       # plan versions: insert only
    repo.subscribe(org_id, plan.ref, at)                  # the organisation's timeline
    wallet = repo.load_wallet(org_id, "USD", for_update=True)
    wallet.reserve(...); repo.save_wallet(wallet)         # appends ledger rows

Rules it keeps:

* Plan versions, price books, grants and ledger entries are only ever inserted.
  There is no API that updates or deletes a ledger entry; ``save_wallet`` appends
  the entries the domain wallet made since it was loaded, and refuses (``Conflict``)
  if another writer appended first (compare-and-set on ``last_sequence``).
* Unknown organisations raise ``NotFound``, unknown plans ``PlanNotFound``,
  duplicates ``Conflict`` (or its billing subclasses).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelmint.billing.budgets import Budget, alert_id
from modelmint.billing.coupons import Coupon, Redemption
from modelmint.billing.errors import (
    ChargeMismatch,
    InvalidInvoiceTransition,
    PlanNotFound,
    PlanVersionConflict,
)
from modelmint.billing.exact import EXACT, Quantity, exact_sum
from modelmint.billing.invoices import Invoice, InvoiceLine, InvoiceStatus, LineKind
from modelmint.billing.metrics import Metric
from modelmint.billing.money import Money
from modelmint.billing.periods import Period, utc
from modelmint.billing.plans import Plan, PlanCatalog, PlanRef
from modelmint.billing.price_book import PriceBook
from modelmint.billing.rating import ChargedTotal, UsageKey, UsageTotal
from modelmint.billing.serialization import (
    Json,
    coupon_from_dict,
    coupon_to_dict,
    plan_from_dict,
    plan_to_dict,
    price_book_from_dict,
    price_book_to_dict,
)
from modelmint.billing.subscriptions import Subscription, SubscriptionTimeline
from modelmint.billing.tax import TaxRate
from modelmint.billing.wallet import (
    CreditGrant,
    EntryKind,
    GrantKind,
    LedgerEntry,
    Reservation,
    Wallet,
    WalletSnapshot,
    replay,
)
from modelmint.clock import utcnow
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import (
    BillingAlert,
    BillingBudget,
    BillingCoupon,
    BillingCouponRedemption,
    BillingCreditGrant,
    BillingCreditLease,
    BillingInvoice,
    BillingInvoiceLine,
    BillingLedgerEntry,
    BillingPlanVersion,
    BillingPriceBook,
    BillingReservation,
    BillingSpend,
    BillingSubscription,
    BillingTaxRate,
    BillingUsageTotal,
    BillingWallet,
    Organization,
    UsageRecord,
)

__all__ = ["BillingRepository"]


# Stored status -> the statuses a later save may record (the domain checks each step).
_LATER_STATES: dict[str, frozenset[str]] = {
    "finalized": frozenset({"finalized", "paid", "void"}),
    "paid": frozenset({"paid", "void"}),  # void: refunded in full
    "void": frozenset({"void"}),
}


# The first key of PostgreSQL advisory locks that serialise rating per organisation
# (the second is the organisation id's hash); distinct from the migration lock's.
_USAGE_LOCK_SPACE = 0x6D6D6272  # "mmbr"


_TOTAL_KEY = ("organization_id", "period_start", "plan_code", "plan_version", "model", "metric")
_TOTALS = cast(Table, BillingUsageTotal.__table__)
_UPDATE_TOTAL = (
    update(_TOTALS)
    .where(*(_TOTALS.c[c] == bindparam(f"k_{c}") for c in _TOTAL_KEY))
    .values(
        quantity=bindparam("quantity"),
        included=bindparam("included"),
        amount=bindparam("amount"),
        charges=bindparam("charges"),
    )
)


def _digest(document: Json) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _stored_quantity(value: Quantity | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _loaded_quantity(value: Decimal | None, metric: Metric | None) -> Quantity | None:
    # Whole-unit metrics are metered as ints; keep that type across a round trip.
    if value is None:
        return None
    if (metric is None or not metric.fractional) and value == value.to_integral_value():
        return int(value)
    return value


class BillingRepository:
    """Billing's persistence, one instance per unit of work (``Session``)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        # wallet id -> ledger length when loaded or last saved: the compare-and-set token.
        self._wallet_versions: dict[str, int] = {}
        # wallet id -> the open reservations it was loaded with (to tell new from closed),
        # the grants stored when loaded, and (credit granted, consumed) as last saved.
        self._loaded_reservations: dict[str, set[str]] = {}
        self._loaded_grants: dict[str, set[str]] = {}
        self._wallet_totals: dict[str, tuple[Decimal, Decimal]] = {}
        # wallet id -> credit held by gateway reservations (``hold_credit``) and leased by
        # gateway processes, as loaded.
        self._wallet_held: dict[str, Decimal] = {}
        self._wallet_leased: dict[str, Decimal] = {}

    # -- helpers --------------------------------------------------------------------------

    def _require_org(self, organization_id: str) -> None:
        if self._session.get(Organization, organization_id) is None:
            raise NotFound(f"no organisation {organization_id!r}", param="organization")

    def _flush(self, conflict: str) -> None:
        try:
            self._session.flush()
        except IntegrityError as exc:  # a concurrent writer won between check and insert
            raise Conflict(conflict) from exc

    # -- price books ------------------------------------------------------------------------

    def save_price_book(self, book: PriceBook) -> str:
        """Store ``book`` (immutable) and return its id; an identical book is stored once."""
        document = price_book_to_dict(book)
        digest = _digest(document)
        existing = self._session.scalar(
            select(BillingPriceBook.id).where(BillingPriceBook.digest == digest)
        )
        if existing is not None:
            return existing
        row = BillingPriceBook(
            id=new_id("pb"), digest=digest, currency=book.currency, document=document
        )
        self._session.add(row)
        self._flush("price book stored concurrently; retry")
        return row.id

    def load_price_book(self, price_book_id: str) -> PriceBook:
        row = self._session.get(BillingPriceBook, price_book_id)
        if row is None:
            raise NotFound(f"no price book {price_book_id!r}", param="price_book")
        return price_book_from_dict(row.document)

    # -- plans -----------------------------------------------------------------------------

    def publish_plan(self, plan: Plan) -> Plan:
        """Store a new plan version: version 1 of a new code, or the next version of one."""
        latest = self._session.scalar(
            select(BillingPlanVersion.version)
            .where(BillingPlanVersion.code == plan.code)
            .order_by(BillingPlanVersion.version.desc())
            .limit(1)
        )
        expected = 1 if latest is None else latest + 1
        if plan.version != expected:
            raise PlanVersionConflict(
                f"plan {plan.code}: cannot publish version {plan.version}, "
                f"the next version is {expected}"
            )
        terms = plan_to_dict(plan)
        book = terms.pop("price_book", None)
        price_book_id = None if book is None else self.save_price_book(price_book_from_dict(book))
        self._session.add(
            BillingPlanVersion(
                id=new_id("planv"),
                code=plan.code,
                version=plan.version,
                kind=plan.kind.value,
                currency=plan.currency,
                price_book_id=price_book_id,
                terms=terms,
            )
        )
        try:
            self._session.flush()
        except IntegrityError as exc:
            raise PlanVersionConflict(f"plan {plan.ref} was published concurrently") from exc
        return plan

    def _plan_row(self, ref: PlanRef) -> BillingPlanVersion:
        row = self._session.scalar(
            select(BillingPlanVersion).where(
                BillingPlanVersion.code == ref.code, BillingPlanVersion.version == ref.version
            )
        )
        if row is None:
            raise PlanNotFound(f"no plan version {ref}", param="plan")
        return row

    def _plan_from_row(self, row: BillingPlanVersion) -> Plan:
        document: dict[str, Any] = dict(row.terms)
        if row.price_book_id is not None:
            book = self._session.get(BillingPriceBook, row.price_book_id)
            assert book is not None  # a foreign key
            document["price_book"] = book.document
        return plan_from_dict(document)

    def load_plan(self, code: str, version: int | None = None) -> Plan:
        """One plan version; the latest when ``version`` is None. ``PlanNotFound`` if none."""
        if version is not None:
            return self._plan_from_row(self._plan_row(PlanRef(code, version)))
        row = self._session.scalar(
            select(BillingPlanVersion)
            .where(BillingPlanVersion.code == code)
            .order_by(BillingPlanVersion.version.desc())
            .limit(1)
        )
        if row is None:
            raise PlanNotFound(f"no plan {code!r}", param="plan")
        return self._plan_from_row(row)

    def plan_catalog(self) -> PlanCatalog:
        """Every stored version of every plan."""
        catalog = PlanCatalog()
        rows = self._session.scalars(
            select(BillingPlanVersion).order_by(BillingPlanVersion.code, BillingPlanVersion.version)
        )
        for row in rows:
            catalog.publish(self._plan_from_row(row))
        return catalog

    # -- subscriptions ---------------------------------------------------------------------

    def _subscription_rows(self, organization_id: str) -> list[BillingSubscription]:
        return list(
            self._session.scalars(
                select(BillingSubscription)
                .where(BillingSubscription.organization_id == organization_id)
                .order_by(BillingSubscription.starts_at)
            )
        )

    def timeline(self, organization_id: str) -> SubscriptionTimeline:
        """The organisation's subscriptions, each on the plan version it used."""
        self._require_org(organization_id)
        subscriptions = []
        for row in self._subscription_rows(organization_id):
            plan_row = self._session.get(BillingPlanVersion, row.plan_version_id)
            assert plan_row is not None  # a foreign key
            plan = self._plan_from_row(plan_row)
            subscriptions.append(Subscription(organization_id, plan, row.starts_at, row.ends_at))
        return SubscriptionTimeline(organization_id, subscriptions)

    def _insert_subscription(self, subscription: Subscription) -> None:
        self._session.add(
            BillingSubscription(
                id=new_id("sub"),
                organization_id=subscription.organization_id,
                plan_version_id=self._plan_row(subscription.plan.ref).id,
                starts_at=subscription.start,
                ends_at=subscription.end,
            )
        )

    def _end_latest(self, organization_id: str, end: datetime) -> None:
        latest = self._subscription_rows(organization_id)[-1]
        latest.ends_at = end

    def subscribe(self, organization_id: str, plan: PlanRef, at: datetime) -> Subscription:
        """Start ``plan`` at ``at``; ``SubscriptionConflict`` while another one runs."""
        timeline = self.timeline(organization_id)
        subscription = timeline.subscribe(self.load_plan(plan.code, plan.version), at)
        self._insert_subscription(subscription)
        self._flush(f"{organization_id!r} was subscribed concurrently")
        return subscription

    def change_plan(self, organization_id: str, plan: PlanRef, at: datetime) -> Subscription:
        """End the current subscription at ``at`` and continue on ``plan``."""
        timeline = self.timeline(organization_id)
        successor = timeline.change_plan(self.load_plan(plan.code, plan.version), at)
        self._end_latest(organization_id, successor.start)
        self._insert_subscription(successor)
        self._flush(f"{organization_id!r} changed plan concurrently")
        return successor

    def cancel(self, organization_id: str, at: datetime) -> Subscription:
        """End the current subscription at ``at`` (removed if cancelled as it starts)."""
        timeline = self.timeline(organization_id)
        ended = timeline.cancel(at)
        if ended.start == utc(at, "cancellation"):  # cancelled as it began: it never ran
            latest = self._subscription_rows(organization_id)[-1]
            self._session.delete(latest)
        else:
            assert ended.end is not None
            self._end_latest(organization_id, ended.end)
        self._session.flush()
        return ended

    # -- wallets ---------------------------------------------------------------------------

    def open_wallet(self, organization_id: str, currency: str) -> Wallet:
        """A new, empty wallet; ``Conflict`` if the organisation has one in ``currency``."""
        self._require_org(organization_id)
        wallet = Wallet(new_id("wal"), currency)
        if self._wallet_row(organization_id, wallet.currency) is not None:
            raise Conflict(f"{organization_id!r} already has a {wallet.currency} wallet")
        self._session.add(
            BillingWallet(
                id=wallet.id,
                organization_id=organization_id,
                currency=wallet.currency,
                balance=Decimal(0),
                last_sequence=0,
                reservation_count=0,
            )
        )
        self._flush(f"{organization_id!r} already has a {wallet.currency} wallet")
        self._wallet_versions[wallet.id] = 0
        self._loaded_reservations[wallet.id] = set()
        self._loaded_grants[wallet.id] = set()
        self._wallet_totals[wallet.id] = (Decimal(0), Decimal(0))
        self._wallet_held[wallet.id] = Decimal(0)
        self._wallet_leased[wallet.id] = Decimal(0)
        return wallet

    def _wallet_row(
        self, organization_id: str, currency: str, *, for_update: bool = False
    ) -> BillingWallet | None:
        query = select(BillingWallet).where(
            BillingWallet.organization_id == organization_id,
            BillingWallet.currency == Money.zero(currency).currency,
        )
        if for_update:
            query = query.with_for_update()  # a no-op on SQLite, whose writer lock serialises
        return self._session.scalar(query.execution_options(populate_existing=True))

    def load_wallet(
        self,
        organization_id: str,
        currency: str,
        *,
        for_update: bool = False,
        reservations: Iterable[str] | None = None,
    ) -> Wallet:
        """The organisation's wallet, restored from its row, live grants and reservations.

        ``for_update`` locks the wallet row until the transaction ends, so concurrent
        reserve/settle calls on one wallet run one after another (on SQLite it takes
        the database's write lock at once rather than at the first write, which could
        otherwise fail to upgrade). ``reservations`` names the open reservations the
        caller will settle or release (None: all open ones); the hot path loads only
        its own, so its cost does not grow with the traffic in flight.
        """
        code = Money.zero(currency).currency
        if for_update and self._session.get_bind().dialect.name == "sqlite":
            self._lock_wallet(organization_id, code)
        row = self._wallet_row(organization_id, code, for_update=for_update)
        if row is None:
            self._require_org(organization_id)  # say which of the two is missing
            raise NotFound(f"{organization_id!r} has no {code} wallet", param="wallet")
        return self._restore(row, reservations)

    def _lock_wallet(self, organization_id: str, currency: str) -> None:
        # SQLite: a no-op write starts the write transaction before anything is read (a
        # read-then-write transaction could fail to upgrade). PostgreSQL uses FOR UPDATE.
        self._session.execute(
            update(BillingWallet)
            .where(
                BillingWallet.organization_id == organization_id,
                BillingWallet.currency == currency,
            )
            .values(last_sequence=BillingWallet.last_sequence)
        )

    def _restore(self, row: BillingWallet, wanted: Iterable[str] | None) -> Wallet:
        query = select(BillingReservation).where(
            BillingReservation.wallet_id == row.id, BillingReservation.closed_at.is_(None)
        )
        wanted = None if wanted is None else list(wanted)
        if wanted is not None:
            query = query.where(BillingReservation.reservation_id.in_(wanted))
        open_rows = [] if wanted == [] else list(self._session.scalars(query))
        holds: dict[str, list[tuple[str, Decimal]]] = {r.reservation_id: [] for r in open_rows}
        if holds:
            for entry in self._session.scalars(
                select(BillingLedgerEntry)
                .where(
                    BillingLedgerEntry.wallet_id == row.id,
                    BillingLedgerEntry.reference.in_(list(holds)),
                    BillingLedgerEntry.kind == EntryKind.RESERVATION.value,
                )
                .order_by(BillingLedgerEntry.sequence)
            ):
                holds[entry.reference or ""].append((entry.grant_id, -entry.amount))
        held_grants = {grant_id for pairs in holds.values() for grant_id, _ in pairs}
        live = BillingCreditGrant.remaining != Decimal(0)
        if held_grants:
            live = live | BillingCreditGrant.grant_id.in_(list(held_grants))
        grant_rows = self._session.scalars(
            select(BillingCreditGrant)
            .where(BillingCreditGrant.wallet_id == row.id, live)
            .order_by(BillingCreditGrant.sequence)
        )
        currency = row.currency
        grants = tuple(
            (_grant_from_row(g, currency), g.remaining)
            for g in grant_rows
            if g.remaining > 0 or g.grant_id in held_grants  # "!= 0" on SQLite compares text
        )
        last_at = row.last_entry_at
        # A reservation with no ledger entries is a gateway hold (``hold_credit``): its
        # credit is in the wallet's ``held`` sum, not in the domain wallet.
        reservations = tuple(
            Reservation(
                r.reservation_id,
                Money(r.amount, currency),
                tuple(holds[r.reservation_id]),
                r.created_at,
                r.reference,
            )
            for r in sorted(open_rows, key=lambda r: (r.created_at, r.reservation_id))
            if holds[r.reservation_id] or r.amount == 0
        )
        wallet = Wallet.restore(
            WalletSnapshot(
                wallet_id=row.id,
                currency=currency,
                balance=row.balance,
                last_sequence=row.last_sequence,
                last_at=last_at,
                grant_count=row.grant_count,
                reservation_count=row.reservation_count,
                grants=grants,
                reservations=reservations,
            )
        )
        self._wallet_versions[wallet.id] = row.last_sequence
        self._loaded_reservations[wallet.id] = {r.id for r in reservations}
        self._loaded_grants[wallet.id] = {g.id for g, _ in grants}
        self._wallet_totals[wallet.id] = (row.granted_total, row.consumed_total)
        self._wallet_held[wallet.id] = row.held
        self._wallet_leased[wallet.id] = row.leased
        return wallet

    def wallet_reserved(self, wallet_id: str) -> Money:
        """Credit held by all open reservations of the wallet."""
        row = self._session.get(BillingWallet, wallet_id)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        amounts = self._session.scalars(
            select(BillingReservation.amount).where(
                BillingReservation.wallet_id == wallet_id, BillingReservation.closed_at.is_(None)
            )
        )
        return Money(exact_sum(amounts), row.currency)

    def audit_wallet(self, wallet_id: str) -> Money:
        """Replay the wallet's whole ledger and check the running columns against it.

        Raises ``ChargeMismatch`` if the balance, a grant's remaining credit or the
        ledger's numbering disagree with the entries; returns the balance.
        """
        row = self._session.get(BillingWallet, wallet_id)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        entries = [
            _entry_from_row(e, row.currency)
            for e in self._session.scalars(
                select(BillingLedgerEntry)
                .where(BillingLedgerEntry.wallet_id == wallet_id)
                .order_by(BillingLedgerEntry.sequence)
            )
        ]
        if [e.sequence for e in entries] != list(range(1, len(entries) + 1)):
            raise ChargeMismatch(f"wallet {wallet_id}: the ledger's sequence has gaps")
        if len(entries) != row.last_sequence:
            raise ChargeMismatch(f"wallet {wallet_id}: ledger length disagrees with last_sequence")
        balance = exact_sum(e.amount.amount for e in entries)
        if balance != row.balance:
            raise ChargeMismatch(
                f"wallet {wallet_id}: ledger sums to {balance}, row says {row.balance}"
            )
        remaining = replay(entries)
        for grant in self._session.scalars(
            select(BillingCreditGrant).where(BillingCreditGrant.wallet_id == wallet_id)
        ):
            expected = remaining.get(grant.grant_id, Decimal(0))
            if grant.remaining != expected:
                raise ChargeMismatch(
                    f"wallet {wallet_id}: grant {grant.grant_id} has {grant.remaining} left, "
                    f"its entries say {expected}"
                )
        return Money(balance, row.currency)

    def ledger_balance(self, wallet_id: str) -> Money:
        """The wallet's balance recomputed from its ledger rows alone."""
        row = self._session.get(BillingWallet, wallet_id)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        amounts = self._session.scalars(
            select(BillingLedgerEntry.amount).where(BillingLedgerEntry.wallet_id == wallet_id)
        )
        return Money(exact_sum(amounts), row.currency)

    def ledger(self, wallet_id: str, *, limit: int | None = None) -> list[LedgerEntry]:
        """The wallet's ledger, newest entry first (``limit`` entries at most)."""
        row = self._session.get(BillingWallet, wallet_id)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        query = (
            select(BillingLedgerEntry)
            .where(BillingLedgerEntry.wallet_id == wallet_id)
            .order_by(BillingLedgerEntry.sequence.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        return [_entry_from_row(e, row.currency) for e in self._session.scalars(query)]

    def save_wallet(self, wallet: Wallet) -> None:
        """Append what ``wallet`` recorded since it was loaded (or last saved).

        ``Conflict`` if another writer appended to the wallet meanwhile: reload and
        retry, or load with ``for_update=True`` so that it cannot happen.
        """
        loaded = self._wallet_versions.get(wallet.id)
        if loaded is None:
            raise InvalidRequest(f"wallet {wallet.id} was not loaded by this repository")
        new_entries = [e for e in wallet.ledger if e.sequence > loaded]
        granted, consumed = self._wallet_totals[wallet.id]
        granted = EXACT.add(
            granted,
            exact_sum(
                e.amount.amount
                for e in new_entries
                if e.kind in (EntryKind.GRANT, EntryKind.TOP_UP)
            ),
        )
        consumed = EXACT.subtract(
            consumed,
            exact_sum(e.amount.amount for e in new_entries if e.kind is EntryKind.CONSUMPTION),
        )
        moved = self._session.execute(
            update(BillingWallet)
            .where(BillingWallet.id == wallet.id, BillingWallet.last_sequence == loaded)
            .values(
                last_sequence=wallet.last_sequence,
                balance=wallet.balance.amount,
                reservation_count=wallet.reservation_count,
                grant_count=wallet.grant_count,
                granted_total=granted,
                consumed_total=consumed,
                held=self._wallet_held[wallet.id],
                last_entry_at=wallet.last_at,
                expires_next=min(
                    (
                        g.expires_at
                        for g in wallet.grants
                        if g.expires_at is not None and wallet.remaining(g.id).amount > 0
                    ),
                    default=None,
                ),
            )
        )
        if getattr(moved, "rowcount", 0) != 1:
            raise Conflict(f"wallet {wallet.id} changed concurrently; reload it and retry")
        self._wallet_totals[wallet.id] = (granted, consumed)
        known = self._loaded_grants[wallet.id]
        new_grants = [
            _grant_row(wallet.id, g, wallet.remaining(g.id).amount)
            for g in wallet.grants
            if g.id not in known
        ]
        if new_grants:
            self._session.execute(insert(BillingCreditGrant), new_grants)
            known.update(g["grant_id"] for g in new_grants)
        if new_entries:
            self._session.execute(
                insert(BillingLedgerEntry), [_entry_row(wallet.id, e) for e in new_entries]
            )
        touched = {e.grant_id for e in new_entries} & (known - {g["grant_id"] for g in new_grants})
        for grant_id in sorted(touched):
            self._session.execute(
                update(BillingCreditGrant)
                .where(
                    BillingCreditGrant.wallet_id == wallet.id,
                    BillingCreditGrant.grant_id == grant_id,
                )
                .values(remaining=wallet.remaining(grant_id).amount)
            )
        self._save_reservations(wallet)
        self._wallet_versions[wallet.id] = wallet.last_sequence

    def wallet_usage(self, wallet_id: str) -> tuple[Decimal, Decimal]:
        """All credit ever granted to the wallet, and how much of it was consumed."""
        if wallet_id in self._wallet_totals:  # loaded or saved by this repository
            return self._wallet_totals[wallet_id]
        row = self._session.get(BillingWallet, wallet_id, populate_existing=True)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        return row.granted_total, row.consumed_total

    # -- gateway holds: credit held for requests in flight ------------------------------------

    def hold_credit(
        self, organization_id: str, currency: str, amount: Decimal, reference: str, at: datetime
    ) -> str | None:
        """Hold ``amount`` for a request if ``balance - held - leased`` covers it (credit that
        gateway processes leased is theirs to admit against); the reservation id,
        or None if it does not (or credit expired unrecorded: ``load_wallet`` + ``expire``
        then try again).

        The same rule as ``Wallet.reserve``, but the hold is a wallet-level sum, not
        ledger entries: on PostgreSQL one conditional UPDATE (with the reservation row
        in the same statement), so the wallet's row lock lasts one statement.
        """
        code = Money.zero(currency).currency
        if self._session.get_bind().dialect.name == "postgresql":
            found = self._session.execute(
                text(
                    "WITH w AS (UPDATE billing_wallets"
                    " SET held = held + :amount, reservation_count = reservation_count + 1"
                    " WHERE organization_id = :org AND currency = :currency"
                    " AND balance - held - leased >= :amount"
                    " AND (expires_next IS NULL OR expires_next > :at)"
                    " RETURNING id, reservation_count)"
                    " INSERT INTO billing_reservations"
                    " (wallet_id, reservation_id, amount, reference, created_at)"
                    " SELECT id, 'res_' || reservation_count, :amount, :reference, :at FROM w"
                    " RETURNING reservation_id"
                ),
                {"amount": amount, "org": organization_id, "currency": code,
                 "at": at, "reference": reference},
            ).scalar()  # fmt: skip
            return None if found is None else str(found)
        # SQLite keeps decimals as text: the same rule in Python, under the write lock.
        self._lock_wallet(organization_id, code)
        row = self._wallet_row(organization_id, code)
        if row is None:
            return None
        due = row.expires_next is not None and row.expires_next <= at
        if due or EXACT.subtract(EXACT.subtract(row.balance, row.held), row.leased) < amount:
            return None
        row.held = EXACT.add(row.held, amount)
        row.reservation_count += 1
        reservation_id = f"res_{row.reservation_count}"
        self._session.add(
            BillingReservation(
                wallet_id=row.id,
                reservation_id=reservation_id,
                amount=amount,
                reference=reference,
                created_at=at,
            )
        )
        self._session.flush()
        return reservation_id

    def credit_held(self, wallet_id: str) -> Decimal:
        """Credit held by gateway reservations, as loaded by this repository."""
        return self._wallet_held[wallet_id]

    def credit_leased(self, wallet_id: str) -> Decimal:
        """Credit gateway processes have leased (``charging.leases``), as loaded; it
        includes what requests consumed through the leases and the ledger has not
        recorded yet (``credit_pending``)."""
        return self._wallet_leased[wallet_id]

    def credit_pending(self, wallet_id: str) -> Decimal:
        """What requests admitted against the wallet's open leases consumed and the
        ledger will record at the leases' next renewal (within about a second)."""
        return exact_sum(
            self._session.scalars(
                select(BillingCreditLease.pending).where(
                    BillingCreditLease.wallet_id == wallet_id,
                    BillingCreditLease.closed_at.is_(None),
                )
            )
        )

    def take_holds(self, wallet: Wallet, reservation_ids: Iterable[str]) -> dict[str, Decimal]:
        """End the open gateway holds among ``reservation_ids`` of a wallet loaded
        ``for_update``: their amounts, by id. Saved with the wallet."""
        ids = sorted(set(reservation_ids))
        if not ids:
            return {}
        # One statement: close the ones still open and say which they were.
        rows = self._session.execute(
            update(BillingReservation)
            .where(
                BillingReservation.wallet_id == wallet.id,
                BillingReservation.reservation_id.in_(ids),
                BillingReservation.closed_at.is_(None),
            )
            .values(closed_at=utcnow())
            .returning(BillingReservation.reservation_id, BillingReservation.amount)
        ).all()
        taken = {reservation_id: amount for reservation_id, amount in rows}
        if taken:
            held = EXACT.subtract(self._wallet_held[wallet.id], exact_sum(taken.values()))
            self._wallet_held[wallet.id] = max(held, Decimal(0))
        return taken

    def _save_reservations(self, wallet: Wallet) -> None:
        loaded = self._loaded_reservations.get(wallet.id, set())
        open_now = {r.id: r for r in wallet.open_reservations}
        closed = sorted(loaded - set(open_now))
        if closed:
            self._session.execute(
                update(BillingReservation)
                .where(
                    BillingReservation.wallet_id == wallet.id,
                    BillingReservation.reservation_id.in_(closed),
                )
                .values(closed_at=utcnow())
            )
        new = [
            {
                "wallet_id": wallet.id,
                "reservation_id": r.id,
                "amount": r.amount.amount,
                "reference": r.reference,
                "created_at": r.created_at,
                "closed_at": None,
            }
            for r in open_now.values()
            if r.id not in loaded
        ]
        if new:
            self._session.execute(insert(BillingReservation), new)
        self._loaded_reservations[wallet.id] = set(open_now)

    # -- period usage totals ---------------------------------------------------------------

    def lock_usage(self, organization_id: str) -> None:
        """Serialise rating of the organisation's requests until the transaction ends.

        PostgreSQL: a transaction-scoped advisory lock keyed by the organisation.
        SQLite: the caller already holds the database's only write lock.
        """
        if self._session.get_bind().dialect.name == "postgresql":
            self._session.execute(
                text("SELECT pg_advisory_xact_lock(:space, hashtext(:org))"),
                {"space": _USAGE_LOCK_SPACE, "org": organization_id},
            )

    def usage_totals(self, organization_id: str, period_start: datetime) -> list[ChargedTotal]:
        """The organisation's running totals for the period that starts at ``period_start``."""
        rows = self._session.scalars(
            select(BillingUsageTotal).where(
                BillingUsageTotal.organization_id == organization_id,
                BillingUsageTotal.period_start == period_start,
            )
        )
        totals = []
        for row in rows:
            metric = Metric(row.metric)
            key = UsageKey(PlanRef(row.plan_code, row.plan_version), row.model, metric)
            quantity = _loaded_quantity(row.quantity, metric)
            included = _loaded_quantity(row.included, metric)
            assert quantity is not None and included is not None
            totals.append(
                ChargedTotal(UsageTotal(key, quantity, included), row.amount, row.charges)
            )
        return totals

    def save_usage_totals(
        self,
        organization_id: str,
        period_start: datetime,
        totals: Iterable[ChargedTotal],
        *,
        stored: set[UsageKey] | None = None,
    ) -> None:
        """Store new values of the given totals (call under ``lock_usage``); ``stored``
        names the keys that have a row already, if the caller read them."""
        wanted = {t.total.key: t for t in totals}
        if not wanted:
            return
        if stored is None:
            stored = {t.total.key for t in self.usage_totals(organization_id, period_start)}
        existing = stored & set(wanted)
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for key, charged in sorted(wanted.items()):
            row = {
                "organization_id": organization_id,
                "period_start": period_start,
                "plan_code": key.plan.code,
                "plan_version": key.plan.version,
                "model": key.model,
                "metric": key.metric.value,
                "quantity": Decimal(charged.total.quantity),
                "included": Decimal(charged.total.included),
                "amount": charged.amount,
                "charges": charged.charges,
            }
            if key in existing:
                updates.append({f"k_{c}" if c in _TOTAL_KEY else c: v for c, v in row.items()})
            else:
                inserts.append(row)
        # One round trip each, with statements built once (the writer calls this per batch).
        if updates:
            self._session.connection().execute(_UPDATE_TOTAL, updates)
        if inserts:
            self._session.execute(insert(BillingUsageTotal), inserts)

    # -- budgets, month-to-date spend, alerts ------------------------------------------------

    def set_budget(self, organization_id: str, api_key_id: str, budget: Budget) -> None:
        """The monthly budget of the organisation (``api_key_id`` "") or one of its keys.

        The metering writer keeps month-to-date spend only where a budget reads it, so
        the month's spend of this scope is recomputed here from what was charged,
        under the organisation's usage lock (no writer can charge meanwhile).
        """
        self._require_org(organization_id)
        self.lock_usage(organization_id)
        month = Period.containing(utcnow())
        # Locked before reading what was charged: on SQLite this write takes the lock.
        self.lock_spend(organization_id, [api_key_id], month.start, budget.limit.currency)
        charged = self._charged(organization_id, api_key_id, month)
        held = self._session.scalar(
            select(BillingSpend.held).where(
                BillingSpend.organization_id == organization_id,
                BillingSpend.api_key_id == api_key_id,
                BillingSpend.period_start == month.start,
            )
        )
        self.set_spend(
            organization_id, api_key_id, month.start, amount=charged, held=held or Decimal(0)
        )
        row = self._session.get(BillingBudget, (organization_id, api_key_id))
        if row is None:
            row = BillingBudget(organization_id=organization_id, api_key_id=api_key_id)
            self._session.add(row)
        row.amount = budget.limit.amount
        row.currency = budget.limit.currency
        row.hard = budget.hard
        row.thresholds = list(budget.thresholds)
        row.updated_at = utcnow()
        self._flush("budget changed concurrently; retry")

    def _charged(self, organization_id: str, api_key_id: str, month: Period) -> Decimal:
        """What the organisation (``api_key_id`` "") or one key was charged in ``month``."""
        if not api_key_id:
            return exact_sum(t.amount for t in self.usage_totals(organization_id, month.start))
        charges = self._session.scalars(
            select(UsageRecord.charge).where(
                UsageRecord.organization_id == organization_id,
                UsageRecord.api_key_id == api_key_id,
                UsageRecord.created_at >= month.start,
                UsageRecord.created_at < month.end,
                UsageRecord.charge.is_not(None),
            )
        )
        return exact_sum(c for c in charges if c is not None)

    def remove_budget(self, organization_id: str, api_key_id: str) -> None:
        row = self._session.get(BillingBudget, (organization_id, api_key_id))
        if row is None:
            raise NotFound("no such budget", param="budget")
        self._session.delete(row)
        self._session.flush()

    def budgets(self, organization_id: str) -> dict[str, Budget]:
        """The organisation's budgets by key id ("" for the organisation itself)."""
        rows = self._session.scalars(
            select(BillingBudget).where(BillingBudget.organization_id == organization_id)
        )
        return {
            r.api_key_id: Budget(Money(r.amount, r.currency), r.hard, tuple(r.thresholds))
            for r in rows
        }

    def lock_spend(
        self,
        organization_id: str,
        api_key_ids: Iterable[str],
        period_start: datetime,
        currency: str,
    ) -> dict[str, tuple[Decimal, Decimal]]:
        """Lock the month-to-date spend rows (organisation first, then keys, sorted) until
        the transaction ends, creating missing ones; returns ``{key: (amount, held)}``.

        One order everywhere, so admission and writers never wait on each other in a
        cycle. On SQLite the first write takes the database's write lock.
        """
        scopes = sorted(set(api_key_ids) | {""})
        rows = [
            {
                "organization_id": organization_id,
                "api_key_id": scope,
                "period_start": period_start,
                "currency": currency,
                "amount": Decimal(0),
                "held": Decimal(0),
            }
            for scope in scopes
        ]
        dialect = self._session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
        self._session.execute(upsert(BillingSpend).values(rows).on_conflict_do_nothing())
        found: dict[str, tuple[Decimal, Decimal]] = {}
        for scope in scopes:
            row = self._session.scalar(
                select(BillingSpend)
                .where(
                    BillingSpend.organization_id == organization_id,
                    BillingSpend.api_key_id == scope,
                    BillingSpend.period_start == period_start,
                )
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            assert row is not None  # inserted above if missing
            found[scope] = (row.amount, row.held)
        return found

    def spend_leased(
        self, organization_id: str, api_key_ids: Iterable[str], period_start: datetime
    ) -> dict[str, Decimal]:
        """What gateway processes leased of each scope's month (rows ``lock_spend`` locked)."""
        scopes = sorted(set(api_key_ids) | {""})
        rows = self._session.execute(
            select(BillingSpend.api_key_id, BillingSpend.leased).where(
                BillingSpend.organization_id == organization_id,
                BillingSpend.api_key_id.in_(scopes),
                BillingSpend.period_start == period_start,
            )
        ).all()
        found = {scope: Decimal(0) for scope in scopes}
        found.update({scope: leased for scope, leased in rows})
        return found

    def set_spend(
        self,
        organization_id: str,
        api_key_id: str,
        period_start: datetime,
        *,
        amount: Decimal,
        held: Decimal,
    ) -> None:
        """New values of a spend row this transaction locked (``lock_spend``)."""
        self._session.execute(
            update(BillingSpend)
            .where(
                BillingSpend.organization_id == organization_id,
                BillingSpend.api_key_id == api_key_id,
                BillingSpend.period_start == period_start,
            )
            .values(amount=amount, held=held)
        )

    def raise_alert(
        self,
        organization_id: str,
        *,
        api_key_id: str,
        kind: str,
        subject: str,
        period: Period,
        threshold: int,
        payload: Json,
    ) -> str | None:
        """Record an alert once per (scope, kind, subject, period, threshold); returns its id,
        or None if it was raised before. Call under the organisation's usage lock."""
        alert = alert_id(organization_id, api_key_id, kind, subject, period, threshold)
        if self._session.get(BillingAlert, alert) is not None:
            return None
        now = utcnow()
        self._session.add(
            BillingAlert(
                id=alert,
                organization_id=organization_id,
                api_key_id=api_key_id,
                kind=kind,
                subject=subject,
                period_start=period.start,
                threshold=threshold,
                payload={"id": alert, **payload},
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        self._flush(f"alert {alert} raised concurrently")
        return alert

    # -- coupons and tax ---------------------------------------------------------------------

    def create_coupon(self, coupon: Coupon) -> Coupon:
        if self._session.get(BillingCoupon, coupon.code) is not None:
            raise Conflict(f"coupon {coupon.code!r} already exists", param="code")
        self._session.add(BillingCoupon(code=coupon.code, definition=coupon_to_dict(coupon)))
        self._flush(f"coupon {coupon.code!r} already exists")
        return coupon

    def load_coupon(self, code: str) -> Coupon:
        row = self._session.get(BillingCoupon, code)
        if row is None:
            raise NotFound(f"no coupon {code!r}", param="coupon", code="coupon_not_found")
        return coupon_from_dict(row.definition)

    def redeem_coupon(self, organization_id: str, code: str, first_period: Period) -> Redemption:
        """Apply coupon ``code`` to the organisation from ``first_period`` on (once each)."""
        self._require_org(organization_id)
        coupon = self.load_coupon(code)
        duplicate = f"{organization_id!r} already redeemed coupon {code!r}"
        exists = self._session.scalar(
            select(BillingCouponRedemption.id).where(
                BillingCouponRedemption.organization_id == organization_id,
                BillingCouponRedemption.coupon_code == code,
            )
        )
        if exists is not None:
            raise Conflict(duplicate, param="coupon")
        self._session.add(
            BillingCouponRedemption(
                id=new_id("red"),
                organization_id=organization_id,
                coupon_code=code,
                first_period_start=first_period.start,
                first_period_end=first_period.end,
            )
        )
        self._flush(duplicate)
        return Redemption(coupon, first_period)

    def redemptions(self, organization_id: str) -> list[Redemption]:
        """The organisation's coupon redemptions, oldest first period first."""
        self._require_org(organization_id)
        rows = self._session.scalars(
            select(BillingCouponRedemption)
            .where(BillingCouponRedemption.organization_id == organization_id)
            .order_by(BillingCouponRedemption.first_period_start, BillingCouponRedemption.id)
        )
        return [
            Redemption(
                self.load_coupon(row.coupon_code),
                Period(row.first_period_start, row.first_period_end),
            )
            for row in rows
        ]

    def redemption_for(self, organization_id: str, period: Period) -> Redemption | None:
        """The most recent redemption whose duration covers ``period``, if any."""
        applying = [r for r in self.redemptions(organization_id) if r.applies_to(period)]
        return applying[-1] if applying else None

    def set_tax_rate(self, organization_id: str, rate: TaxRate) -> None:
        """The organisation's tax rate from now on (drafted invoices keep their own)."""
        self._require_org(organization_id)
        row = self._session.get(BillingTaxRate, organization_id)
        if row is None:
            row = BillingTaxRate(organization_id=organization_id)
            self._session.add(row)
        row.name = rate.name
        row.percent = rate.percent
        row.updated_at = utcnow()
        self._session.flush()

    def tax_rate(self, organization_id: str) -> TaxRate | None:
        self._require_org(organization_id)
        row = self._session.get(BillingTaxRate, organization_id)
        return None if row is None else TaxRate(row.percent, row.name)

    # -- invoices ----------------------------------------------------------------------------

    def save_invoice(self, invoice: Invoice) -> None:
        """Insert ``invoice`` or store its new state.

        A stored draft is rewritten (lines and totals); once stored as finalized, paid
        or void only the status and its time stamps move, and the stored lines must
        match (``InvoiceImmutable`` otherwise, via the domain's own rules).
        """
        self._require_org(invoice.organization_id)
        row = self._session.get(BillingInvoice, invoice.id)
        if row is None:
            row = BillingInvoice(id=invoice.id, organization_id=invoice.organization_id)
            self._session.add(row)
        elif row.organization_id != invoice.organization_id:
            raise Conflict(f"invoice id {invoice.id!r} is taken", param="invoice")
        elif row.status != InvoiceStatus.DRAFT.value:
            if invoice.status.value not in _LATER_STATES[row.status]:
                raise InvalidInvoiceTransition(
                    f"invoice {invoice.id} is stored as {row.status}; "
                    f"it cannot go back to {invoice.status.value}"
                )
            if self._invoice_lines(invoice.id) != list(invoice.charge_lines):
                raise Conflict(f"invoice {invoice.id} is {row.status}; its lines cannot change")
            _set_status(row, invoice)
            self._session.flush()
            return
        else:
            self._session.execute(
                delete(BillingInvoiceLine).where(BillingInvoiceLine.invoice_id == invoice.id)
            )
        _set_invoice(row, invoice)
        self._session.flush()
        lines = [_line_row(invoice.id, i, line) for i, line in enumerate(invoice.charge_lines)]
        if lines:
            self._session.execute(insert(BillingInvoiceLine), lines)

    def _invoice_lines(self, invoice_id: str) -> list[InvoiceLine]:
        rows = self._session.scalars(
            select(BillingInvoiceLine)
            .where(BillingInvoiceLine.invoice_id == invoice_id)
            .order_by(BillingInvoiceLine.position)
        )
        currency = self._session.get(BillingInvoice, invoice_id)
        assert currency is not None
        return [_line_from_row(r, currency.currency) for r in rows]

    def load_invoice(self, invoice_id: str) -> Invoice:
        """The stored invoice; ``ChargeMismatch`` if its lines no longer add up to its totals."""
        row = self._session.get(BillingInvoice, invoice_id)
        if row is None:
            raise NotFound(f"no invoice {invoice_id!r}", param="invoice")
        invoice = Invoice(
            invoice_id=row.id,
            organization_id=row.organization_id,
            period=Period(row.period_start, row.period_end),
            currency=row.currency,
            plans=[PlanRef(code, version) for code, version in row.plans],
            lines=self._invoice_lines(row.id),
            coupon=None if row.coupon is None else coupon_from_dict(row.coupon),
            tax_rate=TaxRate(row.tax_percent, row.tax_name),
        )
        if row.finalized_at is not None:
            invoice.finalize(row.finalized_at)
        if row.paid_at is not None:
            invoice.mark_paid(row.paid_at)
        if row.voided_at is not None and row.paid_at is not None:
            invoice.void_refunded(row.voided_at)
        elif row.voided_at is not None:
            invoice.void(row.voided_at)
        stored = (row.subtotal, row.discount, row.tax, row.total)
        computed = tuple(m.amount for m in (invoice.subtotal, invoice.discount, invoice.tax))
        if stored != (*computed, invoice.total.amount) or invoice.status.value != row.status:
            raise ChargeMismatch(f"invoice {invoice_id}: stored totals disagree with its lines")
        return invoice

    def invoices(self, organization_id: str) -> list[Invoice]:
        """The organisation's invoices, oldest period first."""
        self._require_org(organization_id)
        ids = self._session.scalars(
            select(BillingInvoice.id)
            .where(BillingInvoice.organization_id == organization_id)
            .order_by(BillingInvoice.period_start, BillingInvoice.created_at)
        )
        return [self.load_invoice(invoice_id) for invoice_id in ids]


# -- row <-> domain ----------------------------------------------------------------------------


def _grant_row(wallet_id: str, grant: CreditGrant, remaining: Decimal) -> dict[str, Any]:
    return {
        "wallet_id": wallet_id,
        "grant_id": grant.id,
        "sequence": grant.sequence,
        "kind": grant.kind.value,
        "amount": grant.amount.amount,
        "priority": grant.priority,
        "granted_at": grant.granted_at,
        "expires_at": grant.expires_at,
        "remaining": remaining,
    }


def _grant_from_row(row: BillingCreditGrant, currency: str) -> CreditGrant:
    return CreditGrant(
        row.grant_id,
        GrantKind(row.kind),
        Money(row.amount, currency),
        row.priority,
        row.granted_at,
        row.expires_at,
        row.sequence,
    )


def _entry_row(wallet_id: str, entry: LedgerEntry) -> dict[str, Any]:
    return {
        "wallet_id": wallet_id,
        "sequence": entry.sequence,
        "at": entry.at,
        "kind": entry.kind.value,
        "grant_id": entry.grant_id,
        "amount": entry.amount.amount,
        "reference": entry.reference,
    }


def _entry_from_row(row: BillingLedgerEntry, currency: str) -> LedgerEntry:
    return LedgerEntry(
        row.sequence,
        row.at,
        EntryKind(row.kind),
        row.grant_id,
        Money(row.amount, currency),
        row.reference,
    )


def _set_invoice(row: BillingInvoice, invoice: Invoice) -> None:
    row.period_start = invoice.period.start
    row.period_end = invoice.period.end
    row.currency = invoice.currency
    row.plans = [[ref.code, ref.version] for ref in invoice.plans]
    row.coupon = None if invoice.coupon is None else coupon_to_dict(invoice.coupon)
    row.tax_name = invoice.tax_rate.name
    row.tax_percent = invoice.tax_rate.percent
    row.subtotal = invoice.subtotal.amount
    row.discount = invoice.discount.amount
    row.tax = invoice.tax.amount
    row.total = invoice.total.amount
    row.usage_exact_total = invoice.usage_exact_total
    _set_status(row, invoice)


def _set_status(row: BillingInvoice, invoice: Invoice) -> None:
    row.status = invoice.status.value
    row.finalized_at = invoice.stamp(InvoiceStatus.FINALIZED)
    row.paid_at = invoice.stamp(InvoiceStatus.PAID)
    row.voided_at = invoice.stamp(InvoiceStatus.VOID)


def _line_row(invoice_id: str, position: int, line: InvoiceLine) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "position": position,
        "kind": line.kind.value,
        "description": line.description,
        "amount": line.amount.amount,
        "exact_amount": line.exact_amount,
        "plan_code": None if line.plan is None else line.plan.code,
        "plan_version": None if line.plan is None else line.plan.version,
        "model": line.model,
        "metric": None if line.metric is None else line.metric.value,
        "quantity": _stored_quantity(line.quantity),
        "included": _stored_quantity(line.included),
        "overage": _stored_quantity(line.overage),
        "charges": line.charges,
        "span_start": None if line.span is None else line.span.start,
        "span_end": None if line.span is None else line.span.end,
    }


def _line_from_row(row: BillingInvoiceLine, currency: str) -> InvoiceLine:
    metric = None if row.metric is None else Metric(row.metric)
    plan = (
        None
        if row.plan_code is None or row.plan_version is None
        else PlanRef(row.plan_code, row.plan_version)
    )
    span = (
        None
        if row.span_start is None or row.span_end is None
        else Period(utc(row.span_start), utc(row.span_end))
    )
    return InvoiceLine(
        kind=LineKind(row.kind),
        description=row.description,
        amount=Money(row.amount, currency),
        exact_amount=row.exact_amount,
        plan=plan,
        model=row.model,
        metric=metric,
        quantity=_loaded_quantity(row.quantity, metric),
        included=_loaded_quantity(row.included, metric),
        overage=_loaded_quantity(row.overage, metric),
        charges=row.charges,
        span=span,
    )
