"""Metered usage: one row per request that reached a model, and its hourly sums."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = ["UsageRecord", "UsageRollup"]


class UsageRecord(Base):
    """One request that reached a model: who, which model, how many tokens, how it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_org_created", "organization_id", "created_at"),)

    # The request id: unique, so a retried write can never count a request twice.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    organization_id: Mapped[str] = mapped_column(String(40))
    api_key_id: Mapped[str] = mapped_column(String(40), index=True)
    model: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(40))
    status_code: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    # True when the upstream reported no usage and we counted with our own tokenizer.
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Engine busy time charged to the request (a measurement, not money).
    engine_ms: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # What the request cost its organisation, exact and unrounded, under which plan
    # version: set by the metering writer in the transaction that stores the row. NULL
    # when the organisation has no subscription (nothing is billed).
    plan_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    plan_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    charge: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    # What serving this request cost us (deployment cost rates x measured use), exact.
    cost: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)


class UsageRollup(Base):
    """Hourly sums of usage, kept by the metering writer in the same transaction as the
    usage rows, so billing and analytics read small tables however large raw usage grows."""

    __tablename__ = "usage_rollups_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    # "" when unknown: primary key columns cannot be NULL.
    model_version_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # requests, errors, input_tokens, output_tokens, latency_ms, engine_us
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
