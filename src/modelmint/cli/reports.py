"""`modelmint report ...`: revenue, cost, margin and usage from the analytics rollups.

Each command is one call to ``modelmint.analytics`` and a table (Rich), CSV or JSON.
Money is exact: CSV and JSON carry every digit as a decimal string; tables show it
to four places (request charges are fractions of a cent) and say so.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

import orjson
import typer
from rich.table import Table
from rich.text import Text

from modelmint import analytics
from modelmint.analytics import BreakdownRow, DeploymentEconomics, Dimension, MonthGrowth
from modelmint.billing.periods import Period
from modelmint.cli.context import console, session_scope

__all__ = ["Column", "OutputFormat", "emit", "parse_period", "report"]

report = typer.Typer(
    help="Revenue, cost, margin and usage reports (read from the analytics rollups).",
    no_args_is_help=True,
)

R = TypeVar("R")
_TABLE_PLACES = Decimal("0.0001")


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


@dataclass(frozen=True)
class Column(Generic[R]):
    """A report column: its header, how to read it from a row, whether it is money."""

    header: str
    value: Callable[[R], object]
    money: bool = False


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return f"{value:f}"
    return value


def _table_value(value: object, money: bool) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal) and money:
        return f"{value.quantize(_TABLE_PLACES, rounding=ROUND_HALF_EVEN):,f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:f}" if isinstance(value, Decimal) else str(value)


def emit(
    title: str,
    columns: Sequence[Column[R]],
    rows: Sequence[R],
    output: OutputFormat,
    *,
    total: R | None = None,
    meta: dict[str, Any] | None = None,
    caption: str | None = None,
) -> None:
    """Print ``rows`` (and a ``total`` row) as a Rich table, CSV or JSON."""
    if output is OutputFormat.JSON:
        document: dict[str, Any] = {
            **(meta or {}),
            "rows": [{c.header: _json_value(c.value(r)) for c in columns} for r in rows],
        }
        if total is not None:
            document["total"] = {c.header: _json_value(c.value(total)) for c in columns}
        typer.echo(orjson.dumps(document).decode())
        return
    if output is OutputFormat.CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([c.header for c in columns])
        for row in [*rows, *([total] if total is not None else [])]:
            writer.writerow(
                ["" if (v := _json_value(c.value(row))) is None else v for c in columns]
            )
        typer.echo(buffer.getvalue(), nl=False)
        return
    table = Table(title=title, caption=caption, show_footer=total is not None)
    for column in columns:
        footer = "" if total is None else _table_value(column.value(total), column.money)
        # Text left, numbers right; judged by the first row's value.
        textual = not rows or isinstance(column.value(rows[0]), str)
        table.add_column(column.header, footer=footer, justify="left" if textual else "right")
    for row in rows:
        # Plain Text: names are the user's data, never Rich markup.
        table.add_row(*(Text(_table_value(c.value(row), c.money)) for c in columns))
    console.print(table)


def parse_period(text: str | None) -> Period:
    """``YYYY-MM`` as that calendar month (UTC); None: the current month."""
    return analytics.current_month() if text is None else Period.parse(text)


By = Annotated[
    Dimension,
    typer.Option(
        "--by",
        case_sensitive=False,
        help="One row per model, version, org, plan, day or deployment.",
    ),
]
PeriodOption = Annotated[
    str | None, typer.Option("--period", help="Month, e.g. 2026-11 (default: this month).")
]
Currency = Annotated[
    str | None, typer.Option(help="Currency to report in (default: the plans' currency).")
]
Format = Annotated[OutputFormat, typer.Option("--format", case_sensitive=False)]


def _label(row: BreakdownRow) -> str:
    return row.label


def _breakdown(by: Dimension, period: str | None, currency: str | None) -> analytics.Breakdown:
    with session_scope() as session:
        return analytics.breakdown(session, parse_period(period), by, currency=currency)


def _meta(result: analytics.Breakdown, kind: str) -> dict[str, Any]:
    return {
        "report": kind,
        "period": {"start": result.period.start.isoformat(), "end": result.period.end.isoformat()},
        "currency": result.currency,
        "by": result.by.value,
    }


def _title(kind: str, result: analytics.Breakdown) -> str:
    window = f"{result.period.start:%Y-%m-%d} to {result.period.end:%Y-%m-%d}"
    return f"{kind} by {result.by.value}, {window} ({result.currency})"


_MONEY_NOTE = "Money to 4 decimals here; --format csv or json for every digit."


@report.command("revenue")
def revenue(
    by: By = Dimension.MODEL, period: PeriodOption = None, currency: Currency = None,
    output: Format = OutputFormat.TABLE,
) -> None:  # fmt: skip
    """Revenue accrued (usage charges + fixed fees spread over the period) and invoiced."""
    result = _breakdown(by, period, currency)
    columns: list[Column[BreakdownRow]] = [
        Column("key", lambda r: r.key),
        Column("name", _label),
        Column("requests", lambda r: r.requests),
        Column("usage_revenue", lambda r: r.usage_revenue, money=True),
        Column("fixed_fees", lambda r: r.fees, money=True),
        Column("accrued", lambda r: r.revenue, money=True),
        Column("invoiced", lambda r: r.invoiced, money=True),
    ]
    if output is OutputFormat.TABLE:
        columns = columns[1:]
    with session_scope() as session:
        mrr = analytics.recurring_revenue(
            session, min(result.period.end, analytics.current_month().end), currency=result.currency
        )
    meta = {**_meta(result, "revenue"), "mrr": f"{mrr.mrr:f}", "arr": f"{mrr.arr:f}"}
    caption = (
        f"MRR {mrr.mrr:,.2f} (fixed {mrr.fixed_mrr:,.2f} + usage {mrr.usage_mrr:,.2f}), "
        f"ARR {mrr.arr:,.2f}. {_MONEY_NOTE}"
    )
    emit(
        _title("Revenue", result),
        columns,
        result.rows,
        output,
        total=result.total,
        meta=meta,
        caption=caption,
    )


@report.command("margins")
def margins(
    by: By = Dimension.MODEL, period: PeriodOption = None, currency: Currency = None,
    output: Format = OutputFormat.TABLE,
) -> None:  # fmt: skip
    """Gross margin: accrued revenue minus measured serving cost, and margin %."""
    result = _breakdown(by, period, currency)
    columns: list[Column[BreakdownRow]] = [
        Column("key", lambda r: r.key),
        Column("name", _label),
        Column("revenue", lambda r: r.revenue, money=True),
        Column("cost", lambda r: r.cost, money=True),
        Column("margin", lambda r: r.margin, money=True),
        Column("margin_pct", lambda r: r.margin_pct),
        Column("cost_per_1m_tokens", lambda r: r.cost_per_1m_tokens, money=True),
        Column("revenue_per_1m_tokens", lambda r: r.revenue_per_1m_tokens, money=True),
    ]
    if output is OutputFormat.TABLE:
        columns = columns[1:]
    emit(
        _title("Margins", result),
        columns,
        result.rows,
        output,
        total=result.total,
        meta=_meta(result, "margins"),
        caption=_MONEY_NOTE,
    )


@report.command("usage")
def usage(
    by: By = Dimension.MODEL, period: PeriodOption = None, currency: Currency = None,
    output: Format = OutputFormat.TABLE,
) -> None:  # fmt: skip
    """Usage and quality of service: requests, errors, tokens, engine time, latency.

    Latency percentiles (p50, p95) are per model: by model, and in the total.
    """
    result = _breakdown(by, period, currency)
    columns: list[Column[BreakdownRow]] = [
        Column("key", lambda r: r.key),
        Column("name", _label),
        Column("requests", lambda r: r.requests),
        Column("errors", lambda r: r.errors),
        Column("error_rate", lambda r: r.error_rate),
        Column("input_tokens", lambda r: r.input_tokens),
        Column("output_tokens", lambda r: r.output_tokens),
        Column("embedding_tokens", lambda r: r.embedding_tokens),
        Column("engine_seconds", lambda r: r.engine_seconds),
        Column("avg_latency_ms", lambda r: r.avg_latency_ms),
        Column("p50_ms", lambda r: r.p50_ms),
        Column("p95_ms", lambda r: r.p95_ms),
    ]
    if output is OutputFormat.TABLE:
        columns = columns[1:]
    emit(
        _title("Usage", result),
        columns,
        [row for row in result.rows if row.key != analytics.FIXED_FEES],
        output,
        total=result.total,
        meta=_meta(result, "usage"),
    )


@report.command("costs")
def costs(
    period: PeriodOption = None, currency: Currency = None, output: Format = OutputFormat.TABLE
) -> None:
    """Unit economics per deployment: cost and price per 1M tokens, utilisation.

    Break-even utilisation = cost per hour / revenue per busy hour: how busy the
    hardware must be for what it earns to pay for all its hours.
    """
    chosen = parse_period(period)
    with session_scope() as session:
        code = analytics.report_currency(session, currency)
        rows = analytics.deployment_economics(session, chosen, currency=code)
    columns: list[Column[DeploymentEconomics]] = [
        Column("deployment", lambda r: r.deployment_id),
        Column("model", lambda r: r.public_name),
        Column("version", lambda r: r.version_label),
        Column("requests", lambda r: r.requests),
        Column("tokens", lambda r: r.tokens),
        Column("revenue", lambda r: r.revenue, money=True),
        Column("cost", lambda r: r.cost, money=True),
        Column("cost_per_1m_tokens", lambda r: r.cost_per_1m_tokens, money=True),
        Column("price_per_1m_tokens", lambda r: r.price_per_1m_tokens, money=True),
        Column("busy_hours", lambda r: r.busy_hours),
        Column("utilisation", lambda r: r.utilisation),
        Column("break_even_utilisation", lambda r: r.break_even_utilisation),
    ]
    meta = {"report": "costs", "period": str(chosen), "currency": code}
    emit(
        f"Unit economics per deployment, {chosen.start:%Y-%m} ({code})",
        columns,
        rows,
        output,
        meta=meta,
        caption=_MONEY_NOTE,
    )


@report.command("customers")
def customers(
    period: PeriodOption = None, currency: Currency = None,
    limit: Annotated[int, typer.Option(min=1, help="How many.")] = 10,
    output: Format = OutputFormat.TABLE,
) -> None:  # fmt: skip
    """Top customers by accrued revenue, with their cost and margin."""
    chosen = parse_period(period)
    with session_scope() as session:
        code = analytics.report_currency(session, currency)
        rows = analytics.top_customers(session, chosen, limit=limit, currency=code)
    columns: list[Column[BreakdownRow]] = [
        Column("organization", _label),
        Column("requests", lambda r: r.requests),
        Column("tokens", lambda r: r.tokens),
        Column("revenue", lambda r: r.revenue, money=True),
        Column("cost", lambda r: r.cost, money=True),
        Column("margin", lambda r: r.margin, money=True),
        Column("margin_pct", lambda r: r.margin_pct),
    ]
    meta = {"report": "customers", "period": str(chosen), "currency": code}
    emit(
        f"Top customers, {chosen.start:%Y-%m} ({code})",
        columns,
        rows,
        output,
        meta=meta,
        caption=_MONEY_NOTE,
    )


@report.command("cohorts")
def cohorts(
    months: Annotated[int, typer.Option(min=1, max=60, help="Months up to this one.")] = 6,
    currency: Currency = None,
    output: Format = OutputFormat.TABLE,
) -> None:
    """Growth and churn by month, and the retention of each monthly cohort."""
    with session_scope() as session:
        result = analytics.cohorts(session, months=months, currency=currency)
    growth: list[Column[MonthGrowth]] = [
        Column("month", lambda g: g.month),
        Column("active", lambda g: g.active),
        Column("new", lambda g: g.new),
        Column("churned", lambda g: g.churned),
        Column("churn_rate", lambda g: g.churn_rate),
        Column("revenue", lambda g: g.revenue, money=True),
        Column("revenue_growth_pct", lambda g: g.revenue_growth_pct),
    ]
    if output is not OutputFormat.TABLE:
        document_rows = [
            {"month": c.month, "size": c.size, "active": list(c.active),
             "revenue": [f"{r:f}" for r in c.revenue]}
            for c in result.cohorts
        ]  # fmt: skip
        if output is OutputFormat.JSON:
            growth_rows = [
                {c.header: _json_value(c.value(g)) for c in growth} for g in result.growth
            ]
            typer.echo(
                orjson.dumps(
                    {
                        "report": "cohorts",
                        "currency": result.currency,
                        "growth": growth_rows,
                        "cohorts": document_rows,
                        "earlier": result.earlier,
                    }
                ).decode()
            )
            return
        emit("", growth, result.growth, output)
        return
    emit(
        f"Growth and churn ({result.currency})",
        growth,
        result.growth,
        output,
        caption=f"{result.earlier} active organisations joined before these months.",
    )
    table = Table(
        "cohort",
        "size",
        *(f"+{i}" for i in range(len(result.months))),
        title="Active organisations by months since their first",
    )
    for cohort in result.cohorts:
        table.add_row(cohort.month, str(cohort.size), *(str(a) for a in cohort.active))
    console.print(table)
