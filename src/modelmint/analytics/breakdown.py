"""Revenue, cost, margin and usage of a window, broken down by one dimension.

``breakdown(session, Period.parse("2026-11"), Dimension.MODEL)`` gives one row per
model (and per version, organisation, plan, deployment or UTC day) with everything
the reports show: requests, errors, tokens, engine time, latency, usage revenue
(the exact sum of request charges), accrued fixed fees, serving cost, invoiced
revenue where invoices can say, and the margin these make.

Fixed fees belong to an organisation and a plan, not to a model: by organisation,
plan and day they sit in their rows; by model, version and deployment they form one
extra row, ``FIXED_FEES`` ("(fixed fees)"), so every breakdown adds up to the same
total. Gross margin is revenue (usage + fees) minus serving cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

from sqlalchemy.orm import Session

from modelmint.analytics.currencies import report_currency
from modelmint.analytics.fees import accrue, fee_spans
from modelmint.analytics.invoiced import InvoicedRevenue, invoiced_revenue
from modelmint.analytics.labels import (
    UNKNOWN,
    deployment_info,
    organization_names,
    version_labels,
)
from modelmint.analytics.latency import merge, percentile
from modelmint.analytics.ratios import per_million, percent, ratio
from modelmint.analytics.rollups import latency_counts, read_sums
from modelmint.analytics.windows import days_of
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.metering.rollups import EconomicsSums

__all__ = ["FIXED_FEES", "Breakdown", "BreakdownRow", "Dimension", "breakdown", "totals_row"]

FIXED_FEES = "(fixed fees)"
NO_PLAN = "(no plan)"
_ZERO = Decimal(0)
_MICROS = 6
P50, P95 = Fraction(1, 2), Fraction(95, 100)


class Dimension(StrEnum):
    """What a breakdown has one row per."""

    MODEL = "model"
    VERSION = "version"
    ORGANIZATION = "org"
    PLAN = "plan"
    DAY = "day"
    DEPLOYMENT = "deployment"


_COLUMN = {
    Dimension.MODEL: "model",
    Dimension.VERSION: "model_version_id",
    Dimension.ORGANIZATION: "organization_id",
    Dimension.PLAN: "plan_code",
    Dimension.DAY: "day",
    Dimension.DEPLOYMENT: "deployment_id",
}


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    """One slice of a window. Money is exact Decimal in the breakdown's currency;
    ``invoiced`` is None where invoices cannot be split this way; ``p50_ms`` and
    ``p95_ms`` (answered requests) only by model and in totals."""

    key: str
    label: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    embedding_tokens: int = 0
    engine_us: int = 0
    latency_ms_total: int = 0
    usage_revenue: Decimal = _ZERO
    fees: Decimal = _ZERO
    cost: Decimal = _ZERO
    invoiced: Decimal | None = None
    p50_ms: int | None = None
    p95_ms: int | None = None

    @property
    def tokens(self) -> int:
        """Input, output and embedding tokens together."""
        return self.input_tokens + self.output_tokens + self.embedding_tokens

    @property
    def engine_seconds(self) -> Decimal:
        """Engine busy time, exact (microsecond resolution)."""
        return Decimal(self.engine_us).scaleb(-_MICROS)

    @property
    def revenue(self) -> Decimal:
        """Accrued revenue: usage charges plus fixed fees, exact."""
        return EXACT.add(self.usage_revenue, self.fees)

    @property
    def margin(self) -> Decimal:
        """Gross margin: revenue minus serving cost, exact."""
        return EXACT.subtract(self.revenue, self.cost)

    @property
    def margin_pct(self) -> Decimal | None:
        """Margin as a percentage of revenue (2 decimals); None without revenue."""
        return percent(self.margin, self.revenue)

    @property
    def error_rate(self) -> Decimal | None:
        """Share of requests that failed (0..1, 4 decimals); None without requests."""
        return ratio(self.errors, self.requests + self.errors, places=4)

    @property
    def avg_latency_ms(self) -> Decimal | None:
        """Mean latency of all requests in ms (1 decimal); None without requests."""
        return ratio(self.latency_ms_total, self.requests + self.errors, places=1)

    @property
    def revenue_per_1m_tokens(self) -> Decimal | None:
        """Usage revenue per million tokens (6 decimals); None without tokens."""
        return per_million(self.usage_revenue, self.tokens)

    @property
    def cost_per_1m_tokens(self) -> Decimal | None:
        """Serving cost per million tokens (6 decimals); None without tokens."""
        return per_million(self.cost, self.tokens)


@dataclass(frozen=True, slots=True)
class Breakdown:
    """A window's rows by ``by`` and their total, in ``currency``."""

    period: Period
    currency: str
    by: Dimension
    rows: tuple[BreakdownRow, ...]
    total: BreakdownRow


def _row(key: str, label: str, sums: EconomicsSums, **extra: object) -> BreakdownRow:
    return BreakdownRow(
        key=key,
        label=label,
        requests=sums.requests,
        errors=sums.errors,
        input_tokens=sums.input_tokens,
        output_tokens=sums.output_tokens,
        embedding_tokens=sums.embedding_tokens,
        engine_us=sums.engine_us,
        latency_ms_total=sums.latency_ms,
        usage_revenue=sums.revenue,
        cost=sums.cost,
        **extra,  # type: ignore[arg-type]
    )


