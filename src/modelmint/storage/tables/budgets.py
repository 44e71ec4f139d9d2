"""Spend control: monthly budgets, month-to-date spend against them, and the alerts raised
when a budget, credit or allowance threshold is crossed."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = ["BillingAlert", "BillingBudget", "BillingSpend"]


class BillingBudget(Base):
    """A monthly spend cap of an organisation (``api_key_id`` "") or of one of its keys.

    Hard: a request whose worst case would pass the limit is refused (402). Soft:
    requests go on and an alert is raised. ``thresholds`` (percent of the limit)
    raise an alert each, once per month.
    """

    __tablename__ = "billing_budgets"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    currency: Mapped[str] = mapped_column(String(3))
    hard: Mapped[bool] = mapped_column(Boolean)
    thresholds: Mapped[list[Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingSpend(Base):
    """Month-to-date charges of an organisation (``api_key_id`` "") or one key.

    ``amount`` is the exact sum of settled request charges, kept by the metering
    writer; ``held`` is the worst case admission reserved for requests in flight
    against a hard budget (the row lock serialises admissions across processes);
    ``leased`` is what gateway processes set aside for themselves (open leases), so
    amount + held + leased never passes a hard limit.
    """

    __tablename__ = "billing_spend"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    held: Mapped[Decimal] = mapped_column(ExactDecimal())
    leased: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")


class BillingAlert(Base):
    """One alert (a budget, credit or allowance threshold crossed), raised once per period.

    The id is derived from what the alert is about, so concurrent writers raising
    the same alert store it once. Delivery to the organisation's webhook is
    at-least-once: receivers de-duplicate on the id.
    """

    __tablename__ = "billing_alerts"
    __table_args__ = (Index("ix_billing_alerts_pending", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    api_key_id: Mapped[str] = mapped_column(String(40))  # "" for the whole organisation
    kind: Mapped[str] = mapped_column(String(20))  # budget, credit, allowance
    subject: Mapped[str] = mapped_column(String(40))  # the metric of an allowance, else ""
    period_start: Mapped[datetime] = mapped_column()
    threshold: Mapped[int] = mapped_column(Integer)  # percent
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending -> delivered | failed (retries exhausted) | unrouted (no webhook configured)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
