"""Analytics rollups: usage, revenue and cost summed per hour and per day.

The metering writer keeps them in the transaction that stores the usage rows and
their charges (``metering/rollups.py``); ``modelmint.analytics`` reads them. Money sums
are exact: NUMERIC on PostgreSQL; on SQLite, text added by the writer in Python.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = [
    "AnalyticsLatencyHourly",
    "AnalyticsUsageDaily",
    "AnalyticsUsageDailyTotal",
    "AnalyticsUsageHourly",
]


class _AnalyticsMeasures:
    """What a slice of usage served, earned and cost."""

    # Answered (2xx) requests and the others.
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    # Prompt tokens of text requests, their output tokens, and the input of embeddings.
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    embedding_tokens: Mapped[int] = mapped_column(BigInteger)
    # Engine busy time in whole microseconds and the sum of latencies, exact integers.
    engine_us: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(BigInteger)
    # Sum of the request charges (in ``currency``) and of the serving cost, exact.
    revenue: Mapped[Decimal] = mapped_column(ExactDecimal())
    cost: Mapped[Decimal] = mapped_column(ExactDecimal())


class _AnalyticsSums(_AnalyticsMeasures):
    """Measures keyed by who used what; "" for a key part that is unknown (primary key
    columns cannot be NULL): no version, no deployment, or unbilled."""

    organization_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    plan_code: Mapped[str] = mapped_column(String(100), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


class AnalyticsUsageHourly(_AnalyticsSums, Base):
    """Usage, revenue and cost per hour x organisation x model x version x deployment x
    plan x currency."""

    __tablename__ = "analytics_usage_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)


class AnalyticsUsageDaily(_AnalyticsSums, Base):
    """The same sums per UTC day: month-long reports read ~24 times fewer rows."""

    __tablename__ = "analytics_usage_daily"

    day: Mapped[datetime] = mapped_column(primary_key=True)


class AnalyticsLatencyHourly(Base):
    """How many answered requests of a model fell in each latency bucket, per hour.

    ``le_ms`` is the bucket's upper bound (``metering.rollups.LATENCY_BUCKETS_MS``), so
    percentiles come from these counts rather than from raw rows.
    """

    __tablename__ = "analytics_latency_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    le_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class AnalyticsUsageDailyTotal(_AnalyticsMeasures, Base):
    """The same sums per UTC day and currency only: what the overview reads (a month is
    31 rows however many customers and models there are)."""

    __tablename__ = "analytics_usage_daily_totals"

    day: Mapped[datetime] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
