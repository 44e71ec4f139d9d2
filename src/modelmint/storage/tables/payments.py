"""Money collected through a payment provider (``modelmint.payments``): who each
organisation is there, every attempt to take money, and the provider's events seen."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = ["Payment", "PaymentAccount", "PaymentEvent"]


class PaymentAccount(Base):
    """An organisation at the payment provider: its customer, saved method, auto top-up
    and dunning state. Secrets never live here: only the provider's ids."""

    __tablename__ = "payment_accounts"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    customer_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    payment_method_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # What a person recognises the method by, e.g. "visa 4242".
    method_label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Auto top-up: when available credit in ``auto_top_up_currency`` falls below
    # ``auto_top_up_below``, charge the saved method ``auto_top_up_amount``.
    auto_top_up_below: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    auto_top_up_amount: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    auto_top_up_currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    # Dunning: since when the organisation's keys answer 402 payment_required.
    blocked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Payment(Base):
    """One sum to collect (an invoice's total or a top-up) and its attempts so far.

    ``amount_minor`` is in the currency's minor units, as providers take it. A payment
    moves ``pending -> succeeded | failed | requires_action``; a failed invoice payment
    is attempted again at ``next_attempt_at``; ``succeeded`` is final except for a refund.
    """

    __tablename__ = "payments"
    __table_args__ = (Index("ix_payments_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    invoice_id: Mapped[str | None] = mapped_column(
        ForeignKey("billing_invoices.id"), nullable=True, index=True
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    intent_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    failure: Mapped[str | None] = mapped_column(String(500), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    first_failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    refund_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded_at: Mapped[datetime | None] = mapped_column(nullable=True)


class PaymentEvent(Base):
    """A provider event already applied: its id makes every delivery after the first a no-op."""

    __tablename__ = "payment_events"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    outcome: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