def totals_row(
    rows: Iterable[BreakdownRow], *, key: str = "total", label: str = "Total"
) -> BreakdownRow:
    """The sum of ``rows`` (money exact; no invoiced figure, no percentiles)."""
    sums = EconomicsSums()
    fees = _ZERO
    for row in rows:
        sums.add(
            EconomicsSums(
                row.requests, row.errors, row.input_tokens, row.output_tokens,
                row.embedding_tokens, row.engine_us, row.latency_ms_total,
                row.usage_revenue, row.cost,
            )
        )  # fmt: skip
        fees = EXACT.add(fees, row.fees)
    return _row(key, label, sums, fees=fees)


def _labels(session: Session, by: Dimension, keys: Iterable[str]) -> dict[str, str]:
    keys = set(keys)
    if by is Dimension.ORGANIZATION:
        return organization_names(session, keys)
    if by is Dimension.VERSION:
        return version_labels(session, keys)
    if by is Dimension.DEPLOYMENT:
        return {
            i: f"{info.public_name} ({info.backend})"
            for i, info in deployment_info(session, keys).items()
        }
    if by is Dimension.PLAN:
        return {"": NO_PLAN}
    return {}


def _invoiced(by: Dimension, invoiced: InvoicedRevenue) -> Mapping[str, Decimal] | None:
    if by is Dimension.ORGANIZATION:
        return invoiced.by_organization
    if by is Dimension.PLAN:
        return invoiced.by_plan
    if by is Dimension.MODEL:
        return invoiced.by_model
    return None


def _fees_by(
    by: Dimension, fees: Mapping[tuple[str, str, datetime], Decimal]
) -> dict[str, Decimal]:
    """Accrued fees per row key; by model, version or deployment, all under FIXED_FEES."""
    out: dict[str, Decimal] = {}
    for (org, plan, day), amount in fees.items():
        if by is Dimension.ORGANIZATION:
            key = org
        elif by is Dimension.PLAN:
            key = plan
        elif by is Dimension.DAY:
            key = day.date().isoformat()
        else:
            key = FIXED_FEES
        out[key] = EXACT.add(out.get(key, _ZERO), amount)
    return out


def breakdown(
    session: Session,
    period: Period,
    by: Dimension | str = Dimension.MODEL,
    *,
    currency: str | None = None,
    organization: str | None = None,
) -> Breakdown:
    """Returns a ``Breakdown``: one ``BreakdownRow`` per value of ``by`` in ``period`` (every
    day of the window by day, busiest revenue first otherwise) and their total.

    ``organization`` (an id) narrows everything to one customer. ``currency`` defaults
    to the one the plans use (``currencies.report_currency``).
    """
    by = Dimension(by)
    code = report_currency(session, currency)
    where = {} if organization is None else {"organization_id": organization}
    sums = read_sums(session, period, (_COLUMN[by],), currency=code, where=where)
    usage = {
        (key[0].date().isoformat() if by is Dimension.DAY else key[0]): value
        for key, value in sums.items()
    }
    spans = fee_spans(session, period, code)
    if organization is not None:
        spans = [s for s in spans if s.organization_id == organization]
    fees = _fees_by(by, accrue(spans, period))
    invoiced = invoiced_revenue(session, period, code, organization=organization)
    histograms = latency_counts(session, period) if by is Dimension.MODEL else {}
    rows = _rows(session, period, by, usage, fees, _invoiced(by, invoiced), histograms)
    total = _total(session, period, rows, invoiced, organization, histograms)
    return Breakdown(period, code, by, tuple(rows), total)


def _rows(
    session: Session,
    period: Period,
    by: Dimension,
    usage: Mapping[str, EconomicsSums],
    fees: Mapping[str, Decimal],
    invoiced: Mapping[str, Decimal] | None,
    histograms: Mapping[str, Counter[int]],
) -> list[BreakdownRow]:
    """One row per key with usage or fees (and per day of the window, by day), sorted."""
    keys = set(usage) | set(fees)
    if by is Dimension.DAY:
        keys |= {day.date().isoformat() for day in days_of(period)}
    labels = _labels(session, by, keys)
    rows = []
    for key in keys:
        histogram = histograms.get(key, Counter())
        rows.append(
            _row(
                key,
                labels.get(key, key or UNKNOWN),
                usage.get(key, EconomicsSums()),
                fees=fees.get(key, _ZERO),
                invoiced=None if invoiced is None else invoiced.get(key, _ZERO),
                p50_ms=percentile(histogram, P50),
                p95_ms=percentile(histogram, P95),
            )
        )
    if by is Dimension.DAY:
        rows.sort(key=lambda r: r.key)
    else:
        rows.sort(key=lambda r: (-r.revenue, -r.requests, r.key))
    return rows


def _total(
    session: Session,
    period: Period,
    rows: list[BreakdownRow],
    invoiced: InvoicedRevenue,
    organization: str | None,
    histograms: Mapping[str, Counter[int]],
) -> BreakdownRow:
    """The total row: sums of the rows, what invoices billed, percentiles of every model."""
    if organization is not None:  # latencies are kept per model, not per customer
        return replace(totals_row(rows), invoiced=invoiced.billed)
    everything = merge((histograms or latency_counts(session, period)).values())
    return replace(
        totals_row(rows),
        invoiced=invoiced.billed,
        p50_ms=percentile(everything, P50),
        p95_ms=percentile(everything, P95),
    )
