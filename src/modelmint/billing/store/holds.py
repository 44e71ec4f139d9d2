"""Gateway holds as stored: credit held on a wallet for requests in flight.

A hold is a reservation row with no ledger entries and a share of the wallet row's
``held`` sum; the metering writer ends it when it settles the request
(``WalletStore.take_holds`` or the set-based settlement), and a sweep releases the
holds whose requests never reached it (``stale``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, text

from modelmint.billing.exact import EXACT
from modelmint.billing.money import Money
from modelmint.billing.store.base import StorePart
from modelmint.billing.store.wallets import lock_wallet, wallet_row
from modelmint.storage.tables import BillingReservation, BillingWallet

__all__ = ["HoldStore"]

# One statement on PostgreSQL: the conditional UPDATE and the reservation row together,
# so the wallet's row lock lasts one statement.
_HOLD = text(
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
)


class HoldStore(StorePart):
    """Per-request holds on wallets."""

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
        if self._on_postgresql():
            found = self._session.execute(
                _HOLD,
                {"amount": amount, "org": organization_id, "currency": code,
                 "at": at, "reference": reference},
            ).scalar()  # fmt: skip
            return None if found is None else str(found)
        # SQLite keeps decimals as text: the same rule in Python, under the write lock.
        lock_wallet(self._session, organization_id, code)
        row = wallet_row(self._session, organization_id, code)
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

    def stale(self, cutoff: datetime) -> list[tuple[str, str, str]]:
        """Reservations opened before ``cutoff`` and still open, as (organisation id,
        currency, reservation id)."""
        rows = self._session.execute(
            select(
                BillingWallet.organization_id,
                BillingWallet.currency,
                BillingReservation.reservation_id,
            )
            .join(BillingWallet, BillingWallet.id == BillingReservation.wallet_id)
            .where(BillingReservation.closed_at.is_(None), BillingReservation.created_at < cutoff)
        ).all()
        return [(org, currency, reservation) for org, currency, reservation in rows]
