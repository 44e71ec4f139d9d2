"""Credit leases as stored: ``billing_credit_leases`` and the pools they are taken from.

A lease sets credit aside for one gateway process: from a wallet (the wallet row's
``leased`` sum) or from a month's hard budget (the spend row's, see ``budgets``).
``charging.lease_store`` runs the lease protocol on top of these rows; every call
here runs inside its transaction, with the pool's row locked first.

A lease row is handed out as loaded and locked (``StoredLease``): changes made to its
fields are written when the unit of work flushes.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select, update

from modelmint.billing.store.base import StorePart
from modelmint.billing.store.wallets import lock_wallet
from modelmint.storage.tables import BillingCreditLease, BillingWallet

__all__ = ["LeaseStore", "StoredLease", "WalletPool"]

# The lease row, locked by this transaction; its fields are written at the next flush.
StoredLease = BillingCreditLease
# (wallet id, balance, held, leased, expires_next) of a locked wallet row.
WalletPool = tuple[str, Decimal, Decimal, Decimal, datetime | None]


class LeaseStore(StorePart):
    """Lease rows, and the wallet rows wallet leases are taken from."""

    def lock_wallet_pool(self, organization_id: str, currency: str) -> WalletPool | None:
        """Lock the organisation's wallet row and read what leases are taken from."""
        where = (
            BillingWallet.organization_id == organization_id,
            BillingWallet.currency == currency,
        )
        if not self._on_postgresql():  # take the write lock before reading (``lock_wallet``)
            lock_wallet(self._session, organization_id, currency)
        wallet = self._session.execute(
            select(
                BillingWallet.id,
                BillingWallet.balance,
                BillingWallet.held,
                BillingWallet.leased,
                BillingWallet.expires_next,
            )
            .where(*where)
            .with_for_update()
        ).one_or_none()
        if wallet is None:
            return None
        wallet_id, balance, held, leased, expires_next = wallet
        return wallet_id, balance, held, leased, expires_next

    def set_wallet_leased(self, wallet_id: str, leased: Decimal) -> None:
        """The new ``leased`` sum of a wallet row this transaction locked."""
        self._session.execute(
            update(BillingWallet).where(BillingWallet.id == wallet_id).values(leased=leased)
        )

    def add(
        self,
        lease_id: str,
        *,
        kind: str,
        organization_id: str,
        currency: str,
        wallet_id: str | None,
        api_key_id: str,
        period_start: datetime | None,
        holder: str,
        amount: Decimal,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        """A new open lease of ``amount`` (added to the unit of work)."""
        self._session.add(
            BillingCreditLease(
                id=lease_id,
                kind=kind,
                organization_id=organization_id,
                currency=currency,
                wallet_id=wallet_id,
                api_key_id=api_key_id,
                period_start=period_start,
                holder=holder,
                amount=amount,
                granted=amount,
                consumed=Decimal(0),
                created_at=now,
                expires_at=expires_at,
            )
        )

    def lock_open(self, lease_id: str) -> StoredLease | None:
        """The lease's row, locked, if it is still open."""
        return self._session.scalar(
            select(BillingCreditLease)
            .where(BillingCreditLease.id == lease_id, BillingCreditLease.closed_at.is_(None))
            .with_for_update()
        )

    def lock_expired(self, lease_id: str, now: datetime) -> StoredLease | None:
        """The lease's row, locked, if it is still open and expired before ``now``."""
        return self._session.scalar(
            select(BillingCreditLease)
            .where(
                BillingCreditLease.id == lease_id,
                BillingCreditLease.closed_at.is_(None),
                BillingCreditLease.expires_at < now,
            )
            .with_for_update()
        )

    def expired(self, now: datetime) -> list[tuple[str, str, str, str, str, datetime | None]]:
        """Open leases that expired before ``now``: (id, kind, organisation id, currency,
        key scope, period start)."""
        rows = self._session.execute(
            select(
                BillingCreditLease.id,
                BillingCreditLease.kind,
                BillingCreditLease.organization_id,
                BillingCreditLease.currency,
                BillingCreditLease.api_key_id,
                BillingCreditLease.period_start,
            ).where(BillingCreditLease.closed_at.is_(None), BillingCreditLease.expires_at < now)
        ).all()
        return [(i, k, o, c, s, p) for i, k, o, c, s, p in rows]

    def open_count(
        self,
        *,
        wallet_id: str | None = None,
        budget: tuple[str, str, datetime | None] | None = None,
        other_than: str | None = None,
    ) -> int:
        """How many leases are open on a wallet, or on a budget's month (organisation id,
        key scope, period start), leaving out ``other_than``."""
        same: tuple[ColumnElement[bool], ...]
        if wallet_id is not None:
            same = (BillingCreditLease.wallet_id == wallet_id,)
        else:
            assert budget is not None
            organization_id, scope, period_start = budget
            same = (
                BillingCreditLease.kind == "budget",
                BillingCreditLease.organization_id == organization_id,
                BillingCreditLease.api_key_id == scope,
                BillingCreditLease.period_start == period_start,
            )
        query = (
            select(func.count())
            .select_from(BillingCreditLease)
            .where(BillingCreditLease.closed_at.is_(None), *same)
        )
        if other_than is not None:
            query = query.where(BillingCreditLease.id != other_than)
        return self._session.scalar(query) or 0
