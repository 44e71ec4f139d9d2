"""The portal's usage charts: the dashboard's plotly figures over one organisation's usage."""

from __future__ import annotations

from decimal import Decimal

from modelmint.customer.usage import UsageLine
from modelmint.dashboard import charts

__all__ = ["usage_charts"]


def usage_charts(
    by_day: list[UsageLine],
    by_model: list[UsageLine],
    by_key: list[UsageLine],
    key_names: dict[str, str],
) -> list[tuple[str, charts.Figure, str]]:
    """Requests and spend per day, and spend by model and by key (no chart without usage).
    Lines in several currencies are summed per day only within a currency: the spend
    charts show the currency most of the spend is in."""
    if not by_day:
        return []
    currencies = {line.currency for line in by_day if line.currency}
    currency = sorted(currencies)[0] if len(currencies) == 1 else None
    days = sorted({line.day or "" for line in by_day})
    requests = {day: 0 for day in days}
    errors = {day: 0 for day in days}
    spend: dict[str, Decimal] = {day: Decimal(0) for day in days}
    for line in by_day:
        day = line.day or ""
        requests[day] += line.requests - line.errors
        errors[day] += line.errors
        if currency is not None and line.currency == currency:
            spend[day] += line.spend
    figures: list[tuple[str, charts.Figure, str]] = [
        (
            "chart-requests",
            charts.requests_over_time(days, list(requests.values()), list(errors.values())),
            "Requests per day",
        )
    ]
    if currency is not None:
        label = f"Spend ({currency})"
        figures.append(
            (
                "chart-spend",
                charts.bar_comparison(
                    "Spend per day", days, [(label, list(spend.values()), charts.REVENUE)], currency
                ),
                "Spend per day",
            )
        )
        models = [line for line in by_model if line.currency == currency]
        keys = [line for line in by_key if line.currency == currency]
        for chart_id, title, names, lines in (
            ("chart-models", "Spend by model", [line.model or "—" for line in models], models),
            (
                "chart-keys",
                "Spend by key",
                [key_names.get(line.api_key_id or "", "—") for line in keys],
                keys,
            ),
        ):
            figure = charts.bar_comparison(
                title,
                names,
                [(label, [line.spend for line in lines], charts.MARGIN)],
                currency,
                horizontal=True,
            )
            figures.append((chart_id, figure, title))
    return figures
