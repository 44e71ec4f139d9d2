"""Prepaid credit: wallets, the grants in them, their append-only ledger, the funds held
for requests in flight and the blocks of credit gateway processes lease for themselves."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = [
    "BillingCreditGrant",
    "BillingCreditLease",
    "BillingLedgerEntry",
    "BillingReservation",
    "BillingWallet",
]


class BillingWallet(Base):
    """An organisation's prepaid wallet in one currency: the row writers lock.

    ``balance`` is the running sum of the wallet's ledger and ``last_sequence`` its
    newest entry, both updated in the transaction that appends entries: a writer
    takes ``SELECT ... FOR UPDATE`` on this row (PostgreSQL) or the write lock
    (SQLite), and every save is a compare-and-set on ``last_sequence``.
    """

    __tablename__ = "billing_wallets"
    __table_args__ = (UniqueConstraint("organization_id", "currency"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    balance: Mapped[Decimal] = mapped_column(ExactDecimal())
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # Reservations and grants ever made, so ids (res_N, grant_N) stay unique after a reload.
    reservation_count: Mapped[int] = mapped_column(Integer, default=0)
    grant_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Running sums of all credit granted and consumed, for "N% of credit used" alerts.
    granted_total: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    consumed_total: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    # Credit held for requests in flight (the sum of the open reservations made by the
    # gateway), and the soonest expiry of a grant with credit left: admission reserves
    # with one conditional UPDATE while balance - held covers the request and no
    # credit has expired unrecorded.
    held: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    # Credit gateway processes have set aside for themselves (open leases, see
    # ``BillingCreditLease``): balance - held - leased never goes below zero.
    leased: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    expires_next: Mapped[datetime | None] = mapped_column(nullable=True)
    # When the newest ledger entry was recorded (later entries may not be dated earlier).
    last_entry_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingCreditGrant(Base):
    """One grant of credit. Its terms never change; ``remaining`` is the running sum of
    its ledger entries, kept beside the wallet's ``balance`` so that a request loads
    only the grants with credit left instead of replaying the ledger."""

    __tablename__ = "billing_credit_grants"

    wallet_id: Mapped[str] = mapped_column(ForeignKey("billing_wallets.id"), primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    priority: Mapped[int] = mapped_column(Integer)
    granted_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    remaining: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")


class BillingLedgerEntry(Base):
    """One signed change to one grant's usable credit. Append-only: never updated."""

    __tablename__ = "billing_ledger_entries"
    __table_args__ = (
        ForeignKeyConstraint(
            ["wallet_id", "grant_id"],
            ["billing_credit_grants.wallet_id", "billing_credit_grants.grant_id"],
            name="fk_billing_ledger_entries_grant",
        ),
        Index("ix_billing_ledger_entries_wallet_reference", "wallet_id", "reference"),
    )

    wallet_id: Mapped[str] = mapped_column(ForeignKey("billing_wallets.id"), primary_key=True)
    # 1, 2, 3 ... per wallet: the primary key refuses two writers appending the same one.
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(20))
    grant_id: Mapped[str] = mapped_column(String(40))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)


class BillingReservation(Base):
    """Funds held for one request; its holds are the ledger's reservation entries."""

    __tablename__ = "billing_reservations"

    wallet_id: Mapped[str] = mapped_column(ForeignKey("billing_wallets.id"), primary_key=True)
    reservation_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column()
    # Set once, when settled or released; NULL rows are what a sweeper releases.
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)


class BillingCreditLease(Base):
    """A block of credit (a wallet's) or budget room (a month's spend) that one gateway
    process set aside for itself, to admit requests against in memory (escrow).

    ``amount`` is what the lease still sets aside, and is part of its pool's
    ``leased`` sum: it grows when the holder tops the lease up, and shrinks when the
    holder gives some back or consumption through it is posted to the pool; what is
    left is handed back when the lease closes (gracefully, or by a sweep once
    ``expires_at`` has passed without a renewal).

    ``pending`` is what requests admitted against a wallet lease consumed and the
    wallet's ledger has not recorded yet: the metering writer adds each charge here, in
    the transaction that stores the request's usage row, and the holder's next renewal
    (or the close, or the sweep) posts it to the ledger as one consumption. It stays
    part of ``amount`` until then, so the wallet's free credit is right all along.
    Budget leases post each charge to the month's spend at once: their pending is 0.
    """

    __tablename__ = "billing_credit_leases"
    __table_args__ = (Index("ix_billing_credit_leases_open", "closed_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # "wallet" or "budget"
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    # wallet leases: the wallet; budget leases: the scope ("" or a key id) and month.
    wallet_id: Mapped[str | None] = mapped_column(ForeignKey("billing_wallets.id"), nullable=True)
    api_key_id: Mapped[str] = mapped_column(String(40), default="")
    period_start: Mapped[datetime | None] = mapped_column(nullable=True)
    holder: Mapped[str] = mapped_column(String(120))  # host:pid:nonce of the gateway process
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    pending: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    granted: Mapped[Decimal] = mapped_column(ExactDecimal())  # all ever set aside
    consumed: Mapped[Decimal] = mapped_column(ExactDecimal())  # charges paid through it
    last_consumed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)
