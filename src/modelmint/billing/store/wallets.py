"""Prepaid wallets as stored: the wallet row, its credit grants and open reservations.

``load_wallet`` restores a domain ``Wallet`` from its row, live grants and open
reservations; ``save_wallet`` appends the ledger entries the domain wallet made
since, and refuses (``Conflict``) if another writer appended first: a
compare-and-set on the row's ``last_sequence``. Grants and ledger entries are only
ever inserted; a grant's ``remaining`` and the row's running sums move with them.

Beside the ledger the row keeps two sums the gateway moves without ledger entries:
``held`` (per-request holds, ``HoldStore``) and ``leased`` (credit leases). A store
remembers what it loaded of each wallet, so one instance serves one unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from modelmint.billing.exact import EXACT, exact_sum
from modelmint.billing.money import Money
from modelmint.billing.store.base import StorePart
from modelmint.billing.store.ledger import entry_row
from modelmint.billing.wallet import (
    CreditGrant,
    EntryKind,
    GrantKind,
    Reservation,
    Wallet,
    WalletSnapshot,
)
from modelmint.clock import utcnow
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import (
    BillingCreditGrant,
    BillingCreditLease,
    BillingLedgerEntry,
    BillingReservation,
    BillingWallet,
)

__all__ = ["WalletStore", "lock_wallet", "wallet_row"]


def wallet_row(
    session: Session, organization_id: str, currency: str, *, for_update: bool = False
) -> BillingWallet | None:
    query = select(BillingWallet).where(
        BillingWallet.organization_id == organization_id,
        BillingWallet.currency == Money.zero(currency).currency,
    )
    if for_update:
        query = query.with_for_update()  # a no-op on SQLite, whose writer lock serialises
    return session.scalar(query.execution_options(populate_existing=True))


def lock_wallet(session: Session, organization_id: str, currency: str) -> None:
    """SQLite: a no-op write starts the write transaction before anything is read (a
    read-then-write transaction could fail to upgrade). PostgreSQL uses FOR UPDATE."""
    session.execute(
        update(BillingWallet)
        .where(
            BillingWallet.organization_id == organization_id,
            BillingWallet.currency == currency,
        )
        .values(last_sequence=BillingWallet.last_sequence)
    )


@dataclass(slots=True)
class _Loaded:
    """What a store loaded (or last saved) of one wallet."""

    version: int  # ledger length: the compare-and-set token of the next save
    reservations: set[str]  # open reservations it was loaded with (to tell new from closed)
    grants: set[str]  # grants stored when loaded
    granted: Decimal  # all credit granted, as last saved
    consumed: Decimal  # all credit consumed, as last saved
    held: Decimal  # credit held by gateway reservations (``HoldStore``), as loaded
    leased: Decimal  # credit leased by gateway processes, as loaded


class WalletStore(StorePart):
    """Wallets, their grants and reservations; one instance per unit of work."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self._loaded: dict[str, _Loaded] = {}

    def open_wallet(self, organization_id: str, currency: str) -> Wallet:
        """A new, empty wallet; ``Conflict`` if the organisation has one in ``currency``."""
        self._require_org(organization_id)
        wallet = Wallet(new_id("wal"), currency)
        if wallet_row(self._session, organization_id, wallet.currency) is not None:
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
        zero = Decimal(0)
        self._loaded[wallet.id] = _Loaded(0, set(), set(), zero, zero, zero, zero)
        return wallet

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
            lock_wallet(self._session, organization_id, code)
        row = wallet_row(self._session, organization_id, code, for_update=for_update)
        if row is None:
            self._require_org(organization_id)  # say which of the two is missing
            raise NotFound(f"{organization_id!r} has no {code} wallet", param="wallet")
        return self._restore(row, reservations)

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
                last_at=row.last_entry_at,
                grant_count=row.grant_count,
                reservation_count=row.reservation_count,
                grants=grants,
                reservations=reservations,
            )
        )
        self._loaded[wallet.id] = _Loaded(
            version=row.last_sequence,
            reservations={r.id for r in reservations},
            grants={g.id for g, _ in grants},
            granted=row.granted_total,
            consumed=row.consumed_total,
            held=row.held,
            leased=row.leased,
        )
        return wallet

    def save_wallet(self, wallet: Wallet) -> None:
        """Append what ``wallet`` recorded since it was loaded (or last saved).

        ``Conflict`` if another writer appended to the wallet meanwhile: reload and
        retry, or load with ``for_update=True`` so that it cannot happen.
        """
        loaded = self._loaded.get(wallet.id)
        if loaded is None:
            raise InvalidRequest(f"wallet {wallet.id} was not loaded by this store")
        new_entries = [e for e in wallet.ledger if e.sequence > loaded.version]
        granted = EXACT.add(
            loaded.granted,
            exact_sum(
                e.amount.amount
                for e in new_entries
                if e.kind in (EntryKind.GRANT, EntryKind.TOP_UP)
            ),
        )
        consumed = EXACT.subtract(
            loaded.consumed,
            exact_sum(e.amount.amount for e in new_entries if e.kind is EntryKind.CONSUMPTION),
        )
        moved = self._session.execute(
            update(BillingWallet)
            .where(BillingWallet.id == wallet.id, BillingWallet.last_sequence == loaded.version)
            .values(
                last_sequence=wallet.last_sequence,
                balance=wallet.balance.amount,
                reservation_count=wallet.reservation_count,
                grant_count=wallet.grant_count,
                granted_total=granted,
                consumed_total=consumed,
                held=loaded.held,
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
        loaded.granted, loaded.consumed = granted, consumed
        known = loaded.grants
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
                insert(BillingLedgerEntry), [entry_row(wallet.id, e) for e in new_entries]
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
        self._save_reservations(wallet, loaded)
        loaded.version = wallet.last_sequence

    def _save_reservations(self, wallet: Wallet, loaded: _Loaded) -> None:
        open_now = {r.id: r for r in wallet.open_reservations}
        closed = sorted(loaded.reservations - set(open_now))
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
            if r.id not in loaded.reservations
        ]
        if new:
            self._session.execute(insert(BillingReservation), new)
        loaded.reservations = set(open_now)

    # -- reading without loading -----------------------------------------------------------

    def currencies(self, organization_id: str) -> list[str]:
        """The currencies the organisation has a wallet in, sorted."""
        return list(
            self._session.scalars(
                select(BillingWallet.currency)
                .where(BillingWallet.organization_id == organization_id)
                .order_by(BillingWallet.currency)
            )
        )

    def wallet_id(self, organization_id: str, currency: str) -> str | None:
        """The id of the organisation's wallet in ``currency``, if it has one."""
        return self._session.scalar(
            select(BillingWallet.id).where(
                BillingWallet.organization_id == organization_id,
                BillingWallet.currency == currency,
            )
        )

    def stored_balance(self, organization_id: str, currency: str) -> tuple[str, Decimal] | None:
        """The wallet's id and the balance on its row (the sum of its ledger), if any."""
        row = self._session.execute(
            select(BillingWallet.id, BillingWallet.balance).where(
                BillingWallet.organization_id == organization_id,
                BillingWallet.currency == currency,
            )
        ).one_or_none()
        return None if row is None else (row[0], row[1])

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

    def wallet_usage(self, wallet_id: str) -> tuple[Decimal, Decimal]:
        """All credit ever granted to the wallet, and how much of it was consumed."""
        loaded = self._loaded.get(wallet_id)
        if loaded is not None:  # loaded or saved by this store
            return loaded.granted, loaded.consumed
        row = self._session.get(BillingWallet, wallet_id, populate_existing=True)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        return row.granted_total, row.consumed_total

    # -- credit beside the ledger: gateway holds and leases ----------------------------------

    def credit_held(self, wallet_id: str) -> Decimal:
        """Credit held by gateway reservations, as loaded by this store."""
        return self._loaded[wallet_id].held

    def credit_leased(self, wallet_id: str) -> Decimal:
        """Credit gateway processes have leased (``charging.leases``), as loaded; it
        includes what requests consumed through the leases and the ledger has not
        recorded yet (``credit_pending``)."""
        return self._loaded[wallet_id].leased

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
            loaded = self._loaded[wallet.id]
            held = EXACT.subtract(loaded.held, exact_sum(taken.values()))
            loaded.held = max(held, Decimal(0))
        return taken


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
