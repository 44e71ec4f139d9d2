"""Wallet reservations made at admission, and the sweep of ones nobody settled.

A prepaid request reserves its worst-case cost in one short transaction that holds
the wallet's row lock (PostgreSQL) or the write lock (SQLite), so concurrent
gateways, whatever their number, take turns on the wallet and the domain's rule
(``Wallet.reserve`` refuses what the usable balance cannot cover) keeps it >= 0.
The metering writer settles the reservation in the transaction that stores the
request's usage row. A reservation whose request never reached the writer (the
process died in between) is released by ``release_stale`` after a grace period.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from modelmint.billing import Money
from modelmint.billing.errors import InsufficientCredit
from modelmint.billing.repository import BillingRepository
from modelmint.errors import NotFound
from modelmint.storage.db import Database, utcnow
from modelmint.storage.tables import BillingReservation, BillingWallet

__all__ = ["release_stale", "reserve", "wallet_instant"]

log = logging.getLogger(__name__)


def wallet_instant(last_at: datetime | None) -> datetime:
    """Now, or the wallet's newest entry if another process's clock ran ahead of ours:
    the ledger is in time order."""
    now = utcnow()
    return now if last_at is None or last_at <= now else last_at


def reserve(
    database: Database, organization_id: str, currency: str, amount: Decimal, reference: str
) -> str:
    """Hold ``amount`` on the organisation's wallet; ``InsufficientCredit`` (402) if it
    cannot be covered. Returns the reservation id."""
    with database.session() as session:
        repo = BillingRepository(session)
        try:
            wallet = repo.load_wallet(organization_id, currency, for_update=True, reservations=())
        except NotFound:
            raise InsufficientCredit(
                f"this organisation has no {currency} prepaid credit; top up its wallet",
                needed=amount,
                available=Decimal(0),
            ) from None
        reservation = wallet.reserve(
            Money(amount, currency), at=wallet_instant(wallet.last_at), reference=reference
        )
        repo.save_wallet(wallet)
        return reservation.id


def release_stale(database: Database, older_than: timedelta) -> int:
    """Release reservations open for longer than ``older_than``; returns how many."""
    cutoff = utcnow() - older_than
    with database.session() as session:
        stale = session.execute(
            select(
                BillingWallet.organization_id,
                BillingWallet.currency,
                BillingReservation.reservation_id,
            )
            .join(BillingWallet, BillingWallet.id == BillingReservation.wallet_id)
            .where(BillingReservation.closed_at.is_(None), BillingReservation.created_at < cutoff)
        ).all()
    by_wallet: dict[tuple[str, str], list[str]] = {}
    for organization_id, currency, reservation_id in stale:
        by_wallet.setdefault((organization_id, currency), []).append(reservation_id)
    released = 0
    for (organization_id, currency), ids in sorted(by_wallet.items()):
        with database.session() as session:
            repo = BillingRepository(session)
            wallet = repo.load_wallet(organization_id, currency, for_update=True, reservations=ids)
            at = wallet_instant(wallet.last_at)
            for reservation in wallet.open_reservations:  # the writer may have settled some
                wallet.release(reservation.id, at=at)
                released += 1
            repo.save_wallet(wallet)
    if released:
        log.warning("released %d stale wallet reservations", released)
    return released
