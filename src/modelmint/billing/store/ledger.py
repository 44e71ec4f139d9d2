"""A wallet's append-only ledger as stored: its rows, and reading them back.

``WalletStore.save_wallet`` is the only writer (it appends); this module turns
entries into rows and back, and reads the ledger: a page of it, the balance it
sums to, and an audit of the wallet's running columns against it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select

from modelmint.billing.errors import ChargeMismatch
from modelmint.billing.exact import exact_sum
from modelmint.billing.money import Money
from modelmint.billing.store.base import StorePart
from modelmint.billing.wallet import EntryKind, LedgerEntry, replay
from modelmint.errors import NotFound
from modelmint.storage.tables import BillingCreditGrant, BillingLedgerEntry, BillingWallet

__all__ = ["LedgerStore", "entry_row"]


def entry_row(wallet_id: str, entry: LedgerEntry) -> dict[str, Any]:
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


class LedgerStore(StorePart):
    """Reads of wallets' ledgers."""

    def _wallet(self, wallet_id: str) -> BillingWallet:
        row = self._session.get(BillingWallet, wallet_id)
        if row is None:
            raise NotFound(f"no wallet {wallet_id!r}", param="wallet")
        return row

    def audit_wallet(self, wallet_id: str) -> Money:
        """Replay the wallet's whole ledger and check the running columns against it.

        Raises ``ChargeMismatch`` if the balance, a grant's remaining credit or the
        ledger's numbering disagree with the entries; returns the balance.
        """
        row = self._wallet(wallet_id)
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
        row = self._wallet(wallet_id)
        amounts = self._session.scalars(
            select(BillingLedgerEntry.amount).where(BillingLedgerEntry.wallet_id == wallet_id)
        )
        return Money(exact_sum(amounts), row.currency)

    def ledger(self, wallet_id: str, *, limit: int | None = None) -> list[LedgerEntry]:
        """The wallet's ledger, newest entry first (``limit`` entries at most)."""
        row = self._wallet(wallet_id)
        query = (
            select(BillingLedgerEntry)
            .where(BillingLedgerEntry.wallet_id == wallet_id)
            .order_by(BillingLedgerEntry.sequence.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        return [_entry_from_row(e, row.currency) for e in self._session.scalars(query)]
