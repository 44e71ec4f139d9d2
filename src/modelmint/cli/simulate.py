"""`modelmint simulate`: a month's real usage replayed under candidate prices and plans."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from modelmint import analytics
from modelmint.analytics import OrgSimulation, PlanOption, Simulation
from modelmint.analytics.repricing import checked_elasticity
from modelmint.cli.context import console, session_scope
from modelmint.cli.reports import Column, OutputFormat, emit, parse_period

__all__ = ["simulate_command"]

_ORGANIZATIONS: list[Column[OrgSimulation]] = [
    Column("organization", lambda o: o.name),
    Column("current_plan", lambda o: o.current_plan),
    Column("candidate_plan", lambda o: o.candidate_plan),
    Column("actual_revenue", lambda o: o.actual_revenue, money=True),
    Column("simulated_revenue", lambda o: o.simulated_revenue, money=True),
    Column("change", lambda o: o.change, money=True),
    Column("change_pct", lambda o: o.change_pct),
    Column("actual_margin", lambda o: o.actual_margin, money=True),
    Column("simulated_margin", lambda o: o.simulated_margin, money=True),
]
_OPTIONS: list[Column[PlanOption]] = [
    Column("plan", lambda p: p.plan),
    Column("kind", lambda p: p.kind),
    Column("customers", lambda p: p.customers),
    Column("revenue", lambda p: p.revenue, money=True),
    Column("cost", lambda p: p.cost, money=True),
    Column("margin", lambda p: p.margin, money=True),
    Column("margin_pct", lambda p: p.margin_pct),
    Column("cheapest_for", lambda p: p.cheapest_for),
]


def _total(result: Simulation) -> OrgSimulation:
    return OrgSimulation(
        organization_id="", name="Total", current_plan="", candidate_plan="",
        actual_revenue=result.actual_revenue, simulated_revenue=result.simulated_revenue,
        actual_cost=result.actual_cost, simulated_cost=result.simulated_cost,
    )  # fmt: skip


def _row(columns: list[Any], item: object) -> dict[str, object]:
    return {c.header: _text(c.value(item)) for c in columns}


def _text(value: object) -> object:
    return f"{value:f}" if isinstance(value, Decimal) else value


def _print_json(result: Simulation) -> None:
    document = {
        "period": {"start": result.period.start.isoformat(), "end": result.period.end.isoformat()},
        "currency": result.currency,
        "elasticity": None if result.elasticity is None else f"{result.elasticity:f}",
        "organizations": [_row(_ORGANIZATIONS, o) for o in result.organizations],
        "total": _row(_ORGANIZATIONS, _total(result)),
        "plan_options": [_row(_OPTIONS, p) for p in result.plan_options],
    }
    typer.echo(orjson.dumps(document).decode())


def _print_csv(result: Simulation) -> None:
    # Two tables, a blank line apart: organisations (with their total), then plan options.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for columns, rows in (
        (_ORGANIZATIONS, [*result.organizations, _total(result)]),
        (_OPTIONS, result.plan_options),
    ):
        writer.writerow([c.header for c in columns])
        for item in rows:
            writer.writerow(["" if v is None else v for v in _row(columns, item).values()])
        writer.writerow([])
    typer.echo(buffer.getvalue().rstrip("\n"))


def simulate_command(
    prices: Annotated[
        Path, typer.Option("--prices", exists=False, help="Candidate prices and plans (TOML).")
    ],
    period: Annotated[
        str | None,
        typer.Option("--period", help="Month to replay, e.g. 2026-11 (default: this one)."),
    ] = None,
    elasticity: Annotated[
        str | None,
        typer.Option(
            help="Constant price elasticity of demand, from -10 to 0 (demand falls as the "
            "price rises), e.g. -0.3 (default: none)."
        ),
    ] = None,
    currency: Annotated[str | None, typer.Option(help="Default: the plans' currency.")] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", case_sensitive=False)
    ] = OutputFormat.TABLE,
) -> None:
    """Replay a month's real usage under candidate prices and plans: revenue, margin and the
    change per organisation, and every plan kind compared on the observed usage.

    The TOML format is described in `modelmint.analytics.price_file` (and the README).
    """
    candidate = analytics.load_candidate(prices)
    chosen = parse_period(period)
    demand = checked_elasticity(elasticity)
    with session_scope() as session:
        result = analytics.simulate(
            session, candidate, chosen, elasticity=demand, currency=currency
        )
    if output is OutputFormat.JSON:
        _print_json(result)
        return
    if output is OutputFormat.CSV:
        _print_csv(result)
        return
    title = f"Simulated {chosen.start:%Y-%m} under {prices.name} ({result.currency})"
    if demand is not None:
        title += f", elasticity {demand}"
    emit(title, _ORGANIZATIONS, result.organizations, output, total=_total(result))
    emit(
        "Plan kinds on the observed usage (each customer on the plan all month)",
        _OPTIONS,
        result.plan_options,
        output,
    )
    change = result.change_pct
    console.print(
        f"Revenue {result.actual_revenue:,.2f} -> {result.simulated_revenue:,.2f} "
        f"({'n/a' if change is None else f'{change:+}%'}); "
        f"{sum(1 for o in result.organizations if o.change > 0)} organisations would pay more, "
        f"{sum(1 for o in result.organizations if o.change < 0)} less.",
        highlight=False,
    )
