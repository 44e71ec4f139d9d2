"""Analytics: revenue, cost and margin of models, customers and plans; read-only.

Plain Python over a SQLAlchemy ``Session`` (no web framework): the dashboard and
``modelmint report`` are thin adapters around these calls. Every query reads the
rollups the metering writer keeps in the transaction that stores usage and charges
(``analytics_usage_hourly`` / ``_daily``, ``analytics_latency_hourly``), except the
usage explorer, which shows raw rows. Results are frozen dataclasses; money is exact
``Decimal`` in the report's currency; ratios (margin %, rates, per-1M prices) are
rounded and say to how many places.

Windows are ``billing.Period`` values: ``Period.parse("2026-11")`` for a month, or
``Period(start, end)`` for any span (whole hours count).

Modules, one concept each:

    windows      time windows: which hours and days a span reads
    money_sql    exact money sums in SQL on PostgreSQL and SQLite
    rollups      reading the rollups (the only module that queries them)
    currencies   which currency a report is in
    labels       names of organisations, model versions, deployments
    fees         fixed fees accrued pro rata over a window
    invoiced     revenue on finalised invoices
    recurring    MRR and ARR
    breakdown    revenue, cost, margin, usage by model/version/org/plan/day/deployment
    overview     a window's totals, days and MRR
    costs        unit economics per deployment, break-even utilisation
    latency      percentiles from the latency histogram
    quality      quality of service per model
    customers    top customers; one customer's usage, invoices and wallets
    cohorts      growth and churn by monthly cohort
    explorer     raw usage rows, filtered and paged
    price_file   candidate prices and plans from TOML (for the simulator)
    repricing    pricing period totals under a plan; allowance sharing; elasticity
    simulator    replaying a period's usage under candidate prices and plans
    simulation   the simulator's results
"""

from modelmint.analytics.breakdown import (
    FIXED_FEES,
    Breakdown,
    BreakdownRow,
    Dimension,
    breakdown,
)
from modelmint.analytics.cohorts import Cohort, CohortReport, MonthGrowth, cohorts
from modelmint.analytics.costs import DeploymentEconomics, deployment_economics
from modelmint.analytics.currencies import DEFAULT_CURRENCY, report_currency
from modelmint.analytics.customers import (
    CustomerDetail,
    InvoiceSummary,
    WalletSummary,
    customer_detail,
    top_customers,
)
from modelmint.analytics.explorer import UsageFilter, UsagePage, UsageRow, explore_usage
from modelmint.analytics.invoiced import InvoicedRevenue, invoiced_revenue
from modelmint.analytics.overview import Overview, overview
from modelmint.analytics.price_file import CandidatePrices, load_candidate, parse_candidate
from modelmint.analytics.quality import ModelQuality, model_quality
from modelmint.analytics.recurring import RecurringRevenue, recurring_revenue
from modelmint.analytics.simulation import OrgSimulation, PlanOption, Simulation
from modelmint.analytics.simulator import simulate
from modelmint.analytics.windows import current_month

__all__ = [
    "DEFAULT_CURRENCY",
    "FIXED_FEES",
    "Breakdown",
    "BreakdownRow",
    "CandidatePrices",
    "Cohort",
    "CohortReport",
    "CustomerDetail",
    "DeploymentEconomics",
    "Dimension",
    "InvoiceSummary",
    "InvoicedRevenue",
    "ModelQuality",
    "MonthGrowth",
    "OrgSimulation",
    "Overview",
    "PlanOption",
    "RecurringRevenue",
    "Simulation",
    "UsageFilter",
    "UsagePage",
    "UsageRow",
    "WalletSummary",
    "breakdown",
    "cohorts",
    "current_month",
    "customer_detail",
    "deployment_economics",
    "explore_usage",
    "invoiced_revenue",
    "load_candidate",
    "model_quality",
    "overview",
    "parse_candidate",
    "recurring_revenue",
    "report_currency",
    "simulate",
    "top_customers",
]
