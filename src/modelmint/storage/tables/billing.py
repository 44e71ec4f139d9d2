"""What is billed and how: price books, plan versions, subscriptions, period-to-date
rated usage, coupons, tax rates and invoices.

The rows behind ``modelmint.billing`` (mapped by ``billing/store/``). Money and
other exact quantities use ``ExactDecimal``; documents (price books, plan terms,
coupons) are JSON whose decimals are strings (``billing/serialization.py``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = [
    "BillingCoupon",
    "BillingCouponRedemption",
    "BillingInvoice",
    "BillingInvoiceLine",
    "BillingPlanVersion",
    "BillingPriceBook",
    "BillingSubscription",
    "BillingTaxRate",
    "BillingUsageTotal",
]


class BillingPriceBook(Base):
    """An immutable price book; identical books share one row (``digest`` of the document)."""

    __tablename__ = "billing_price_books"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    document: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingPlanVersion(Base):
    """One published plan version; never updated (a change is the next version's row)."""

    __tablename__ = "billing_plan_versions"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    code: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    currency: Mapped[str] = mapped_column(String(3))
    price_book_id: Mapped[str | None] = mapped_column(
        ForeignKey("billing_price_books.id"), nullable=True, index=True
    )
    # The plan's own terms (fee, allowances) without the price book, which is linked.
    terms: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingSubscription(Base):
    """An organisation on one plan version during ``[starts_at, ends_at)``."""

    __tablename__ = "billing_subscriptions"
    __table_args__ = (UniqueConstraint("organization_id", "starts_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    plan_version_id: Mapped[str] = mapped_column(ForeignKey("billing_plan_versions.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingUsageTotal(Base):
    """Period-to-date usage of one organisation per (plan version, model, metric).

    The running totals request-time rating prices each request against (tiers apply
    to the running quantity), kept by the metering writer in the transaction that
    stores the usage rows. ``amount`` is the exact sum of the charges of those
    requests, ``charges`` how many there were: the invoice's usage line for the key.
    """

    __tablename__ = "billing_usage_totals"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    plan_code: Mapped[str] = mapped_column(String(100), primary_key=True)
    plan_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    included: Mapped[Decimal] = mapped_column(ExactDecimal())
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    charges: Mapped[int] = mapped_column(Integer, default=0)


class BillingCoupon(Base):
    __tablename__ = "billing_coupons"

    code: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingCouponRedemption(Base):
    __tablename__ = "billing_coupon_redemptions"
    __table_args__ = (UniqueConstraint("organization_id", "coupon_code"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    coupon_code: Mapped[str] = mapped_column(ForeignKey("billing_coupons.code"), index=True)
    first_period_start: Mapped[datetime] = mapped_column()
    first_period_end: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingTaxRate(Base):
    """The tax rate now in force for an organisation (invoices copy it when drafted)."""

    __tablename__ = "billing_tax_rates"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    percent: Mapped[Decimal] = mapped_column(ExactDecimal())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingInvoice(Base):
    """One invoice: status, period and totals; its charge lines are child rows."""

    __tablename__ = "billing_invoices"
    __table_args__ = (Index("ix_billing_invoices_org_period", "organization_id", "period_start"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    period_start: Mapped[datetime] = mapped_column()
    period_end: Mapped[datetime] = mapped_column()
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), index=True)
    # [[code, version], ...] of the plan versions billed.
    plans: Mapped[list[Any]] = mapped_column(JSON)
    # The coupon applied, as its full document: a coupon's terms are part of the bill.
    coupon: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    tax_name: Mapped[str] = mapped_column(String(100))
    tax_percent: Mapped[Decimal] = mapped_column(ExactDecimal())
    subtotal: Mapped[Decimal] = mapped_column(ExactDecimal())
    discount: Mapped[Decimal] = mapped_column(ExactDecimal())
    tax: Mapped[Decimal] = mapped_column(ExactDecimal())
    total: Mapped[Decimal] = mapped_column(ExactDecimal())
    usage_exact_total: Mapped[Decimal] = mapped_column(ExactDecimal())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(nullable=True)
    paid_at: Mapped[datetime | None] = mapped_column(nullable=True)
    voided_at: Mapped[datetime | None] = mapped_column(nullable=True)


class BillingInvoiceLine(Base):
    """One charge line (discount and tax lines are derived from the invoice row)."""

    __tablename__ = "billing_invoice_lines"

    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("billing_invoices.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    exact_amount: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    plan_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    plan_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    metric: Mapped[str | None] = mapped_column(String(40), nullable=True)
    quantity: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    included: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    overage: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    charges: Mapped[int | None] = mapped_column(Integer, nullable=True)
    span_start: Mapped[datetime | None] = mapped_column(nullable=True)
    span_end: Mapped[datetime | None] = mapped_column(nullable=True)
