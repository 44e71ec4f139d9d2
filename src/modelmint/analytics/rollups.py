"""Reading the analytics rollups: sums of usage, revenue and cost over a window.

The one place that queries ``analytics_usage_hourly``, ``analytics_usage_daily`` and
``analytics_usage_daily_totals`` (whichever is coarsest and still answers), and the
latency histogram. ``read_sums`` groups by any of the rollup's key columns plus
``day``; integer measures are summed in SQL, money with ``money_sql.exact_sum``, so
results are exact on both databases. Rows of other currencies are left out; rows
without a currency (unbilled usage: no revenue, a serving cost) are kept, because
deployment costs are stated in the currency the platform reports in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from modelmint.analytics.money_sql import exact_sum, prepare
from modelmint.analytics.windows import split, to_day
from modelmint.billing.periods import Period
from modelmint.metering.rollups import EconomicsSums
from modelmint.storage.tables import (
    AnalyticsLatencyHourly,
    AnalyticsUsageDaily,
    AnalyticsUsageDailyTotal,
    AnalyticsUsageHourly,
)

__all__ = ["COUNTS", "GROUPABLE", "Group", "latency_counts", "read_sums"]

COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "embedding_tokens",
    "engine_us",
    "latency_ms",
)
# Columns a report may group by; "day" is the UTC day of the row.
GROUPABLE = (
    "organization_id",
    "model",
    "model_version_id",
    "deployment_id",
    "plan_code",
    "currency",
    "day",
)

_ZERO = Decimal(0)

Group = tuple[Any, ...]
"""The values of the grouped columns of one result, in the order asked for."""

_HOURLY: Table = AnalyticsUsageHourly.__table__  # type: ignore[assignment]
_DAILY: Table = AnalyticsUsageDaily.__table__  # type: ignore[assignment]
_TOTALS: Table = AnalyticsUsageDailyTotal.__table__  # type: ignore[assignment]
_LATENCY: Table = AnalyticsLatencyHourly.__table__  # type: ignore[assignment]


def _select(
    table: Table,
    time_column: str,
    group: Sequence[str],
    start: datetime,
    end: datetime,
    currency: str | None,
    where: Mapping[str, str],
) -> Any:
    moment = table.c[time_column]
    columns = [moment if name == "day" else table.c[name] for name in group]
    measures = [func.sum(table.c[name]) for name in COUNTS]
    money = [exact_sum(table.c.revenue), exact_sum(table.c.cost)]
    query = select(*columns, *measures, *money).where(moment >= start, moment < end)
    if currency is not None:
        query = query.where(table.c.currency.in_((currency, "")))
    query = query.group_by(*columns)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    return query


def read_sums(
    session: Session,
    window: Period,
    group: Sequence[str],
    *,
    currency: str | None,
    where: Mapping[str, str] | None = None,
) -> dict[Group, EconomicsSums]:
    """Sums of the rollup rows in ``window``, grouped by ``group`` (names in ``GROUPABLE``).

    ``currency`` keeps rows in that currency or in none (None: every row; only counts
    are then meaningful, money of several currencies would be added up).
    ``where`` keeps rows whose key columns equal the given values (e.g. one
    organisation). Keys of the result hold the grouped values in ``group``'s order;
    a ``day`` is an aware UTC datetime at midnight.
    """
    unknown = [name for name in group if name not in GROUPABLE]
    if unknown:
        raise ValueError(f"cannot group rollups by {unknown}")
    prepare(session)
    filters = dict(where or {})
    parts = split(window)
    queries: list[Any] = []
    if parts.days_from is not None and parts.days_to is not None:
        # Totals per day and currency suffice when nothing finer is asked for.
        daily = _TOTALS if not filters and set(group) <= {"day", "currency"} else _DAILY
        queries.append(
            _select(daily, "day", group, parts.days_from, parts.days_to, currency, filters)
        )
    for start, end in parts.hours:
        queries.append(_select(_HOURLY, "hour", group, start, end, currency, filters))
    day_at = group.index("day") if "day" in group else None
    sums: dict[Group, EconomicsSums] = {}
    for query in queries:
        for row in session.execute(query):
            key = tuple(row[: len(group)])
            if day_at is not None:
                key = (*key[:day_at], to_day(key[day_at]), *key[day_at + 1 :])
            measured = _sums(row[len(group) :])
            total = sums.get(key)
            if total is None:
                sums[key] = measured
            else:
                total.add(measured)
    return sums


def _sums(values: Sequence[Any]) -> EconomicsSums:
    """Measures as selected: the counts (NULL or NUMERIC on PostgreSQL), then the money."""
    requests, errors, tokens_in, tokens_out, embedding, engine_us, latency = (
        int(value or 0) for value in values[: len(COUNTS)]
    )
    revenue, cost = values[len(COUNTS) :]
    return EconomicsSums(
        requests, errors, tokens_in, tokens_out, embedding, engine_us, latency,
        revenue=_ZERO if revenue is None else revenue,
        cost=_ZERO if cost is None else cost,
    )  # fmt: skip


def latency_counts(
    session: Session, window: Period, *, model: str | None = None
) -> dict[str, Counter[int]]:
    """Answered requests per latency bucket (upper bound in ms), per model, in ``window``."""
    parts = split(window)
    ranges = list(parts.hours)
    if parts.days_from is not None and parts.days_to is not None:
        ranges.append((parts.days_from, parts.days_to))
    histograms: dict[str, Counter[int]] = {}
    for start, end in ranges:
        query = (
            select(_LATENCY.c.model, _LATENCY.c.le_ms, func.sum(_LATENCY.c.count))
            .where(_LATENCY.c.hour >= start, _LATENCY.c.hour < end)
            .group_by(_LATENCY.c.model, _LATENCY.c.le_ms)
        )
        if model is not None:
            query = query.where(_LATENCY.c.model == model)
        for name, le_ms, count in session.execute(query):
            histograms.setdefault(name, Counter())[int(le_ms)] += int(count)
    return histograms
